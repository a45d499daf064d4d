"""The layers of the models, each forward beside its backward, for any tensor-parallel split.

GPT-2's: LayerNorm, GELU, attention over a fused c_attn, the GELU MLP. Llama's
(forward only so far): RMSNorm, grouped-query attention with rotary positions, the
SwiGLU MLP. Both attentions run ``attention.attend``: causal attention of a shard's
heads over its KV cache (mpipar.models.attention, with the softmax and their backwards).

A layer's forward returns its output and, where backward needs them, the
activations it saved (a small record); its backward takes that record and the
output gradient, writes the parameters' gradients into ``grads`` and returns the
input gradient. ``shards`` holds the parameter dicts of the shards this process
computes (``GPT.shards``) and ``grads`` one gradient dict per shard: sharded
parameters' gradients in every shard's dict, replicated ones in ``grads[0]`` only.

Backward formulas (y = output, dy = its gradient; Shoeybi et al. 2019 for where
the tensor-parallel operators sit): linear y = x W + b: dW = x^T dy, db = sum dy,
dx = dy W^T. LayerNorm y = xhat w + b, xhat = (x - mean) rstd: dx = rstd (g -
mean(g) - xhat mean(g xhat)), g = dy w. Attention's: see mpipar.models.attention.
"""
from dataclasses import dataclass

import numpy as np

from ..measure.op_profile import timed
from . import linear, rotary
from .attention import attend, causal_attention_backward
from .linear import column_parallel, column_parallel_backward, row_parallel, row_parallel_backward


def mean_last(x):
    """x.mean(-1, keepdims=True) -- the same sum and division, so the same bits -- without
    np.mean's Python-level bookkeeping, which costs more than the sum itself on one
    decoding position's few hundred numbers."""
    return np.add.reduce(x, axis=-1, keepdims=True) / x.shape[-1]


@timed("norm")
def layer_norm(x, weight, bias, eps):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (Ba et al. 2016)."""
    centred = x - mean_last(x)
    var = mean_last(np.square(centred))
    # in place on the one (B, T, d) temporary: a new array per step would cost a pass over
    # memory each (the same operations in the same order, so the same bits)
    centred /= np.sqrt(var + eps)
    centred *= weight
    centred += bias
    return centred


def layer_norm_backward(x, weight, dy, eps):
    """(dx, dweight, dbias) of ``layer_norm(x, weight, bias, eps)``, from its input x."""
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    rstd = 1.0 / np.sqrt((centred * centred).mean(-1, keepdims=True) + eps)
    xhat = centred * rstd
    dweight = (dy * xhat).reshape(-1, x.shape[-1]).sum(0)
    dbias = dy.reshape(-1, x.shape[-1]).sum(0)
    g = dy * weight
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    return dx, dweight, dbias


@timed("norm")
def rms_norm(x, weight, eps):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis (Zhang & Sennrich 2019, "Root Mean Square
    Layer Normalization"): LayerNorm without the centring and the bias."""
    y = x / np.sqrt(mean_last(np.square(x)) + eps)
    y *= weight  # in place, as in layer_norm
    return y


@timed("activation")
def gelu(x):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) -- GPT-2's approximation (Hendrycks & Gimpel 2016).

    x^3 is x * x * x: ``x ** 3`` calls the general power function, several times slower than
    two multiplications (and 1 ulp apart at most). The steps work in place on one temporary.
    """
    if np.ndim(x) == 0:  # a NumPy scalar has no memory to work in: take it as one element
        return gelu(np.reshape(x, 1))[0]
    t = x * x
    t *= x
    t *= 0.044715
    t += x
    t *= np.sqrt(2.0 / np.pi).astype(x.dtype)
    np.tanh(t, out=t)
    t += 1.0
    t *= x
    t *= 0.5  # exact: (x (1 + tanh)) / 2 is the same number as (x / 2)(1 + tanh)
    return t


def gelu_backward(x, dy):
    """dy * gelu'(x), with t = tanh(c (x + 0.044715 x^3)), c = sqrt(2/pi):
    gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 * 0.044715 x^2)."""
    c = np.sqrt(2.0 / np.pi).astype(x.dtype)
    t = np.tanh(c * (x + 0.044715 * (x * x * x)))  # x^3 as gelu forms it
    return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x))


@timed("activation")
def silu(x):
    """x sigmoid(x) = x / (1 + exp(-x)) (Elfwing et al. 2018; Swish with beta 1)."""
    if np.ndim(x) == 0:  # a NumPy scalar has no memory to work in: take it as one element
        return silu(np.reshape(x, 1))[0]
    with np.errstate(over="ignore"):  # exp(-x) = inf for x << 0 gives x / inf = -0, as it should
        d = np.negative(x)  # one temporary, worked on in place: exp(-x), 1 + it, x / it
        np.exp(d, out=d)
        d += 1
        return np.divide(x, d, out=d)


@dataclass
class AttentionSaved:
    """What attention's backward needs; the lists hold one array per shard."""

    x: np.ndarray  #: the input (B, T, d), the same for every shard (sequence parallel: blocks)
    q: list        #: queries (B, heads, T, d_h)
    k: list        #: keys (B, heads, T, d_h)
    v: list        #: values (B, heads, T, d_h)
    probs: list    #: attention probabilities (B, heads, T, T)
    y: list        #: the heads' outputs side by side (B, T, heads d_h): c_proj's input


def attention(tp, shards, prefix, x, cache=None, pos0=0):
    """GPT-2's causal self-attention, split by heads (Shoeybi et al. 2019, sec. 3).

    c_attn is column-parallel: each shard computes [q | k | v] of its own heads and
    attends with them alone; c_proj is row-parallel: one all-reduce adds the
    shards' partial outputs. ``cache`` (this layer's per-shard (K, V), see
    ``kv_cache``) holds earlier positions' keys and values; x holds positions
    pos0.. . Returns (output, AttentionSaved).
    """
    saved = AttentionSaved(x, [], [], [], [], [])
    for k, (s, qkv) in enumerate(zip(shards, column_parallel(tp, shards, prefix + "c_attn", x))):
        (B, T, _), nh = qkv.shape, s["heads"].stop - s["heads"].start  # x may be blocks (SP)
        q, key, val = qkv.reshape(B, T, 3, nh, -1).transpose(2, 0, 3, 1, 4)
        y, key, val, probs = attend(q, key, val, None if cache is None else cache[k], pos0)
        for field, value in zip((saved.q, saved.k, saved.v, saved.probs, saved.y), (q, key, val, probs, y)):
            field.append(value)
    return row_parallel(tp, shards, prefix + "c_proj", saved.y), saved


def attention_backward(tp, shards, prefix, saved, dy, grads):
    """The input gradient of ``attention``; c_proj's and c_attn's gradients into ``grads``."""
    dqkv = []
    for q, k, v, probs, d in zip(saved.q, saved.k, saved.v, saved.probs,
                                 row_parallel_backward(tp, shards, prefix + "c_proj", saved.y, dy, grads)):
        B, nh, T, hd = q.shape
        dq, dk, dv = causal_attention_backward(q, k, v, probs, d.reshape(B, T, nh, hd).transpose(0, 2, 1, 3))
        dqkv.append(np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * nh * hd))
    return column_parallel_backward(tp, shards, prefix + "c_attn", saved.x, dqkv, grads)


@dataclass
class MLPSaved:
    """What the MLP's backward needs; the lists hold one array per shard."""

    x: np.ndarray  #: the input (B, T, d), the same for every shard (sequence parallel: blocks)
    pre: list      #: c_fc's output, GELU's input (B, T, own hidden units)
    act: list      #: GELU's output, c_proj's input


def mlp(tp, shards, prefix, x):
    """GPT-2's MLP: c_fc column-parallel, GELU on each shard's own hidden units, c_proj
    row-parallel -- one all-reduce (Shoeybi et al. 2019, eq. 3). Returns (output, MLPSaved)."""
    pre = column_parallel(tp, shards, prefix + "c_fc", x)
    act = [gelu(z) for z in pre]
    return row_parallel(tp, shards, prefix + "c_proj", act), MLPSaved(x, pre, act)


def mlp_backward(tp, shards, prefix, saved, dy, grads):
    """The input gradient of ``mlp``: its sublayers in reverse; gradients into ``grads``."""
    dact = row_parallel_backward(tp, shards, prefix + "c_proj", saved.act, dy, grads)
    dpre = [gelu_backward(z, d) for z, d in zip(saved.pre, dact)]
    return column_parallel_backward(tp, shards, prefix + "c_fc", saved.x, dpre, grads)


def grouped_query_attention(tp, shards, prefix, x, group, rope, cache=None, pos0=0):
    """Llama's causal self-attention, split by heads (Shoeybi et al. 2019, sec. 3; grouped-query
    attention, Ainslie et al. 2023).

    q_proj, k_proj and v_proj are column-parallel: each shard computes its own query
    heads and the key/value heads they read -- query head h reads key/value head
    h // ``group``, group = n_head / n_kv_head -- and turns q and k by the rotary
    tables ``rope`` = (cos, sin) of positions pos0.. (see ``rotary``). o_proj is
    row-parallel: one all-reduce. ``cache`` (this layer's per-shard (K, V)) keeps the
    shard's own key/value heads, rotated. Forward only: returns the output.
    """
    x = linear.column_input(tp, x)  # once for q, k and v
    (B, T, _), head_dim = x.shape, rope[0].shape[-1]
    q, k, v = (linear.column_matmul(shards, prefix + name, x) for name in ("q_proj", "k_proj", "v_proj"))
    ys = []
    for i, (s, *qkv) in enumerate(zip(shards, q, k, v)):
        qi, ki, vi = (t.reshape(B, T, -1, head_dim).transpose(0, 2, 1, 3) for t in qkv)
        reads = np.arange(s["heads"].start, s["heads"].stop) // group - s["kv_heads"].start
        y, *_ = attend(rotary.apply(qi, *rope), rotary.apply(ki, *rope), vi,
                       None if cache is None else cache[i], pos0, reads)
        ys.append(y)
    return row_parallel(tp, shards, prefix + "o_proj", ys)


def swiglu_mlp(tp, shards, prefix, x):
    """Llama's MLP, down(silu(gate x) * up x) (Shazeer 2020, "GLU Variants Improve Transformer"):
    gate_proj and up_proj column-parallel, the product on each shard's own hidden
    units, down_proj row-parallel -- one all-reduce. Forward only: returns the output."""
    x = linear.column_input(tp, x)  # once for gate and up
    gate, up = (linear.column_matmul(shards, prefix + name, x) for name in ("gate_proj", "up_proj"))
    return row_parallel(tp, shards, prefix + "down_proj", [gated(g, u) for g, u in zip(gate, up)])


def gated(gate, up):
    """silu(gate) * up, multiplied in place into silu's own new array: one (B, T, hidden)
    array fewer per block."""
    h = silu(gate)
    h *= up
    return h
