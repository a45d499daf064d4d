"""Every hand-written collective against the MPI library's own (``algorithm="mpi"``).

Run under mpirun (see the Makefile). A test loops over sizes and ops, collects what
went wrong on this rank, and asserts on the list gathered from every rank, so all
ranks pass or fail together and none is left waiting in a collective.

Integers (small values, no overflow), max and min must be exact: bitwise equal to
"mpi" and to the reference. Floating-point sums and products may differ from "mpi"
in the last bits; each is checked against an exact reference within a derived bound
(collective_checks.py).
"""
import itertools
import zlib

from collective_checks import DTYPES, OPS, dt, expectation, gather_inputs, ranks_agree, reduction_errors
from helpers import all_ranks_ok
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.collectives import ALGORITHMS, allgather, allreduce, broadcast, reduce_scatter
from mpipar.measure.numerics import bitwise_equal

COMM = MPI.COMM_WORLD
P, RANK = COMM.Get_size(), COMM.Get_rank()
SIZES = sorted({0, 1, P - 1, P, 10_007})
REDUCING = {  # name -> (the call, the part of every rank's input that this rank's result reduces)
    "allreduce": (allreduce, lambda stack: stack),
    "reduce_scatter": (reduce_scatter, lambda stack: np.array_split(stack, P, axis=1)[RANK]),
}
COPYING = {  # name -> (the call for (x, root, algorithm), what it must return)
    "allgather": (lambda x, root, alg: allgather(COMM, x, algorithm=alg),
                  lambda x, root: np.concatenate(COMM.allgather(x))),
    "broadcast": (lambda x, root, alg: broadcast(COMM, x, root=root, algorithm=alg),
                  lambda x, root: COMM.bcast(x, root=root)),
}


def algorithms(name):
    """The hand-written algorithms, and "auto" (which must pick one of them)."""
    return (*ALGORITHMS[name], "auto")


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


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(REDUCING))
def test_reductions_match_mpi(name, dtype):
    """Within the bound (exact where exactness is possible, and then equal to "mpi");
    allreduce results agree on every rank; the input is left alone."""
    call, part = REDUCING[name]
    errors = []
    for n, op in itertools.product(SIZES, OPS):
        x = sample((name, dtype, n, op), (n,), dtype, op)
        before, want = x.copy(), expectation(part(gather_inputs(x)), dtype, op)
        lib = call(COMM, x, op=op, algorithm="mpi")
        errors += reduction_errors(f"mpi n={n} {op}", lib, want)
        for alg in algorithms(name):
            label = f"{alg} n={n} {op}"
            got = call(COMM, x, op=op, algorithm=alg)
            errors += reduction_errors(label, got, want)
            errors += ranks_agree(label, got) if name == "allreduce" else []
            if (dtype.startswith("int") or op in ("max", "min")) and not bitwise_equal(got, lib):
                errors.append(f"{label}: differs from mpi")
        if not bitwise_equal(x, before):
            errors.append(f"n={n} {op}: the input was modified")
    all_ranks_ok(errors)


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(COPYING))
def test_copies_match_mpi(name, dtype):
    """allgather: the concatenation of the inputs; broadcast: root's data, from every root.
    Exact, and the same on every rank."""
    call, reference = COPYING[name]
    errors, what = [], "root's data" if name == "broadcast" else "the concatenation of the inputs"
    for root, n in itertools.product(range(P) if name == "broadcast" else [0], SIZES):
        x = sample((name, dtype, n, root), (n,), dtype)
        want = reference(x, root)
        for alg in algorithms(name) + ("mpi",):
            label = f"{alg} root={root} n={n}"
            got = call(x, root, alg)
            errors += ranks_agree(label, got)
            if not bitwise_equal(got, want):
                errors.append(f"{label}: not {what}")
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
        if not bitwise_equal(got, want):
            errors.append(f"{label} {dtype}: got {got.shape}, want {want.shape} or other values")
    all_ranks_ok(errors)


@pytest.mark.mpi
@pytest.mark.parametrize("alg", algorithms("broadcast") + ("mpi",))
def test_broadcast_multidimensional(alg):
    errors = []
    for root, dtype in itertools.product(range(P), ["float32", "int64", "bfloat16"]):
        x = sample(("bc-nd", root, dtype), (4, 5, 3), dtype).transpose(1, 2, 0)[:, ::2]
        got = broadcast(COMM, x, root=root, algorithm=alg)
        if not bitwise_equal(got, COMM.bcast(x, root=root)):
            errors.append(f"root={root} {dtype}: not root's data")
    all_ranks_ok(errors)


@pytest.mark.mpi
@pytest.mark.parametrize("alg", ["ring", "mpi"])
def test_reduce_scatter_zero_length_beside_axis(alg):
    x = np.zeros((2 * P, 0), np.float32)  # every rank raises alike: no rank is left waiting
    got = reduce_scatter(COMM, x, axis=0, algorithm=alg)
    assert got.shape == np.array_split(x, P, axis=0)[RANK].shape == (2, 0)
