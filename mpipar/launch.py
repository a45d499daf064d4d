"""Run an mpipar job with N ranks from a notebook (or any Python) and get its JSON back.

    from mpipar import launch
    job = launch.run("mpipar.bench", n=4, args=["collectives", "--max-size", "1MiB"])
    job.data        # what rank 0 wrote with --json
    job.stdout      # everything the ranks printed

    job = launch.run("pingpong.py", n=2)   # a script: it hands back data with launch.emit(obj)

The launcher is ``mpirun`` next to ``sys.executable`` (a notebook kernel's PATH
may not include the environment's bin/), else the one on PATH, else the
``MPIEXEC`` environment variable (which wins when set, e.g. ``"mpirun --oversubscribe"``).
Every rank runs with one BLAS thread and under ``python -m mpi4py``, so one
rank's uncaught exception aborts the whole job instead of leaving it hanging.
"""
from dataclasses import dataclass
import json
import os
from pathlib import Path
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

from .cli import write_json

RESULT_ENV = "MPIPAR_RESULT"
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")}


@dataclass
class Job:
    """What a finished job left: rank 0's JSON (or None), the output, the exit status, the time."""
    data: object
    stdout: str
    stderr: str
    seconds: float
    command: list
    returncode: int


def mpiexec():
    """The launcher command as a list, e.g. ['/venv/bin/mpirun']."""
    if os.environ.get("MPIEXEC"):
        cmd = shlex.split(os.environ["MPIEXEC"])
    else:
        here = Path(sys.executable).parent
        found = [str(here / name) for name in ("mpirun", "mpiexec") if (here / name).exists()]
        found += [w for w in (shutil.which("mpirun"), shutil.which("mpiexec")) if w]
        if not found:
            raise RuntimeError("no mpirun found next to Python or on PATH; "
                               "install the 'mpich' wheel (make install) or set MPIEXEC")
        cmd = [found[0]]
    if _is_open_mpi(cmd[0]) and "--oversubscribe" not in cmd:
        cmd.append("--oversubscribe")  # Open MPI refuses more ranks than cores without it
    return cmd


def _is_open_mpi(launcher):
    try:
        out = subprocess.run([launcher, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "Open MPI" in out.stdout + out.stderr or "OpenRTE" in out.stdout + out.stderr


def run(target, n, args=(), timeout=300, check=True):
    """Run ``target`` (a module name like 'mpipar.bench' or a .py path) on ``n`` ranks.

    A module gets ``--json PATH`` appended; a script receives PATH in the
    environment variable MPIPAR_RESULT and writes it with :func:`emit`. Raises
    RuntimeError with the job's output if it fails (when ``check``) or overruns, and
    ValueError for ``n`` < 1 or a module's ``args`` that carry their own ``--json`` (the
    job's JSON is the one handed back).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a whole number of ranks >= 1, not {n!r}")
    if not str(target).endswith(".py") and any(str(a) == "--json" or str(a).startswith("--json=")
                                                for a in args):
        raise ValueError("launch.run adds --json itself and hands the JSON back as Job.data: "
                         "leave --json out of args")
    with tempfile.TemporaryDirectory(prefix="mpipar-") as tmp:
        result = os.path.join(tmp, "result.json")
        is_script = str(target).endswith(".py")
        what = [str(target)] if is_script else ["-m", str(target)]
        cmd = (mpiexec() + ["-n", str(n), sys.executable, "-m", "mpi4py"] + what
               + [str(a) for a in args] + ([] if is_script else ["--json", result]))
        env = dict(os.environ, **ONE_THREAD, **{RESULT_ENV: result})
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"{' '.join(cmd)} ran past {timeout} s and was stopped\n"
                               f"{_text(e.stdout)}{_text(e.stderr)}") from None
        seconds = time.perf_counter() - t0
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}\n"
                               f"{proc.stdout}{proc.stderr}")
        data = None
        if os.path.exists(result):
            with open(result) as f:
                data = json.load(f)
        return Job(data, proc.stdout, proc.stderr, seconds, cmd, proc.returncode)


def _text(b):
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def emit(obj, comm=None):
    """From a script run by :func:`run`: rank 0 hands ``obj`` back as JSON.

    Outside :func:`run` (no MPIPAR_RESULT set) rank 0 prints it instead.
    """
    if comm is None:
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
    if comm.Get_rank() != 0:
        return
    path = os.environ.get(RESULT_ENV)
    if path:
        write_json(comm, path, obj)  # atomic: run() never reads half a file
    else:
        print(json.dumps(obj, indent=1))
