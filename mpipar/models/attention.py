"""Causal attention of one shard's heads: the softmax, its causal mask, q k^T / sqrt(d_h)
and P v, each forward beside its backward, and ``attend`` over a KV cache (grouped-query
attention included). mpipar.models.layers builds GPT-2's and Llama's attention layers on it.

Attention (Vaswani et al. 2017, eq. 1): P = softmax(q k^T / sqrt(d_h)), y = P v. Backward
(y = output, dy = its gradient): dv = P^T dy, dP = dy v^T, dS = P (dP - rowsum(dP P)),
dq = dS k / sqrt(d_h), dk = dS^T q / sqrt(d_h).
"""
import functools

import numpy as np

from ..measure.op_profile import matmul, timed
from .kv_cache import extend


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
