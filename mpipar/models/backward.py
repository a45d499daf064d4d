"""GPT-2's backward pass by hand, sharding-aware, for training.

    loss, grads = loss_and_grads(model, inputs, targets, weights)

``grads`` mirrors ``model.shards``: grads[k][name] is the gradient of shard k's
piece of parameter ``name``. Sharded parameters (column- and row-parallel
weights, the vocabulary rows of wte) are in every shard's dict; replicated ones
(LayerNorms, row-parallel biases, wpe) only in grads[0].

Tensor parallelism does not average anything: each rank owns distinct slices and
computes their gradients exactly. Megatron's operators run in reverse (Shoeybi et
al. 2019, sec. 3): reduce_from_tp (g) was an all-reduce forward, so its backward
is the identity -- every shard receives the whole output gradient; copy_to_tp (f)
was the identity forward, so its backward all-reduces the shards' input
gradients. Replicated parameters see identical inputs and output gradients on
every rank, so their gradients agree without any communication.

Formulas (y = output, dy = its gradient): linear y = x W + b: dW = x^T dy,
db = sum dy, dx = dy W^T. LayerNorm y = xhat w + b, xhat = (x - mean) rstd:
dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy w. Softmax attention
P = softmax(q k^T / sqrt(d_h)), y = P v: dv = P^T dy, dP = dy v^T,
dS = P (dP - rowsum(dP P)), dq = dS k / sqrt(d_h), dk = dS^T q / sqrt(d_h).
"""
import numpy as np

from .loss import vocab_parallel_cross_entropy
from .layers import gelu, layer_norm


def _ln_backward(x, w, dy, eps, grads, prefix):
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    rstd = 1.0 / np.sqrt((centred * centred).mean(-1, keepdims=True) + eps)
    xhat = centred * rstd
    _accumulate(grads, prefix + "weight", (dy * xhat).reshape(-1, x.shape[-1]).sum(0))
    _accumulate(grads, prefix + "bias", dy.reshape(-1, x.shape[-1]).sum(0))
    g = dy * w
    return rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))


def _gelu_grad(x):
    c = np.sqrt(2.0 / np.pi).astype(x.dtype)
    t = np.tanh(c * (x + 0.044715 * x ** 3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)


def _accumulate(grads, name, value):
    if name in grads:
        grads[name] += value
    else:
        grads[name] = value


def _flat(a):
    return a.reshape(-1, a.shape[-1])


def _mlp_backward(model, i, saved, m_in, dy, grads):
    """dy: gradient of the block output; returns the gradient of the MLP input."""
    h = f"h.{i}."
    _accumulate(grads[0], h + "mlp.c_proj.bias", _flat(dy).sum(0))
    partials = []
    for k, s in enumerate(model.shards):
        pre = saved[k]
        act = gelu(pre)
        grads[k][h + "mlp.c_proj.weight"] = _flat(act).T @ _flat(dy)
        dpre = (dy @ s[h + "mlp.c_proj.weight"].T) * _gelu_grad(pre)
        grads[k][h + "mlp.c_fc.weight"] = _flat(m_in).T @ _flat(dpre)
        grads[k][h + "mlp.c_fc.bias"] = _flat(dpre).sum(0)
        partials.append(dpre @ s[h + "mlp.c_fc.weight"].T)
    return model.tp.reduce_from_tp(partials)  # copy_to_tp's backward


def _attention_backward(model, i, saved, a_in, dy, grads):
    h = f"h.{i}."
    B, T, _ = dy.shape
    hd = model.head_dim
    scale = np.sqrt(hd).astype(dy.dtype)
    _accumulate(grads[0], h + "attn.c_proj.bias", _flat(dy).sum(0))
    partials = []
    for k, s in enumerate(model.shards):
        sv = saved[k]
        nh = sv["q"].shape[1]
        grads[k][h + "attn.c_proj.weight"] = _flat(sv["y"]).T @ _flat(dy)
        dyh = (dy @ s[h + "attn.c_proj.weight"].T).reshape(B, T, nh, hd).transpose(0, 2, 1, 3)
        P = sv["probs"]
        dv = P.transpose(0, 1, 3, 2) @ dyh
        dP = dyh @ sv["v"].transpose(0, 1, 3, 2)
        dS = P * (dP - (dP * P).sum(-1, keepdims=True)) / scale
        dq = dS @ sv["k"]
        dk = dS.transpose(0, 1, 3, 2) @ sv["q"]
        dqkv = np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * nh * hd)
        grads[k][h + "attn.c_attn.weight"] = _flat(a_in).T @ _flat(dqkv)
        grads[k][h + "attn.c_attn.bias"] = _flat(dqkv).sum(0)
        partials.append(dqkv @ s[h + "attn.c_attn.weight"].T)
    return model.tp.reduce_from_tp(partials)


def loss_and_grads(model, inputs, targets, weights, on_layer_done=None):
    """Forward with saved activations, vocab-parallel cross-entropy, backward.

    Returns (this rank's weighted loss sum, per-position losses, grads). The loss
    is sum(weights * loss); pass weights = mask / (predicted positions in the
    global batch) and gradients of data-parallel ranks then simply add up.
    ``on_layer_done(names, grads)`` is called as soon as the gradients of those
    parameters are final (last block first) -- where data parallelism starts
    their all-reduce while backward goes on.
    """
    c, s0 = model.config, model.shards[0]
    eps = c.layer_norm_epsilon
    inputs = model.check_tokens(inputs)
    saved = []
    xf = model.blocks(model.embed(inputs), saved=saved)
    parts = model.logit_parts(xf)
    loss, losses, dparts = vocab_parallel_cross_entropy(
        model.tp, parts, [s["vocab"] for s in model.shards], np.asarray(targets), weights)
    grads = [{} for _ in model.shards]
    for k, s in enumerate(model.shards):  # the tied LM head: logits_k = xf @ wte_k^T
        grads[k]["wte.weight"] = _flat(dparts[k]).T @ _flat(xf)
    dxf = model.tp.reduce_from_tp([dparts[k] @ s["wte.weight"] for k, s in enumerate(model.shards)])
    dx = _ln_backward(saved[-1]["xf"], s0["ln_f.weight"], dxf, eps, grads[0], "ln_f.")
    if on_layer_done:
        on_layer_done(["ln_f.weight", "ln_f.bias"], grads)
    for i in reversed(range(c.n_layer)):
        h, sv = f"h.{i}.", saved[i]
        m_in = layer_norm(sv["x2"], s0[h + "ln_2.weight"], s0[h + "ln_2.bias"], eps)
        dm = _mlp_backward(model, i, sv["mlp"], m_in, dx, grads)
        dx = dx + _ln_backward(sv["x2"], s0[h + "ln_2.weight"], dm, eps, grads[0], h + "ln_2.")
        a_in = layer_norm(sv["x1"], s0[h + "ln_1.weight"], s0[h + "ln_1.bias"], eps)
        da = _attention_backward(model, i, sv["attn"], a_in, dx, grads)
        dx = dx + _ln_backward(sv["x1"], s0[h + "ln_1.weight"], da, eps, grads[0], h + "ln_1.")
        if on_layer_done:
            on_layer_done([n for n in grads[0] if n.startswith(h)], grads)
    T = inputs.shape[1]
    grads[0]["wpe.weight"] = np.zeros_like(s0["wpe.weight"])
    grads[0]["wpe.weight"][:T] = dx.sum(0)
    for k, s in enumerate(model.shards):  # vocab-parallel embedding: rows of this shard only
        v = s["vocab"]
        mine = (inputs >= v.start) & (inputs < v.stop)
        np.add.at(grads[k]["wte.weight"], inputs[mine] - v.start, dx[mine])
    if on_layer_done:
        on_layer_done(["wte.weight", "wpe.weight"], grads)
    return loss, losses, grads
