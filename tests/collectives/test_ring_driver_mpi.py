"""RingDriver: several non-blocking rings in flight at once keep the blocking ring's bits, on
the main thread (pump, run) and on a communication thread with rings added while it waits.
Each test gathers every rank's problems and asserts on the whole list."""
from helpers import all_ranks_ok
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.collectives import allreduce
from mpipar.collectives.nonblocking import RingAllreduce
from mpipar.collectives.progress import ProgressEngine, thread_level_problem
from mpipar.collectives.ring_driver import RingDriver

COMM = MPI.COMM_WORLD
P, RANK = COMM.Get_size(), COMM.Get_rank()
SIZES = (0, 1, P + 1, 777, 4096, 3)
WORK = np.random.default_rng(RANK).standard_normal((48, 48))


def data():
    rng = np.random.default_rng(10 + RANK)
    return [rng.standard_normal(n).astype(np.float32) for n in SIZES]


def check(xs, rings, driver, most):
    problems = [f"ring {k} (n={x.size}) differs" for k, (x, ring) in enumerate(zip(xs, rings))
                if not (ring.done and np.array_equal(ring.result, allreduce(COMM, x, "sum", "ring")))]
    if driver.finished != len(xs) or driver.most_in_flight > most:
        problems.append(f"finished {driver.finished}, {driver.most_in_flight} in flight (max {most})")
    return problems


@pytest.mark.mpi
@pytest.mark.parametrize("most", [1, 2, None])
def test_rings_in_flight_together_keep_their_bits_pumped_and_run(most):
    problems = []
    for how in ("pump", "run"):
        xs = data()
        driver = RingDriver(most)
        rings = [RingAllreduce(COMM, x, tag=1 + k) for k, x in enumerate(xs)]
        for k, ring in enumerate(rings):
            driver.add(ring)
            for _ in range(RANK % 2 + k % 2):
                WORK @ WORK  # the ranks drift apart
            if how == "pump":
                driver.pump()
        if how == "pump":
            while not driver.pump():
                WORK @ WORK
        else:
            driver.run(len(rings))
        problems += [f"{how}: {e}" for e in check(xs, rings, driver, most or len(xs))]
    all_ranks_ok(problems)


@pytest.mark.mpi
@pytest.mark.skipif(thread_level_problem() is not None, reason="no MPI_THREAD_MULTIPLE here")
@pytest.mark.parametrize("poll_seconds", [None, 1e-5])
def test_a_driver_on_the_engine_takes_rings_added_while_it_waits(poll_seconds):
    xs = data()
    driver = RingDriver(3, poll_seconds)
    rings = [RingAllreduce(COMM, x, tag=1 + k) for k, x in enumerate(xs)]
    with ProgressEngine() as engine:
        job = engine.submit(driver.run, len(rings))
        for ring in rings:
            for _ in range(2 + RANK):
                WORK @ WORK  # the main thread computes while the thread drives
            driver.add(ring)
        assert job.wait() == len(rings)
    all_ranks_ok(check(xs, rings, driver, 3))


def test_max_in_flight_is_checked_and_cancel_stops_run():
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="max_in_flight"):
            RingDriver(bad)
    driver = RingDriver(2)
    driver.cancel()
    assert driver.run(5) == 0  # returns although no ring came
