"""Every entry point checks its --json path before any work, and writes it whole or not at all."""
import json
import os
import subprocess
import sys

from jobs import assert_one_clear_error
import pytest

from mpipar import launch


@pytest.mark.parametrize("target, args", [
    ("mpipar.demo", ["--preset", "tiny"]),
    ("mpipar.demo_collectives", ["--no-calibrate"]),
    ("mpipar.train", ["--preset", "tiny", "--quiet"]),
])
@pytest.mark.parametrize("where", ["missing folder", "a folder"])
def test_unwritable_json_is_one_clear_error_before_work(target, args, where, tmp_path):
    path = tmp_path / "missing" / "out.json" if where == "missing folder" else tmp_path
    proc = assert_one_clear_error(target, 2, args + ["--json", str(path)],
                                  f"cannot write --json {str(path)!r}", timeout=60)
    assert "held-out" not in proc.stdout and "allreduce" not in proc.stdout  # no work done


def test_json_is_written_whole_with_no_temporary_left(tmp_path):
    out = tmp_path / "train.json"
    cmd = launch.mpiexec() + ["-n", "2", sys.executable, "-m", "mpi4py", "-m", "mpipar.train",
                              "--preset", "tiny", "--steps", "3", "--quiet", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **launch.ONE_THREAD))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(out.read_text())["settings"]["steps"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["train.json"]
