"""Megatron's operators on the ranks of MPI.COMM_WORLD, one shard per rank, and on the same
split emulated by one process: each backward is the adjoint of its forward, on every rank."""
from helpers import all_ranks_ok
from mpi4py import MPI
import pytest
from tp_cases import COMM, P, adjoint_gaps

from mpipar.parallel.tensor_parallel import TPGroup


@pytest.mark.mpi
@pytest.mark.parametrize("algorithm", ["ring", "naive", "mpi"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_each_backward_is_the_adjoint_of_its_forward(algorithm, deterministic):
    problems = []
    for tp in (TPGroup(COMM, algorithm=algorithm, deterministic=deterministic),
               TPGroup(MPI.COMM_SELF, ways=P, algorithm=algorithm, deterministic=deterministic)):
        gaps = adjoint_gaps(tp, seed=P)
        problems += [f"{tp.comm.Get_size()} ranks: {op} off by {gap}" for op, gap in gaps.items() if gap]
    all_ranks_ok(problems)
