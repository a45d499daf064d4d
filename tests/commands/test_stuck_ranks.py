"""A rank that fails alone, or stops, ends the whole job promptly with its message: never a
silent abort, never a hang."""
import os
import signal
import subprocess
import sys
import time

from mpipar import launch

ENV = dict(os.environ, **launch.ONE_THREAD, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")

ALONE = '''
from mpi4py import MPI
from mpipar.cli import run_main

def main(argv=None):
    if MPI.COMM_WORLD.Get_rank() == 1:
        raise ValueError("only rank 1 can see this")
    MPI.COMM_WORLD.Barrier()  # the others wait for rank 1, which never comes
    return 0

run_main(main)
'''


def test_an_error_on_one_rank_only_is_printed_by_that_rank_and_ends_the_job(tmp_path):
    script = tmp_path / "alone.py"
    script.write_text(ALONE)
    t0 = time.monotonic()
    proc = subprocess.run(launch.mpiexec() + ["-n", "3", sys.executable, "-m", "mpi4py", str(script)],
                          capture_output=True, text=True, timeout=60, env=ENV)
    assert proc.returncode != 0
    assert proc.stderr.count("error (rank 1): only rank 1 can see this") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 30


def test_timeout_ends_a_job_whose_rank_was_stopped(tmp_path):
    """SIGSTOP one rank of a long training run: --timeout 8 aborts the job with a clear message."""
    marker = str(tmp_path / "stopped.json")
    cmd = launch.mpiexec() + ["-n", "2", sys.executable, "-m", "mpi4py", "-m", "mpipar.train",
                              "--preset", "tiny", "--steps", "100000", "--quiet", "--timeout", "8",
                              "--json", marker]
    t0 = time.monotonic()
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        ranks = []
        while len(ranks) < 2 and time.monotonic() - t0 < 30:  # the two python ranks
            out = subprocess.run(["pgrep", "-f", f"mpipar.train .*{marker}"], capture_output=True, text=True)
            ranks = [int(p) for p in out.stdout.split() if int(p) != job.pid and _is_python(int(p))]
            time.sleep(0.2)
        assert len(ranks) == 2, ranks
        header = job.stdout.readline()  # rank 0 is training: both ranks are past their start
        assert header.startswith("training"), header
        time.sleep(1)
        os.kill(max(ranks), signal.SIGSTOP)
        out, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
        for pid in ranks:
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert job.returncode != 0
    assert "--timeout 8 s exceeded: stopping every rank" in err, (job.returncode, out, err, ranks)
    assert time.monotonic() - t0 < 40


def _is_python(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"python" in f.read().split(b"\0")[0]
    except OSError:
        return False
