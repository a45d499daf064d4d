"""An independent Llama forward pass, the oracle of the Llama tests, and the test models.

Written from the formulas (Touvron et al. 2023; RMSNorm, Zhang & Sennrich 2019; rotary
positions, Su et al. 2021; grouped-query attention, Ainslie et al. 2023; SwiGLU, Shazeer
2020) in float64, one head at a time. The rotary turn is a complex multiplication --
the pair (x_i, x_{i + d_h/2}) as x_i + i x_{i + d_h/2}, times exp(i m f_i) -- not
mpipar's rotate-half form, and query head h reads key/value head h // (n_head / n_kv_head)
by that formula, so a mistake in ``mpipar.models`` cannot hide in both. Weights are in
mpipar's layout (in, out): a layer is ``x @ W``.
"""
import numpy as np

from mpipar.models import LlamaConfig, init_params

#: 9 query heads of 8 sharing 3 key/value heads, an MLP width that splits unevenly, a prime vocabulary
SMALL = LlamaConfig(vocab_size=101, n_ctx=32, n_embd=72, n_head=9, n_kv_head=3, n_layer=2, n_inner=100,
                    rope_theta=10000.0)


def lively(config, seed=0):
    """Random parameters whose every part matters: N(0, 1/sqrt(fan-in)) weights, so attention
    is far from uniform and rotary positions change the scores; an N(0, 0.1) embedding, so the
    logits spread over a few units; RMSNorm gains 1 + N(0, 0.1) (init_params makes them 1,
    where a misplaced gain would go unseen)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in init_params(config, seed).items():
        if value.ndim == 1:
            value = 1.0 + rng.normal(0.0, 0.1, value.shape)
        else:
            std = 0.1 if name in ("embed_tokens.weight", "lm_head.weight") else 1.0 / np.sqrt(value.shape[0])
            value = rng.normal(0.0, std, value.shape)
        out[name] = value.astype(config.dtype)
    return out


def rms_norm(x, gain, eps):
    return x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + eps) * gain


def rotate(x, positions, theta):
    """x (T, d_h) at ``positions``: pair i turned by positions * theta^(-2i/d_h), as complex numbers."""
    half = x.shape[-1] // 2
    freq = theta ** (-2.0 * np.arange(half) / x.shape[-1])
    z = (x[:, :half] + 1j * x[:, half:]) * np.exp(1j * np.outer(positions, freq))
    return np.concatenate([z.real, z.imag], axis=-1)


def final_hidden(config, params, tokens, hidden=None):
    """The final RMSNorm'd hidden states (B, T, d) in float64, and the LM head's rows."""
    P = {name: np.asarray(value, dtype=np.float64) for name, value in params.items()}
    c, tokens = config, np.asarray(tokens)
    B, T = tokens.shape
    hd, group = c.head_dim, c.n_head // c.n_kv_head
    x = P["embed_tokens.weight"][tokens]
    for i in range(c.n_layer):
        w = {name.split(".", 2)[2]: v for name, v in P.items() if name.startswith(f"layers.{i}.")}
        a = rms_norm(x, w["input_layernorm.weight"], c.rms_norm_eps)
        q, k, v = (a @ w[f"self_attn.{n}_proj.weight"] for n in "qkv")
        out = np.zeros_like(q)
        for b in range(B):
            for h in range(c.n_head):
                kv = h // group
                qh = rotate(q[b, :, h * hd:(h + 1) * hd], np.arange(T), c.rope_theta)
                kh = rotate(k[b, :, kv * hd:(kv + 1) * hd], np.arange(T), c.rope_theta)
                scores = qh @ kh.T / np.sqrt(hd)
                scores[np.triu_indices(T, 1)] = -np.inf      # query t sees keys 0..t
                weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
                out[b, :, h * hd:(h + 1) * hd] = weights / weights.sum(-1, keepdims=True) \
                    @ v[b, :, kv * hd:(kv + 1) * hd]
        x = x + out @ w["self_attn.o_proj.weight"]
        m = rms_norm(x, w["post_attention_layernorm.weight"], c.rms_norm_eps)
        gate = m @ w["mlp.gate_proj.weight"]
        x = x + (gate / (1 + np.exp(-gate)) * (m @ w["mlp.up_proj.weight"])) @ w["mlp.down_proj.weight"]
        if hidden is not None:
            hidden.append(x)
    head = P["embed_tokens.weight"] if c.tie_embeddings else P["lm_head.weight"]
    return rms_norm(x, P["norm.weight"], c.rms_norm_eps), head


def forward(config, params, tokens, hidden=None):
    """Logits (B, T, vocab) in float64."""
    x, head = final_hidden(config, params, tokens, hidden)
    return x @ head.T


def error_bound(config):
    """Allowed max|computed - exact| / max|exact logit| for a forward pass in config.dtype.

    As GPT-2's (reference_gpt2.error_bound): a logit passes through about 8 n_layer + 3
    rounded stages (two RMSNorms, the q/k/v, o, gate/up and down matmuls, rotary, scores,
    softmax, the SwiGLU product, residual adds), each stage's length-k sums (k <= n_inner
    or d) erring by about sqrt(k) u relative (Higham & Mary 2019); RMSNorm renormalises, so
    the stages' errors add: (8 n_layer + 3) sqrt(max(d, n_inner)) u. That is 1.1e-5 for SMALL
    in float32.
    """
    u = float(np.finfo(config.dtype).eps) / 2
    return (8 * config.n_layer + 3) * np.sqrt(max(config.n_embd, config.n_inner)) * u
