"""A pipeline whose messages are on a communication thread ends: cleanly at exit, and with one
clear message (never a hang) when the thread fails. Each runs tests/parallel/pipeline_engine_job.py
on two ranks."""
from pathlib import Path

from jobs import assert_thread_failure_ends_the_job
import pytest

from mpipar import launch
from mpipar.collectives.progress import thread_level_problem

JOB = Path(__file__).with_name("pipeline_engine_job.py")
pytestmark = pytest.mark.skipif(thread_level_problem() is not None,
                                reason="this MPI has no MPI_THREAD_MULTIPLE")


def test_the_thread_stops_at_exit():
    job = launch.run(JOB, n=2, args=["ok"], timeout=60)
    assert job.returncode == 0 and len(job.data["losses"]) == 2 and job.data["engine_alive"]


def test_an_error_on_the_thread_in_a_step_ends_the_job_with_one_message():
    assert_thread_failure_ends_the_job(JOB, ["fail"], "progress engine (rank 1): "
                                       "the pipeline's messages failed on the communication "
                                       "thread: OSError: injected failure")
