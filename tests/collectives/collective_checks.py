"""What the collectives' MPI tests check a result against: exact bits, or a float64
reference within a derived error bound; and whether every rank holds the same bits.

Integers (small values, no overflow), max and min must be exact. Floating-point sums
and products may differ from the MPI library's in the last bits; each is checked
against an exact reference within the bound derived in ``expectation``.
"""
import math

import ml_dtypes
from mpi4py import MPI
import numpy as np

from mpipar.measure.numerics import bitwise_equal

COMM = MPI.COMM_WORLD
DTYPES = ["float16", "float32", "float64", "int32", "int64", "bfloat16"]
OPS = ["sum", "prod", "max", "min"]
# unit roundoff u = 2^-t for a t-bit significand (bfloat16: 8 bits, float16: 11)
U = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 2.0**-53}


def dt(name):
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def gather_inputs(x):
    """Every rank's input stacked on a new axis 0, widened exactly to int64 or float64."""
    return np.stack(COMM.allgather(x.astype(np.int64 if x.dtype.kind == "i" else np.float64)))


def gamma(k, u):
    """Higham's gamma_k = k u / (1 - k u): the relative error of k roundings, each <= u."""
    return k * u / (1 - k * u)


def expectation(stack, dtype, op):
    """What the ``op``-reduction of ``stack`` over axis 0 must be: exact bits, or a
    float64 reference and an elementwise error bound."""
    want = dict(dtype=dt(dtype), shape=stack.shape[1:], exact=None)
    if dtype.startswith("int") or op in ("max", "min"):
        want["exact"] = getattr(np, op)(stack, axis=0).astype(dt(dtype))  # np.sum/prod/max/min
        return want
    # One combine of two values has relative error <= u1: u for float32/float64; for
    # 16-bit floats the values are combined in float32 (<= u32) and rounded back to the
    # 16-bit type (<= u16), so u1 = (1 + u16)(1 + u32) - 1. Any order of the p-1 combines
    # gives |computed - exact| <= gamma_{p-1}(u1) * sum|x_i| for a sum (Higham 2002,
    # sec. 4.2; eq. 4.4 is its first-order form (p-1) u sum|x_i|, which gamma makes
    # rigorous: no slack needed) and <= gamma_{p-1}(u1) |exact| for a product.
    # "mpi" reduces 16-bit floats in float32 and rounds once at the end:
    # gamma_{p-1}(u32)(1 + u16) + u16 <= gamma_{p-1}(u1) for p >= 2 (and it is exact for
    # p = 1), so the same bound holds for it.
    p = stack.shape[0]
    u1 = U[dtype] if dtype in ("float32", "float64") else (1 + U[dtype]) * (1 + 2.0**-24) - 1
    cols, g64 = stack.reshape(p, -1).T, gamma(p - 1, 2.0**-53)
    if op == "sum":
        # fsum is the exact sum correctly rounded to float64: |ref - exact| <= u64 * sum|x|.
        want["ref"] = np.array([math.fsum(c) for c in cols]).reshape(want["shape"])
        scale = np.array([math.fsum(np.abs(c)) for c in cols]).reshape(want["shape"])
        want["bound"] = (gamma(p - 1, u1) + 2.0**-53) * scale
    else:
        # the float64 product itself is off by <= g64 |exact|, and |exact| <= |ref| / (1 - g64)
        want["ref"] = np.prod(stack, axis=0)
        want["bound"] = (gamma(p - 1, u1) + g64) / (1 - g64) * np.abs(want["ref"])
    # The bound is evaluated in float64 (itself rounded by <= a few u64): 1 + 1e-12 covers it.
    want["bound"] *= 1 + 1e-12
    return want


def reduction_errors(name, got, want):
    """What is wrong with ``got`` against an ``expectation``; [] if nothing."""
    if got.dtype != want["dtype"] or got.shape != want["shape"]:
        return [f"{name}: got {got.dtype}{got.shape}, want {want['dtype']}{want['shape']}"]
    if want["exact"] is not None:
        return [] if bitwise_equal(got, want["exact"]) else [f"{name}: not exact"]
    err = np.abs(got.astype(np.float64) - want["ref"])
    if np.all(err <= want["bound"]):
        return []
    worst = np.argmax(err - want["bound"])
    return [f"{name}: error {err.flat[worst]:.3g} > bound {want['bound'].flat[worst]:.3g}"]


def ranks_agree(name, y):
    """[] if every rank holds a bitwise-identical y (same shape, dtype and bytes)."""
    mine = (y.shape, str(y.dtype), np.ascontiguousarray(y).tobytes())
    return [] if all(t == mine for t in COMM.allgather(mine)) else [f"{name}: ranks disagree"]
