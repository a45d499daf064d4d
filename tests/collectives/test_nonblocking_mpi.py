"""RingAllreduce (non-blocking) against the blocking ring allreduce.

The non-blocking ring does the blocking ring's combines in the same order, so the
comparisons are bitwise. Ranks are put out of step on purpose (a different amount
of NumPy work between polls on each rank). Each test gathers every rank's
problems and asserts on the whole list, so all ranks pass or fail together.
"""
import zlib

from helpers import all_ranks_ok
import ml_dtypes
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.collectives import allreduce
from mpipar.collectives.nonblocking import RingAllreduce
from mpipar.measure.ledger import CommLedger, CostModel
from mpipar.measure.numerics import bitwise_equal

pytestmark = pytest.mark.mpi
COMM = MPI.COMM_WORLD
P, RANK = COMM.Get_size(), COMM.Get_rank()
LENGTHS = sorted({0, 1, max(P - 1, 0), P, 1001})
WORK = np.random.default_rng(RANK).standard_normal((48, 48))


def sample(key, shape, dtype):
    """This rank's data, different on every rank."""
    return np.random.default_rng([zlib.crc32(repr(key).encode()), RANK]).standard_normal(shape).astype(dtype)


def busy(k):
    """A little NumPy work, more on higher ranks, so the ranks drift apart."""
    for _ in range(k):
        WORK @ WORK


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_ring_bitwise_equal_to_blocking_ring(dtype):
    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    problems = []
    for n in LENGTHS:
        for op, shape in (("sum", (n,)), ("max", (n,)), ("sum", (1, n))):
            x = sample((dtype, n, op), shape, dt)
            before = x.copy()
            want = allreduce(COMM, x, op, algorithm="ring")
            ring = RingAllreduce(COMM, x, op).start()
            polls = 0
            while not ring.progress():
                busy(1 + RANK % 3)
                polls += 1
            if not bitwise_equal(ring.result, want):
                problems.append(f"{dtype} n={n} {op} {shape}: polled result differs")
            if not bitwise_equal(RingAllreduce(COMM, x, op).wait(), want):
                problems.append(f"{dtype} n={n} {op} {shape}: wait() result differs")
            if not bitwise_equal(x, before):
                problems.append(f"{dtype} n={n}: input overwritten without inplace")
            if P == 1 and polls:
                problems.append("one rank should be done at start()")
    all_ranks_ok(problems)


def test_inplace_reduces_in_the_callers_buffer():
    x = sample("inplace", (7, 11), np.float32)
    want = allreduce(COMM, x, algorithm="ring")
    ring = RingAllreduce(COMM, x, inplace=True)
    out = ring.wait()
    assert bitwise_equal(x, want) and np.shares_memory(out, x)
    with pytest.raises(ValueError, match="C-contiguous"):
        RingAllreduce(COMM, x[:, ::2], inplace=True)
    with pytest.raises(ValueError, match="unknown op"):
        RingAllreduce(COMM, x, "mean")


def test_concurrent_rings_started_in_different_orders():
    """Rings with their own tags on one communicator never mix messages up, whatever
    order each rank starts and polls them in."""
    xs = [sample(("conc", k), (n,), np.float32) for k, n in enumerate((5, 1001, 1, 300))]
    wants = [allreduce(COMM, x, algorithm="ring") for x in xs]
    order = np.roll(np.arange(len(xs)), RANK)
    rings = [None] * len(xs)
    for k in order:
        rings[k] = RingAllreduce(COMM, xs[k], tag=100 + k).start()
        busy(1)
        [r.progress() for r in rings if r is not None]
    while not all(r.progress() for r in rings[::-1]):
        busy(RANK % 2)
    all_ranks_ok([k for k in range(len(xs)) if not bitwise_equal(rings[k].result, wants[k])])


@pytest.mark.parametrize("n", [0, 1001])
def test_ledger_counts_match_the_ring_formula(n):
    x = np.ones(n, np.float64)
    with CommLedger() as led:
        RingAllreduce(COMM, x).wait()
        allreduce(COMM, x, algorithm="ring")
    nb, blocking = led.records
    blocks = [len(b) for b in np.array_split(np.arange(n), P)]
    sent = 8 * (2 * n - blocks[RANK] - blocks[(RANK + 1) % P])  # all blocks but two, once
    assert nb["op"] == "allreduce" and nb["algorithm"] == "ring" and nb["nonblocking"] is True
    assert nb["messages"] == nb["steps"] == 2 * (P - 1)
    assert nb["bytes_sent"] == sent == blocking["bytes_sent"]
    assert (nb["nbytes"], nb["count"], nb["dtype"], nb["world_size"]) == (8 * n, n, "float64", P)
    assert nb["seconds"] >= 0 and "nonblocking" not in blocking
    assert nb["predicted_seconds"] == CostModel().predict("allreduce", "ring", P, 8 * n)
    assert "allreduce" in led.summary()
