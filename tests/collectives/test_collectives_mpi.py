"""Every hand-written collective against the MPI library's own (``algorithm="mpi"``).

Run under mpirun (see the Makefile). A test loops over sizes and ops, collects what
went wrong on this rank, and asserts on the list gathered from every rank, so all
ranks pass or fail together and none is left waiting in a collective.

Integers (small values, no overflow), max and min must be exact: bitwise equal to
"mpi" and to the reference. Floating-point sums and products may differ from "mpi"
in the last bits; each is checked against an exact reference within a derived bound.
"""
import itertools
import math
import zlib

import ml_dtypes
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.collectives import allgather, allreduce, broadcast, reduce_scatter
from mpipar.collectives import ALGORITHMS

COMM = MPI.COMM_WORLD
P, RANK = COMM.Get_size(), COMM.Get_rank()
DTYPES = ["float16", "float32", "float64", "int32", "int64", "bfloat16"]
OPS = ["sum", "prod", "max", "min"]
SIZES = sorted({0, 1, P - 1, P, 10_007})
# unit roundoff u = 2^-t for a t-bit significand (bfloat16: 8 bits, float16: 11)
U = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 2.0**-53}


def algorithms(name):
    """The hand-written algorithms, and "auto" (which must pick one of them)."""
    return (*ALGORITHMS[name], "auto")


def dt(name):
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def sample(key, shape, dtype, op="sum"):
    """This rank's data, seeded by ``key`` and the rank: different on every rank."""
    rng = np.random.default_rng([zlib.crc32(repr(key).encode()), RANK])
    if dtype.startswith("int"):  # |values| small enough that no op overflows int32
        v = rng.choice([-2, -1, 1, 2], shape) if op == "prod" else rng.integers(-1000, 1000, shape)
    elif op == "prod":  # near 1 in magnitude: a product of p <= 5 stays in [1/32, 32]
        v = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    else:
        v = rng.standard_normal(shape)
    return v.astype(dt(dtype))


def same_bits(a, b):
    return (a.shape == b.shape and a.dtype == b.dtype
            and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())


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
        return [] if same_bits(got, want["exact"]) else [f"{name}: not exact"]
    err = np.abs(got.astype(np.float64) - want["ref"])
    if np.all(err <= want["bound"]):
        return []
    worst = np.argmax(err - want["bound"])
    return [f"{name}: error {err.flat[worst]:.3g} > bound {want['bound'].flat[worst]:.3g}"]


def ranks_agree(name, y):
    """[] if every rank holds a bitwise-identical y (same shape, dtype and bytes)."""
    mine = (y.shape, str(y.dtype), np.ascontiguousarray(y).tobytes())
    return [] if all(t == mine for t in COMM.allgather(mine)) else [f"{name}: ranks disagree"]


def all_ranks_ok(errors):
    """Fail on every rank alike if any rank found something wrong."""
    lines = [f"rank {r}: {e}" for r, errs in enumerate(COMM.allgather(errors)) for e in errs]
    assert not lines, f"{len(lines)} problems:\n" + "\n".join(lines[:30])


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", DTYPES)
def test_allreduce_matches_mpi(dtype):
    errors = []
    for n, op in itertools.product(SIZES, OPS):
        x = sample(("allreduce", dtype, n, op), (n,), dtype, op)
        before, want = x.copy(), expectation(gather_inputs(x), dtype, op)
        lib = allreduce(COMM, x, op, "mpi")
        errors += reduction_errors(f"mpi n={n} {op}", lib, want)
        for alg in algorithms("allreduce"):
            name = f"{alg} n={n} {op}"
            got = allreduce(COMM, x, op=op, algorithm=alg)
            errors += reduction_errors(name, got, want) + ranks_agree(name, got)
            if (dtype.startswith("int") or op in ("max", "min")) and not same_bits(got, lib):
                errors.append(f"{name}: differs from mpi")
        if not same_bits(x, before):
            errors.append(f"n={n} {op}: the input was modified")
    all_ranks_ok(errors)


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", DTYPES)
def test_reduce_scatter_matches_mpi(dtype):
    errors = []
    for n, op in itertools.product(SIZES, OPS):
        x = sample(("reduce_scatter", dtype, n, op), (n,), dtype, op)
        mine = np.array_split(gather_inputs(x), P, axis=1)[RANK]  # block RANK of every input
        want = expectation(mine, dtype, op)
        lib = reduce_scatter(COMM, x, op=op, algorithm="mpi")
        errors += reduction_errors(f"mpi n={n} {op}", lib, want)
        for alg in algorithms("reduce_scatter"):
            name = f"{alg} n={n} {op}"
            got = reduce_scatter(COMM, x, op=op, algorithm=alg)
            errors += reduction_errors(name, got, want)
            if (dtype.startswith("int") or op in ("max", "min")) and not same_bits(got, lib):
                errors.append(f"{name}: differs from mpi")
    all_ranks_ok(errors)


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", DTYPES)
def test_allgather_matches_mpi(dtype):
    errors = []
    for n in SIZES:
        x = sample(("allgather", dtype, n), (n,), dtype)
        want = np.concatenate(COMM.allgather(x))
        for alg in algorithms("allgather") + ("mpi",):
            got = allgather(COMM, x, algorithm=alg)
            errors += ranks_agree(f"{alg} n={n}", got)
            if not same_bits(got, want):
                errors.append(f"{alg} n={n}: not the concatenation of the inputs")
    all_ranks_ok(errors)


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", DTYPES)
def test_broadcast_from_every_root(dtype):
    errors = []
    for root, n in itertools.product(range(P), SIZES):
        x = sample(("broadcast", dtype, n, root), (n,), dtype)
        want = COMM.bcast(x, root=root)
        for alg in algorithms("broadcast") + ("mpi",):
            got = broadcast(COMM, x, root=root, algorithm=alg)
            if not same_bits(got, want):
                errors.append(f"{alg} root={root} n={n}: not root's data")
    all_ranks_ok(errors)


def noncontiguous_views(base):
    """A strided slice, a transpose and a reversed slice of a 2-D array."""
    return {"[:, ::2]": base[:, ::2], ".T": base.T, "[::-1, 1::3]": base[::-1, 1::3]}


@pytest.mark.mpi
@pytest.mark.parametrize("alg", algorithms("allreduce") + ("mpi",))
def test_allreduce_noncontiguous(alg):
    errors = []
    for dtype, op in [("int64", "sum"), ("float32", "sum"), ("bfloat16", "max"),
                      ("float64", "prod")]:
        base = sample(("nc", dtype, op), (6, 11), dtype, op)
        for label, x in noncontiguous_views(base).items():
            name = f"{dtype} {op} x{label}"
            got = allreduce(COMM, x, op=op, algorithm=alg)
            want = expectation(gather_inputs(x), dtype, op)
            errors += reduction_errors(name, got, want) + ranks_agree(name, got)
    all_ranks_ok(errors)


@pytest.mark.mpi
@pytest.mark.parametrize("alg", algorithms("reduce_scatter") + ("mpi",))
@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2])
def test_reduce_scatter_along_axis(alg, axis):
    errors = []
    for dtype, op in [("int32", "sum"), ("float64", "sum"), ("float16", "min")]:
        # transposed, so not contiguous; shape (P+1, 2P+1, 3): uneven splits along 0 and 1
        x = sample(("rs-axis", dtype, op), (3, 2 * P + 1, P + 1), dtype, op).transpose(2, 1, 0)
        mine = np.array_split(gather_inputs(x), P, axis=axis % 3 + 1)[RANK]
        got = reduce_scatter(COMM, x, axis=axis, op=op, algorithm=alg)
        errors += reduction_errors(f"{dtype} {op}", got, expectation(mine, dtype, op))
    all_ranks_ok(errors)


LENGTHS = {"r+1": lambda r: r + 1, "0 on odd ranks": lambda r: 2 * (r % 2 == 0),
           "only the last": lambda r: 3 * (r == P - 1), "all 0": lambda r: 0}


@pytest.mark.mpi
@pytest.mark.parametrize("alg", algorithms("allgather") + ("mpi",))
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_allgather_uneven_lengths(alg, axis):
    errors = []
    for (label, length), dtype in itertools.product(LENGTHS.items(), ["int32", "bfloat16"]):
        shape = [2, 3, 2]
        shape[axis] = length(RANK)
        shape[-1] *= 2  # then keep every other column: a strided view of the wanted shape
        x = sample(("ag-uneven", label, dtype), shape, dtype)[..., ::2]
        want = np.concatenate(COMM.allgather(x), axis=axis)
        got = allgather(COMM, x, axis=axis, algorithm=alg)
        errors += ranks_agree(f"{label} {dtype}", got)
        if not same_bits(got, want):
            errors.append(f"{label} {dtype}: got {got.shape}, want {want.shape} or other values")
    all_ranks_ok(errors)


@pytest.mark.mpi
@pytest.mark.parametrize("alg", algorithms("broadcast") + ("mpi",))
def test_broadcast_multidimensional(alg):
    errors = []
    for root, dtype in itertools.product(range(P), ["float32", "int64", "bfloat16"]):
        x = sample(("bc-nd", root, dtype), (4, 5, 3), dtype).transpose(1, 2, 0)[:, ::2]
        got = broadcast(COMM, x, root=root, algorithm=alg)
        if not same_bits(got, COMM.bcast(x, root=root)):
            errors.append(f"root={root} {dtype}: not root's data")
    all_ranks_ok(errors)


@pytest.mark.mpi
@pytest.mark.parametrize("alg", ["ring", "mpi"])
def test_reduce_scatter_zero_length_beside_axis(alg):
    x = np.zeros((2 * P, 0), np.float32)  # every rank raises alike: no rank is left waiting
    got = reduce_scatter(COMM, x, axis=0, algorithm=alg)
    assert got.shape == np.array_split(x, P, axis=0)[RANK].shape == (2, 0)
