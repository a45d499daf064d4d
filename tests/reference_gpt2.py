"""An independent GPT-2 forward pass, the oracle of the model tests.

Written from the formulas of Radford et al. (2019) and the Hugging Face layouts
(Conv1D weights are (in, out), so a layer is ``x @ W + b``; c_attn's columns are
[q | k | v]), in float64, one head at a time. It shares no code with
``mpipar.models`` so a mistake there cannot hide in both.
"""
import numpy as np


def layer_norm(x, gain, bias, eps):
    """(x - mean) / sqrt(var + eps) * gain + bias, over the last axis (biased variance)."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gain + bias


def gelu(x):
    """GPT-2's tanh approximation of GELU (Hendrycks & Gimpel 2016)."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def forward(params, tokens, n_head, eps=1e-5, hidden=None):
    """Logits (B, T, vocab) in float64 for integer ``tokens`` (B, T).

    ``hidden``, if a list, receives the residual stream after every block.
    """
    x, wte = final_hidden(params, tokens, n_head, eps, hidden)
    return x @ wte.T                                         # tied LM head


def final_abs_sum(params, tokens, n_head, eps=1e-5):
    """sum_j |ln_f(x)_j| |wte_vj| for every logit: the sum of |terms| of the LM head's dot
    products, the scale of ``mpipar.measure.numerics.normalized_error``."""
    x, wte = final_hidden(params, tokens, n_head, eps)
    return np.abs(x) @ np.abs(wte).T


def final_hidden(params, tokens, n_head, eps=1e-5, hidden=None):
    """ln_f of the last residual stream (B, T, d), and wte, both float64."""
    P = {name: np.asarray(value, dtype=np.float64) for name, value in params.items()}
    tokens = np.asarray(tokens)
    B, T = tokens.shape
    wte = P["wte.weight"]
    d = wte.shape[1]
    hd = d // n_head
    n_layer = sum(1 for name in P if name.endswith(".ln_1.weight"))
    x = wte[tokens] + P["wpe.weight"][:T]                    # (B, T, d)
    allowed = np.tril(np.ones((T, T), dtype=bool))           # query t sees keys 0..t
    for i in range(n_layer):
        w = {name.split(".", 2)[2]: value for name, value in P.items() if name.startswith(f"h.{i}.")}.get
        a = layer_norm(x, w("ln_1.weight"), w("ln_1.bias"), eps)
        qkv = a @ w("attn.c_attn.weight") + w("attn.c_attn.bias")
        q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
        heads = []
        for h in range(n_head):
            cols = slice(h * hd, (h + 1) * hd)
            scores = q[..., cols] @ k[..., cols].transpose(0, 2, 1) / np.sqrt(hd)  # (B, T, T)
            scores = np.where(allowed, scores, -np.inf)
            weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
            weights /= weights.sum(axis=-1, keepdims=True)
            heads.append(weights @ v[..., cols])
        x = x + np.concatenate(heads, axis=-1) @ w("attn.c_proj.weight") + w("attn.c_proj.bias")
        m = layer_norm(x, w("ln_2.weight"), w("ln_2.bias"), eps)
        x = x + gelu(m @ w("mlp.c_fc.weight") + w("mlp.c_fc.bias")) @ w("mlp.c_proj.weight") \
            + w("mlp.c_proj.bias")
        if hidden is not None:
            hidden.append(x)
    return layer_norm(x, P["ln_f.weight"], P["ln_f.bias"], eps), wte


def error_bound(config):
    """Allowed max|computed - exact| / max|exact logit| for a forward pass in config.dtype.

    A logit passes through about 6 n_layer + 3 rounded stages (LayerNorms, matmuls,
    softmax, GELU, residual adds). Each stage's length-k sums (k <= 4d) err by about
    sqrt(k) u relative, not the worst case k u, because rounding errors behave like
    independent random variables (Higham & Mary, SIAM J. Sci. Comput. 2019); at
    init the network is well conditioned (LayerNorm renormalises), so the stages'
    errors add: (6 n_layer + 3) sqrt(4d) u. That is 1.2e-5 for the tiny preset in
    float32 (measured: about 2e-7) and 1.6e-14 for a float64 model.
    """
    u = float(np.finfo(config.dtype).eps) / 2
    return (6 * config.n_layer + 3) * np.sqrt(4 * config.n_embd) * u


def every_parameter_matters(params, seed=0):
    """A copy of ``params`` with random biases and LayerNorm gains (init_params makes them
    0 and 1), so a bias or gain sharded or added wrongly changes the logits."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in params.items():
        if name.endswith("bias") or "ln_" in name:
            base = 1.0 if name.endswith("weight") else 0.0
            value = (base + rng.normal(0.0, 0.1, value.shape)).astype(value.dtype)
        out[name] = value
    return out
