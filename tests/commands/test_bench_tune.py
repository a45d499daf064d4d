"""bench tune: the table it writes is valid, covers every size, and auto then reads it."""
import json

from mpipar import launch
from mpipar.collectives import ALGORITHMS, tuning


def test_tune_writes_a_table_that_auto_obeys(tmp_path, monkeypatch):
    path = tmp_path / "p2.json"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # never the user's cache
    job = launch.run("mpipar.bench", n=2, timeout=180, args=[
        "tune", "--ops", "allreduce,allgather", "--max-size", "512B", "--trials", "1",
        "--warmup", "1", "--no-calibrate", "--quiet", "--verify", "--output", str(path)])
    table = json.loads(path.read_text())
    assert tuning.problem(table) is None
    assert table["world_size"] == 2 and set(table["rules"]) == {"allreduce", "allgather"}
    for op, rows in table["measured"].items():
        assert [r["bytes"] for r in rows][0] == 8
        assert set(rows[0]["seconds"]) == {*ALGORITHMS[op], "mpi"}
    out = job.stdout
    assert "communicator_size == 2" in out and f"wrote {path}" in out
    assert "allreduce: auto with the table, 2 rank(s)" in out and "auto / mpi" in out
    assert not (tmp_path / "cache").exists()


def test_paired_ratio_is_the_median_of_per_trial_ratios():
    from mpipar.bench.tune import paired_ratio
    # a load that doubles every time in trial 2 cancels in the pair: 1.1 each trial
    row = {"trials": {"auto": [1.1, 2.2, 1.1], "ring": [1.0, 2.0, 1.0]}}
    assert abs(paired_ratio(row, "auto", "ring") - 1.1) < 1e-12
