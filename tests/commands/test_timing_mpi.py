"""The benchmarks' timing loop on many ranks: every rank reports the slowest rank's figures."""
import time

from helpers import all_ranks_ok
from mpi4py import MPI
import pytest

from mpipar.bench.timing import slowest, time_call


@pytest.mark.mpi
def test_slowest_is_the_maximum_on_every_rank():
    comm = MPI.COMM_WORLD
    p, rank = comm.Get_size(), comm.Get_rank()
    got = slowest(comm, {"a": float(rank), "b": float(-rank)}), slowest(comm, 2.0 * rank)
    want = {"a": float(p - 1), "b": 0.0}, 2.0 * (p - 1)
    all_ranks_ok([] if got == want else [f"{got} != {want}"])


@pytest.mark.mpi
def test_a_trial_lasts_as_long_as_its_slowest_rank():
    comm = MPI.COMM_WORLD
    last = comm.Get_size() - 1
    nap = 0.02 if comm.Get_rank() == last else 0.0
    seconds = time_call(comm, lambda: time.sleep(nap), trials=2)["seconds"]
    all_ranks_ok([] if all(s >= 0.02 for s in seconds) else [f"{seconds}: shorter than the nap"])
