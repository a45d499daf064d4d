"""Rotary position embeddings (Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary
Position Embedding"), in the half-split convention of Hugging Face's Llama.

A head's d_h coordinates form d_h / 2 pairs (x_i, x_{i + d_h/2}) -- the first half of the
head against the second, not neighbours (2i, 2i+1) as in the paper -- and the
pair i of position m turns by the angle m f_i, f_i = theta^(-2i / d_h):

    rotary(x, m) = x cos(m f) + rotate_half(x) sin(m f),   rotate_half([x1, x2]) = [-x2, x1]

with cos and sin repeated over both halves. A rotation keeps every pair's length, and
<rotary(q, m), rotary(k, n)> depends on m - n only: attention scores see relative positions.
Both q and k of every head are turned, on each shard for its own heads; nothing crosses ranks.
"""
import numpy as np

from ..measure.op_profile import timed


def frequencies(head_dim, theta):
    """f_i = theta^(-2i / head_dim) for the pairs i = 0 .. head_dim/2 - 1, in float64."""
    return float(theta) ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def tables(head_dim, theta, pos0, length, dtype):
    """(cos, sin), each (length, head_dim), of positions pos0 .. pos0+length-1.

    The angles m f_i are formed in float64 and rounded once, to ``dtype``.
    """
    angles = np.arange(pos0, pos0 + length, dtype=np.float64)[:, None] * frequencies(head_dim, theta)
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


@timed("rotary")
def apply(x, cos, sin):
    """x (..., T, head_dim) at the positions of the tables: x cos + rotate_half(x) sin.

    Written half by half into the one output: rotate_half(x) sin is, in the first half,
    -x2 sin and, in the second, x1 sin -- subtracting x2 sin gives the same bits as adding
    (-x2) sin, without building rotate_half(x) and its product (four times faster here).
    """
    half = x.shape[-1] // 2
    out = x * cos
    out[..., :half] -= x[..., half:] * sin[..., :half]
    out[..., half:] += x[..., :half] * sin[..., half:]
    return out
