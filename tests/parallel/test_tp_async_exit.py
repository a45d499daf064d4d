"""A tensor-parallel job whose column-parallel backward reduces on a communication thread ends:
cleanly, and with one clear message (never a hang) when that thread fails. Each runs
tests/parallel/tp_async_job.py on two ranks."""
from pathlib import Path

from jobs import assert_thread_failure_ends_the_job
import pytest

from mpipar import launch
from mpipar.collectives.progress import thread_level_problem

JOB = Path(__file__).with_name("tp_async_job.py")
pytestmark = pytest.mark.skipif(thread_level_problem() is not None,
                                reason="this MPI has no MPI_THREAD_MULTIPLE")


def test_the_job_runs_and_exits():
    job = launch.run(JOB, n=2, args=["ok"], timeout=60)
    assert job.returncode == 0 and len(job.data["losses"]) == 2


def test_an_error_on_the_thread_ends_the_job_with_one_message():
    assert_thread_failure_ends_the_job(JOB, ["fail"], "progress engine (rank 1): "
                                       "lm_head's input-gradient reduction failed on the "
                                       "communication thread: OSError: injected failure")
