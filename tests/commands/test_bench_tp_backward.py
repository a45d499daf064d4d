"""python -m mpipar.bench tp-backward: its JSON at p = 2 on the tiny preset (both modes timed,
one reduction per column-parallel layer, the same bits on and off), and a bad setting refused
before any work."""
from mpi4py import MPI
import pytest

from mpipar import launch
from mpipar.bench.__main__ import build_parser
from mpipar.collectives.progress import thread_level_problem

FIGURES = {"seconds", "backward_seconds", "reduction_seconds", "wait_seconds"}


@pytest.mark.skipif(thread_level_problem() is not None, reason="no MPI_THREAD_MULTIPLE here")
def test_the_json_at_two_ranks():
    job = launch.run("mpipar.bench", n=2, args=["tp-backward", "--preset", "tiny", "--seq", "16",
                                                 "--trials", "2"], timeout=120)
    r = job.data
    assert r["benchmark"] == "tp-backward" and r["world_size"] == 2 and r["bits_equal"] is True
    assert r["column_layers"] == ["lm_head", "h.1.mlp.c_fc", "h.1.attn.c_attn", "h.0.mlp.c_fc",
                                  "h.0.attn.c_attn"]  # backward's order: the head, then the blocks
    assert set(r["modes"]) == {"off", "on"} and all(set(m) == FIGURES for m in r["modes"].values())
    assert all(len(v) == 2 for m in r["trials_all"].values() for v in m.values())
    off = r["modes"]["off"]
    assert 0 < off["reduction_seconds"] == off["wait_seconds"] < off["backward_seconds"] < off["seconds"]
    assert r["saved_seconds"] == pytest.approx(off["backward_seconds"] - r["modes"]["on"]["backward_seconds"])
    assert r["saved_per_layer_seconds"] == pytest.approx(r["saved_seconds"] / 5)
    assert r["hidden_seconds"] == pytest.approx(off["wait_seconds"] - r["modes"]["on"]["wait_seconds"])
    assert {k: v["layers"] for k, v in r["by_kind"].items()} == {"c_attn": 2, "c_fc": 2, "lm_head": 1}
    assert "the same bits on and off: yes" in job.stdout


@pytest.mark.parametrize("args, message", [
    (["--seq", "65"], "--seq 65 is longer than the context of 64"),
    (["--trials", "0"], "--trials, --batch and --seq must be at least 1, --warmup at least 0"),
])
def test_bad_settings_are_refused_before_any_work(args, message):
    args = build_parser().parse_args(["tp-backward", "--preset", "tiny"] + args)
    assert args.check(args, MPI.COMM_SELF) == message
