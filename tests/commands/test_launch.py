"""Launching jobs the way notebooks do, and the demo as a user runs it."""
import json
import subprocess
import sys

from jobs import assert_one_clear_error
import pytest

from mpipar import launch


def test_script_hands_back_rank0_json(tmp_path):
    script = tmp_path / "hello.py"
    script.write_text(
        "from mpi4py import MPI\nfrom mpipar.launch import emit\n"
        "c = MPI.COMM_WORLD\nprint('rank', c.rank, flush=True)\n"
        "emit({'size': c.size, 'ranks': c.gather(c.rank)})\n")
    job = launch.run(script, n=3, timeout=60)
    assert job.data == {"size": 3, "ranks": [0, 1, 2]}
    # the ranks' lines reach mpirun concurrently and may interleave, even mid-line
    assert job.stdout.count("rank") == 3


def test_failing_job_raises_with_its_output(tmp_path):
    script = tmp_path / "boom.py"
    script.write_text("from mpi4py import MPI\n"
                      "if MPI.COMM_WORLD.rank == 1: raise RuntimeError('boom on rank 1')\n"
                      "MPI.COMM_WORLD.Barrier()\n")
    with pytest.raises(RuntimeError, match="boom on rank 1"):
        launch.run(script, n=2, timeout=60)


@pytest.mark.parametrize("n, args, message", [
    (0, [], "n must be a whole number of ranks >= 1, not 0"),
    (True, [], "not True"),
    (2, ["--json", "mine.json"], "leave --json out of args"),
    (2, ["--json=mine.json"], "leave --json out of args"),
])
def test_bad_launches_are_refused_before_starting(n, args, message):
    with pytest.raises(ValueError, match=message):
        launch.run("mpipar.demo", n=n, args=args)


def test_demo_json_at_three_ranks(tmp_path):
    job = launch.run("mpipar.demo_collectives", n=3,
                     args=["--size", "4KiB", "--repeat", "2", "--no-calibrate"])
    data = job.data
    assert data["world_size"] == 3 and data["nbytes"] == 4096
    algs = {row["algorithm"]: row for row in data["allreduce"]}
    assert set(algs) == {"naive", "tree", "recursive_doubling", "recursive_multiplying", "ring",
                         "rabenseifner", "mpi"}
    for row in data["allreduce"]:
        assert row["ranks_agree"]
        assert row["max_normalized_error"] <= row["bound"]
    assert algs["naive"]["bitwise_equal_serial"]  # naive adds in rank order, like the serial sum
    assert all(o["identical_to_mpi"] for o in data["other_collectives"])
    assert "allreduce" in job.stdout and "communication ledger" in job.stdout
    assert [step for step, _ in data["ring_trace"]] == [1, 2, 3, 4]


def test_demo_runs_without_mpirun(tmp_path):
    out = tmp_path / "d.json"
    proc = subprocess.run([sys.executable, "-m", "mpipar.demo_collectives", "--size", "64", "--no-calibrate",
                           "--json", str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["world_size"] == 1


def test_demo_bad_option_one_message_nonzero_exit():
    assert_one_clear_error("mpipar.demo_collectives", 3, ["--dtype", "complex64"], "invalid choice")


def test_demo_help_explains_each_option():
    proc = subprocess.run([sys.executable, "-m", "mpipar.demo_collectives", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for option in ("--size", "--dtype", "--repeat", "--seed", "--no-calibrate", "--json"):
        assert option in proc.stdout
