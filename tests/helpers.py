"""Helpers shared by the test files (pytest puts this folder on sys.path through conftest.py).

MPI tests compute a verdict on every rank and combine them before asserting, so all
ranks pass or fail together and no rank is left waiting in a collective.
"""
import contextlib

from mpi4py import MPI
import numpy as np

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


class NoMessages:
    """A communicator that may only tell its size and rank: any other use would be a message."""

    def __init__(self, comm):
        self.Get_size, self.Get_rank = comm.Get_size, comm.Get_rank

    def __getattr__(self, name):  # called only for names not set in __init__
        raise AssertionError(f"the model used comm.{name} before rejecting the split")


def generate_without_cache(model, prompt, n, temperature=0.0, seed=0):
    """Re-run the whole sequence every step; greedy, or the same sampling rule as generate."""
    seq, rng = np.asarray(prompt), np.random.default_rng(seed)
    for _ in range(n):
        last = model.forward(seq)[:, -1].astype(np.float64)
        if temperature == 0:
            nxt = last.argmax(-1)
        else:
            e = np.exp((last - last.max(-1, keepdims=True)) / temperature)
            nxt = np.array([rng.choice(len(row), p=row) for row in e / e.sum(-1, keepdims=True)])
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
    return seq
