"""Helpers shared by the test files (pytest puts this folder on sys.path through conftest.py).

MPI tests compute a verdict on every rank and combine them before asserting, so all
ranks pass or fail together and no rank is left waiting in a collective.
"""
import contextlib

from mpi4py import MPI

WORLD = MPI.COMM_WORLD


def all_ranks_ok(problems, comm=WORLD):
    """Fail on every rank alike if any rank found something wrong (``problems``: a list of texts)."""
    lines = [f"rank {r}: {e}" for r, errs in enumerate(comm.allgather(list(problems))) for e in errs]
    assert not lines, f"{len(lines)} problems:\n" + "\n".join(lines[:30])


@contextlib.contextmanager
def first_ranks(k, comm=WORLD):
    """A communicator of ranks 0..k-1 of ``comm`` (COMM_NULL on the others), freed on exit."""
    rank = comm.Get_rank()
    sub = comm.Split(0 if rank < k else MPI.UNDEFINED, rank)
    try:
        yield sub
    finally:
        if sub != MPI.COMM_NULL:
            sub.Free()
