"""What every entry point owes a user who got something wrong: one clear message."""
import os
import subprocess
import sys

from mpipar import launch


def assert_one_clear_error(target, n, args, message, timeout=120):
    """Run module ``target`` on ``n`` ranks with exactly ``args`` (``launch.run`` would add a
    --json of its own); it must fail with ``message`` printed exactly once (rank 0 only), no
    traceback, no abort, and a non-zero exit status. Returns the finished process."""
    cmd = launch.mpiexec() + ["-n", str(n), sys.executable, "-m", "mpi4py", "-m", target] + args
    env = dict(os.environ, **launch.ONE_THREAD)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    assert text.count(message) == 1, text
    assert "Traceback" not in text and "Abort" not in text, text
    return proc


def assert_thread_failure_ends_the_job(job_path, args, message, seconds=30):
    """Run the script ``job_path`` on 2 ranks with ``args`` that make a communication thread
    fail: the job must end within ``seconds`` with a non-zero status, no result, and ``message``
    printed exactly once -- one rank, one message, never a hang. Returns the finished job."""
    job = launch.run(job_path, n=2, args=args, timeout=60, check=False)
    text = job.stdout + job.stderr
    assert job.returncode != 0 and job.data is None, text
    assert text.count(message) == 1, text
    assert text.count("progress engine (rank") == 1, text
    assert job.seconds < seconds, text
    return job
