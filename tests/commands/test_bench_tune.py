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
    assert "auto / itself" in out and "so auto / best inside that spread is noise" in out
    assert not (tmp_path / "cache").exists()


def test_paired_ratio_is_the_median_of_per_trial_ratios():
    from mpipar.bench.tune import paired_ratio
    # a load that doubles every time in trial 2 cancels in the pair: 1.1 each trial
    row = {"trials": {"auto": [1.1, 2.2, 1.1], "ring": [1.0, 2.0, 1.0]}}
    assert abs(paired_ratio(row, "auto", "ring") - 1.1) < 1e-12


def test_the_ratio_table_measures_its_own_noise_floor():
    from mpipar.bench.tune import ratio_table
    trials = {"naive": [2.0, 2.0, 2.0], "tree": [1.0, 1.0, 1.0], "recursive_doubling": [3.0] * 3,
              "recursive_multiplying": [3.0] * 3,
              "ring": [4.0] * 3, "rabenseifner": [4.0] * 3, "mpi": [0.5] * 3, "auto": [1.1, 1.2, 1.0]}
    row = {"bytes": 8, "auto_algorithm": "tree", "trials": trials,
           "seconds": {a: sorted(t)[1] for a, t in trials.items()}}
    text = ratio_table("allreduce", [row], 2)
    assert row["auto_over_itself"] == row["auto_over_best"] == 1.1  # auto runs the best: tree
    assert row["auto_over_mpi"] == 2.2 and "auto / itself 1.10-1.10" in text
    row.pop("auto_over_itself")
    row["auto_algorithm"] = None  # an op the table has no rule for: no floor to show
    assert "auto / itself" not in ratio_table("allreduce", [row], 2).split("\n")[-1]
