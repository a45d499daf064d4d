"""Kept receive buffers (mpipar/collectives/scratch.py): reused, never returned.

Every algorithm that receives into scratch runs twice in a row on messages large enough
to use it; the first result must still hold the first answer after the second call (a
result that aliased scratch would now hold the second), and both must be exact: the
inputs are small integers in float32, so every order of summation gives the same sum.
"""
from helpers import all_ranks_ok
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.collectives import ALGORITHMS, allgather, allreduce, reduce_scatter, scratch

pytestmark = pytest.mark.mpi
COMM = MPI.COMM_WORLD
P, RANK = COMM.Get_size(), COMM.Get_rank()
N = 3 * scratch.SMALLEST // 4 + 7  # float32 elements: above SMALLEST bytes, not a multiple of p


def inputs(seed):
    """Every rank's input (small integers: exact float32 sums) and this rank's own."""
    every = np.random.default_rng(seed).integers(-50, 50, size=(P, N)).astype(np.float32)
    return every, every[RANK]


CALLS = {
    "allreduce": (allreduce, lambda every: every.sum(axis=0)),
    "reduce_scatter": (reduce_scatter, lambda every: np.array_split(every.sum(axis=0), P)[RANK]),
    "allgather": (allgather, lambda every: every.reshape(-1)),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_results_survive_the_next_call_and_are_exact(name):
    call, want = CALLS[name]
    problems = []
    for alg in (*ALGORITHMS[name], "mpi"):
        every1, mine1 = inputs(1)
        every2, mine2 = inputs(2)
        first = call(COMM, mine1, algorithm=alg)
        kept = first.copy()
        second = call(COMM, mine2, algorithm=alg)
        if not np.array_equal(first, kept):
            problems.append(f"{alg}: the first result changed during the second call")
        for got, every, which in ((first, every1, "first"), (second, every2, "second")):
            if not np.array_equal(got, want(every)):
                problems.append(f"{alg}: the {which} result is wrong")
    all_ranks_ok(problems)


def test_scratch_is_reused_counted_and_released():
    comm = COMM.Dup()
    try:
        a = scratch.buffer(comm, N, np.float32, "incoming")
        b = scratch.buffer(comm, N // 2, np.float32, "incoming")
        assert np.shares_memory(a, b)  # the same kept bytes, grown to the largest request
        assert scratch.held_bytes(comm) == 4 * N
        c = scratch.buffer(comm, 8, np.float32, "incoming")  # small: a plain new array
        assert not np.shares_memory(a, c)
        allreduce(comm, np.ones(N, np.float32), algorithm="ring")
        assert scratch.held_bytes(comm) >= 4 * N
        scratch.release(comm)
        assert scratch.held_bytes(comm) == 0
    finally:
        comm.Free()
