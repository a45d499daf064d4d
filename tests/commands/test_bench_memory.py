"""python -m mpipar.bench memory: every configuration's memory per rank beside its formula,
ZeRO's bytes per step equal to the prediction, one clear error for a bad --configs."""
from mpipar import launch


def test_memory_benchmark_rows_match_their_formulas():
    job = launch.run("mpipar.bench", n=3, args=["memory", "--preset", "tiny", "--batch", "6",
                                                 "--seq", "8", "--steps", "1"], timeout=180)
    rows = {row["config"]: row for row in job.data["configs"]}
    assert list(rows) == ["zero3", "tp-sp", "tp", "zero2", "zero1", "dp"]  # least memory first
    # sequence parallelism keeps 1/p of the replicated regions' activations: fewer in all
    assert rows["tp-sp"]["activation_bytes"] < rows["tp"]["activation_bytes"]
    total = {name: max(r["predicted"]["total"] for r in row["ranks"]) for name, row in rows.items()}
    assert total["dp"] > total["zero1"] > total["zero2"] > total["zero3"]
    for name in ("zero1", "zero2", "zero3"):
        for r in rows[name]["ranks"]:
            assert {k: v for k, v in r["sent"].items() if v} == \
                {k: v for k, v in r["sent_predicted"].items() if v}
            assert r["held"]["optimizer"] == r["predicted"]["optimizer"]
            assert r["held"]["params"] == r["predicted"]["params"]
    assert all(row["step_seconds"] > 0 for row in rows.values())
    kept = [r["scratch"] for row in rows.values() for r in row["ranks"]]
    assert all(isinstance(k, int) and k >= 0 for k in kept)
    assert "zero3" in job.stdout and "RSS" in job.stdout and "scratch" in job.stdout



def test_unknown_configuration_is_refused_before_any_work():
    from mpi4py import MPI

    from mpipar.bench.__main__ import build_parser
    args = build_parser().parse_args(["memory", "--configs", "dp,zero4"])
    assert args.check(args, MPI.COMM_SELF) == "--configs: unknown zero4; choose from " \
        "zero3, tp-sp, tp, zero2, zero1, dp"
