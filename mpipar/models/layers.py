"""The layers of the models, each forward beside its backward, for any tensor-parallel split.

GPT-2's: LayerNorm, GELU, attention over a fused c_attn, the GELU MLP. Llama's
(forward only so far): RMSNorm, grouped-query attention with rotary positions, the
SwiGLU MLP. Both attentions run ``attend``: causal attention of a shard's heads over
its KV cache.

A layer's forward returns its output and, where backward needs them, the
activations it saved (a small record); its backward takes that record and the
output gradient, writes the parameters' gradients into ``grads`` and returns the
input gradient. ``shards`` holds the parameter dicts of the shards this process
computes (``GPT.shards``) and ``grads`` one gradient dict per shard: sharded
parameters' gradients in every shard's dict, replicated ones in ``grads[0]`` only.

Backward formulas (y = output, dy = its gradient; Shoeybi et al. 2019 for where
the tensor-parallel operators sit): linear y = x W + b: dW = x^T dy, db = sum dy,
dx = dy W^T. LayerNorm y = xhat w + b, xhat = (x - mean) rstd: dx = rstd (g -
mean(g) - xhat mean(g xhat)), g = dy w. Softmax P = softmax(S): dS = P (dP -
rowsum(dP P)). Attention P = softmax(q k^T / sqrt(d_h)), y = P v: dv = P^T dy,
dP = dy v^T, dq = dS k / sqrt(d_h), dk = dS^T q / sqrt(d_h).
"""
from dataclasses import dataclass
import functools

import numpy as np

from ..measure.op_profile import matmul, timed
from . import linear, rotary
from .kv_cache import extend
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


def softmax(x):
    """exp(x - max) / sum exp(x - max) over the last axis."""
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def softmax_backward(probs, dprobs):
    """dS = P (dP - rowsum(dP P)) for P = softmax(S)."""
    return probs * (dprobs - (dprobs * probs).sum(-1, keepdims=True))


@functools.lru_cache(maxsize=4)
def future_keys(T, S, pos0):
    """(T, S) booleans, True where key j is in query i's future (j > pos0 + i); kept for the
    next call of the same shape (every block of a forward asks for the same one), read-only."""
    future = np.arange(S)[None, :] > (pos0 + np.arange(T))[:, None]
    future.flags.writeable = False
    return future


@timed("softmax")
def causal_softmax(scores, pos0, scale):
    """softmax(scores / scale) over the last axis, each query row i (position pos0 + i) seeing
    keys 0..pos0+i only: the later ones get probability 0 (their scores set to -inf).

    In place on ``scores`` (B, heads, T, S), which it returns: the score matrix is the largest
    array of attention, and each new array of its size would be a pass over memory.
    The same operations as ``softmax(np.where(future, -inf, scores / scale))``, the same bits.
    """
    T, S = scores.shape[-2:]
    scores /= scale
    if pos0 + 1 < S:  # some row has keys in its future (never when decoding one position)
        np.copyto(scores, -np.inf, where=future_keys(T, S, pos0))
    scores -= scores.max(-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(-1, keepdims=True)
    return scores


def causal_attention(q, k, v, pos0=0):
    """softmax(q k^T / sqrt(d_h)) v per head, each query seeing keys up to its own position
    (Vaswani et al. 2017, eq. 1). q: (B, heads, T, d_h) at positions pos0..pos0+T-1; k, v:
    (B, heads, pos0+T, d_h). Returns the heads' outputs (B, heads, T, d_h) and the
    probabilities (B, heads, T, pos0+T), which backward needs."""
    scores = matmul(q, k.transpose(0, 1, 3, 2))
    probs = causal_softmax(scores, pos0, np.sqrt(q.shape[-1]).astype(q.dtype))
    return matmul(probs, v), probs


def causal_attention_backward(q, k, v, probs, dy):
    """(dq, dk, dv) of ``causal_attention`` from its inputs and probabilities."""
    scale = np.sqrt(q.shape[-1]).astype(dy.dtype)
    dv = probs.transpose(0, 1, 3, 2) @ dy
    dscores = softmax_backward(probs, dy @ v.transpose(0, 1, 3, 2)) / scale
    return dscores @ k, dscores.transpose(0, 1, 3, 2) @ q, dv


def head_runs(kv_of_head):
    """(key/value head, first query head, stop) of each run of consecutive query heads that read
    the same key/value head: [0, 0, 0, 1, 1] -> [(0, 0, 3), (1, 3, 5)]."""
    starts = [h for h in range(len(kv_of_head)) if h == 0 or kv_of_head[h] != kv_of_head[h - 1]]
    return [(int(kv_of_head[a]), a, b) for a, b in zip(starts, starts[1:] + [len(kv_of_head)])]


def attend(q, k, v, entry=None, pos0=0, kv_of_head=None):
    """Causal attention of one shard's heads: q (B, heads, T, d_h) at positions pos0..; k, v
    (B, kv heads, T, d_h) of the same positions, stored in the shard's KV cache ``entry`` when
    given (earlier positions read from it). ``kv_of_head[j]``: the key/value head query head j
    reads (grouped-query attention; None: head j reads head j). Returns the heads' outputs
    side by side (B, T, heads d_h), the keys and values of positions 0.. and the probabilities
    (under grouped-query attention a list: one array per ``head_runs`` run).
    """
    if entry is not None:
        k, v = extend(entry, k, v, pos0)
    B, heads, T, d_h = q.shape
    if kv_of_head is None:
        y, probs = causal_attention(q, k, v, pos0)
        return y.transpose(0, 2, 1, 3).reshape(B, T, -1), k, v, probs
    # each run of query heads attends to its one key/value head, broadcast over the run
    # (k[:, j:j+1] is a view): no copy of the keys and values -- the whole KV cache when
    # decoding -- for every query head
    out, probs = np.empty((B, T, heads, d_h), q.dtype), []
    for j, a, b in head_runs(kv_of_head):
        y, p = causal_attention(q[:, a:b], k[:, j:j + 1], v[:, j:j + 1], pos0)
        out[:, :, a:b] = y.transpose(0, 2, 1, 3)
        probs.append(p)
    return out.reshape(B, T, -1), k, v, probs


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
