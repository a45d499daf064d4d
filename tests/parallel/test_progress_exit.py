"""Jobs with a communication thread end: cleanly at exit, and with one clear message (never a
hang) when the thread fails. Each runs tests/parallel/progress_job.py on two ranks."""
from pathlib import Path

from jobs import assert_thread_failure_ends_the_job
import pytest

from mpipar import launch
from mpipar.collectives.progress import thread_level_problem

JOB = Path(__file__).with_name("progress_job.py")
pytestmark = pytest.mark.skipif(thread_level_problem() is not None,
                                reason="this MPI has no MPI_THREAD_MULTIPLE")


def test_the_thread_stops_at_exit():
    job = launch.run(JOB, n=2, args=["ok"], timeout=60)
    assert job.returncode == 0 and len(job.data["losses"]) == 2 and job.data["engine_alive"]


@pytest.mark.parametrize("case, message", [
    ("fail", "progress engine (rank 1): the buckets' all-reduces failed on the communication "
             "thread: OSError: injected failure"),
    ("stuck", "no wait() collected it within 2 s: stopping every rank"),
])
def test_an_error_on_the_thread_ends_the_job_with_one_message(case, message):
    assert_thread_failure_ends_the_job(JOB, [case], message)
