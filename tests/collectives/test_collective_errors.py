"""Bad calls fail loudly and together; a failing rank never leaves the others hanging.

The MPI tests check that a bad or mismatched call raises the same ValueError on
every rank before any data moves (so the communicator still works afterwards).
The other tests launch small jobs with mpirun and check that they end, non-zero,
within seconds when one rank dies or every rank is handed a bad argument.
"""
import os
from pathlib import Path
import signal
import subprocess
import sys
import textwrap
import time

import ml_dtypes
from mpi4py import MPI
import numpy as np
import pytest

from mpipar import collectives

COMM = MPI.COMM_WORLD
RANK = COMM.Get_rank()
NAMES = ["allreduce", "allgather", "reduce_scatter", "broadcast"]


def raises_everywhere(call, *match):
    """Run call() expecting ValueError on every rank; the message must contain every
    string in ``match`` and be the same on all ranks. Returns the message."""
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    missing = [m for m in match if m not in message]
    assert not missing, f"{missing} not in {message!r}"
    assert COMM.allgather(message) == [message] * COMM.Get_size()
    # nothing was left half-sent: the next collective still gives the right answer
    total = collectives.allreduce(COMM, np.ones(3, np.int64), algorithm="ring")
    assert total.tolist() == [COMM.Get_size()] * 3
    return message


def rank1(special, usual):
    """``special`` on rank 1, ``usual`` on the others."""
    return special if RANK == 1 else usual


@pytest.mark.mpi
@pytest.mark.parametrize("name", NAMES)
def test_unknown_algorithm(name):
    fn = getattr(collectives, name)
    message = raises_everywhere(lambda: fn(COMM, np.ones(4), algorithm="bogus"),
                                f"{name}: rank 0: unknown algorithm 'bogus'")
    for alg in (*collectives.ALGORITHMS[name], "mpi", "auto"):  # it lists the valid choices
        assert alg in message


@pytest.mark.mpi
@pytest.mark.parametrize("name", ["allreduce", "reduce_scatter"])
@pytest.mark.parametrize("op", ["mean", "SUM", None])
def test_unknown_op(name, op):
    fn = getattr(collectives, name)
    raises_everywhere(lambda: fn(COMM, np.ones(4), op=op), f"unknown op {op!r}",
                      "sum, prod, max, min")


@pytest.mark.mpi
@pytest.mark.parametrize("root", ["size", -1, 1.0, "0"])
def test_root_out_of_range(root):
    root = COMM.Get_size() if root == "size" else root
    raises_everywhere(lambda: collectives.broadcast(COMM, np.ones(4), root, "binomial"),
                      f"root {root!r} is out of range")


@pytest.mark.mpi
@pytest.mark.parametrize("name", ["allgather", "reduce_scatter"])
@pytest.mark.parametrize("shape,axis", [((4,), 1), ((4,), -2), ((2, 3), 2), ((), 0)])
def test_bad_axis(name, shape, axis):
    fn = getattr(collectives, name)
    raises_everywhere(lambda: fn(COMM, np.ones(shape), axis=axis),
                      f"axis {axis} is out of range for an array of shape {shape}")


@pytest.mark.mpi
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", ["uint8", "int16", "complex64", "bool", ">f4", "float8_e4m3fn"])
def test_unsupported_dtype(name, dtype):
    dt = np.dtype(getattr(ml_dtypes, dtype, dtype))
    raises_everywhere(lambda: getattr(collectives, name)(COMM, np.ones(4, dt)),
                      f"dtype {dt} is not supported", "float32", "bfloat16")


@pytest.mark.mpi
def test_problem_on_one_rank_is_reported_everywhere():
    """Only rank 0 passes a bad algorithm; every rank raises, naming rank 0."""
    alg = "fast" if RANK == 0 else "ring"
    raises_everywhere(lambda: collectives.allreduce(COMM, np.ones(4), algorithm=alg),
                      "allreduce: rank 0: unknown algorithm 'fast'")


@pytest.mark.mpi
@pytest.mark.parametrize("case", ["op list", "op none", "axis float", "axis bool", "algorithm list",
                                  "ragged x", "root bool"])
def test_any_bad_argument_on_one_rank_raises_on_all_together(case):
    """Whatever a rank passes -- unhashable, of the wrong type, not an array -- it is only
    a message until every rank has the agreement's answer; then all raise, naming it."""
    bad = COMM.Get_size() - 1  # the last rank (rank 0 on one rank)
    name, kwargs, match = {
        "op list": ("allreduce", dict(x=np.ones(4), op=["sum"]), "unknown op ['sum']"),
        "op none": ("reduce_scatter", dict(x=np.ones(4), op=None), "unknown op None"),
        "axis float": ("reduce_scatter", dict(x=np.ones((2, 2)), axis=1.0),
                       "axis must be an integer, not 1.0"),
        "axis bool": ("allgather", dict(x=np.ones((2, 2)), axis=True),
                      "axis must be an integer, not True"),
        "algorithm list": ("broadcast", dict(x=np.ones(4), algorithm=["ring"]),
                           "unknown algorithm ['ring']"),
        "ragged x": ("allgather", dict(x=[[1.0], [1.0, 2.0]]), "x is not an array"),
        "root bool": ("broadcast", dict(x=np.ones(4), root=True), "root True is out of range"),
    }[case]
    good = {"x": np.ones(kwargs["x"].shape if case != "ragged x" else (2, 1))}
    args = kwargs if RANK == bad else good
    raises_everywhere(lambda: getattr(collectives, name)(COMM, **args),
                      f"{name}: rank {bad}: {match}")


def test_signature_hash_is_the_same_in_every_process():
    """The hash the ranks compare is not Python's salted hash(): a fixed value."""
    from mpipar.collectives.checking import signature_hash
    fields = ("allreduce", ("algorithm", "ring"), ("op", "sum"), ("dtype", "<f4"), ("shape", (4,)))
    code = ("from mpipar.collectives.checking import signature_hash; "
            f"print(signature_hash({fields!r}))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout.strip()
            for seed in ("1", "2")}
    assert outs == {str(signature_hash(fields))}
    assert 0 <= signature_hash(fields) < 2**62


def mismatches():
    """what differs: (collective, its arguments on this rank, the field the message names)."""
    return {
        "dtype": ("allreduce", dict(x=np.ones(4, rank1(np.float64, np.float32))), "dtype"),
        "bfloat16/float16": ("allreduce", dict(x=np.ones(4, rank1(np.float16, ml_dtypes.bfloat16))),
                             "dtype"),
        "shape": ("allreduce", dict(x=np.ones(rank1(5, 4))), "shape"),
        "algorithm": ("allreduce", dict(x=np.ones(4), algorithm=rank1("ring", "tree")),
                      "algorithm"),
        "op": ("reduce_scatter", dict(x=np.ones(4), op=rank1("max", "sum")), "op"),
        "axis": ("reduce_scatter", dict(x=np.ones((2, 2)), axis=rank1(1, 0)), "axis"),
        "root": ("broadcast", dict(x=np.ones(4), root=rank1(1, 0)), "root"),
        "broadcast shape": ("broadcast", dict(x=np.ones((2, rank1(3, 2)))), "shape"),
        "allgather other dims": ("allgather", dict(x=np.ones((2, rank1(3, 2)))), "other_dims"),
        "allgather axis": ("allgather", dict(x=np.ones((2, 2)), axis=rank1(1, 0)), "axis"),
    }


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("what", list(mismatches()))
def test_mismatch_across_ranks(what):
    name, kwargs, field = mismatches()[what]
    message = raises_everywhere(lambda: getattr(collectives, name)(COMM, **kwargs),
                                f"{name}: ranks disagree on {field} (rank 0: ")
    assert "rank 1: " in message  # it shows what each rank passed


@pytest.mark.mpi
def test_unchecked_call_still_rejects_local_problems():
    raises_everywhere(lambda: collectives.allgather(COMM, np.ones(4), algorithm="bogus",
                                                    check=False),
                      "allgather: unknown algorithm 'bogus'")


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algorithm", ["naive", "binomial"])
def test_unchecked_broadcast_of_unequal_lengths_is_an_error_not_a_stale_tail(algorithm):
    """Ranks 0 and 1 alone (a pair, so a failing receiver blocks nobody downstream): rank 0
    broadcasts 4 numbers, rank 1 expects 6. Unchecked, rank 1's receive sees 16 bytes for 24."""
    pair = COMM.Split(0 if COMM.Get_rank() < 2 else MPI.UNDEFINED, COMM.Get_rank())
    if pair == MPI.COMM_NULL:
        return
    try:
        if pair.Get_rank() == 0:
            out = collectives.broadcast(pair, np.arange(4.0), algorithm=algorithm, check=False)
            assert np.array_equal(out, np.arange(4.0))
        else:
            with pytest.raises(ValueError, match="received 32 bytes from rank 0 where 48 were expected"):
                collectives.broadcast(pair, np.full(6, -1.0), algorithm=algorithm, check=False)
    finally:
        pair.Free()


# --- whole jobs launched with mpirun -----------------------------------------------------

RANK_DIES = """
    from mpi4py import MPI
    import numpy as np
    from mpipar.collectives import allreduce
    comm = MPI.COMM_WORLD
    x = np.ones(1000)
    allreduce(comm, x, algorithm="{alg}")    # one good call first
    if comm.Get_rank() == 1:
        raise RuntimeError("rank 1 fails on purpose")
    allreduce(comm, x, algorithm="{alg}")    # ranks 0 and 2 wait here for rank 1
    print("ranks 0 and 2 should never get here", flush=True)
"""

BAD_EVERYWHERE = """
    from mpi4py import MPI
    import numpy as np
    from mpipar.collectives import allreduce
    allreduce(MPI.COMM_WORLD, np.ones(8), algorithm="bogus")
"""

MISMATCHED = """
    from mpi4py import MPI
    import numpy as np
    from mpipar.collectives import allreduce
    comm = MPI.COMM_WORLD
    allreduce(comm, np.ones(8, np.float64 if comm.Get_rank() == 1 else np.float32))
"""


def run_job(tmp_path, source, n, limit=20):
    """Run ``source`` on n ranks under ``python -m mpi4py``; kill it after ``limit`` s."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(source))
    mpirun = Path(sys.executable).parent / "mpirun"
    assert mpirun.exists(), f"no mpirun next to {sys.executable}"
    # one BLAS thread per rank, and no PMI settings from an mpirun we may be running under
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "HYDRA_"))}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [str(mpirun), "-n", str(n), sys.executable, "-m", "mpi4py", str(script)]
    t0 = time.monotonic()
    job = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = job.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)  # mpirun and the ranks it started
        job.communicate()
        pytest.fail(f"the job was still running after {limit} s: it hangs")
    return job.returncode, out + err, time.monotonic() - t0


# the id is not "mpi": pytest-mpi would take that keyword for its marker and skip the test
@pytest.mark.parametrize("alg", ["ring", "tree", pytest.param("mpi", id="library")])
def test_dying_rank_ends_the_job(tmp_path, alg):
    rc, output, seconds = run_job(tmp_path, RANK_DIES.format(alg=alg), 3)
    assert rc != 0
    assert seconds < 20
    assert "rank 1 fails on purpose" in output
    assert "should never get here" not in output


def test_bad_argument_everywhere_ends_the_job(tmp_path):
    rc, output, seconds = run_job(tmp_path, BAD_EVERYWHERE, 2)
    assert rc != 0 and seconds < 20
    assert "ValueError: allreduce: rank 0: unknown algorithm 'bogus'" in output


def test_mismatch_ends_the_job(tmp_path):
    rc, output, seconds = run_job(tmp_path, MISMATCHED, 2)
    assert rc != 0 and seconds < 20
    assert "ValueError: allreduce: ranks disagree on dtype (rank 0: <f4, rank 1: <f8)" in output
