"""python -m mpipar.train as a user runs it: loss history independent of the layout,
checkpoints the demo can read, clear errors."""
import json

from jobs import assert_one_clear_error
import numpy as np

from mpipar import launch

TINY = ["--preset", "tiny", "--steps", "12", "--quiet"]


def test_loss_history_is_the_same_at_one_and_two_ranks(tmp_path):
    one = launch.run("mpipar.train", n=1, args=TINY).data
    two = launch.run("mpipar.train", n=2, args=TINY).data
    assert len(one["loss"]) == len(two["loss"]) == 12
    assert one["settings"]["dp"] == 1 and two["settings"]["dp"] == 2
    # the same global batches in the same order; only the order of adding the two
    # shards' gradients (and BLAS blocking) differs -> float32 rounding, amplified
    # a little by 12 AdamW steps
    assert np.allclose(one["loss"], two["loss"], rtol=1e-4)
    assert two["loss"][-1] < two["loss"][0]  # it learns
    for key in ("total", "step_median", "backward_median", "sync_wait_median"):
        assert two["seconds"][key] > 0


def test_two_by_two_mesh_and_the_overlap_timeline():
    data = launch.run("mpipar.train", n=4, args=TINY + ["--dp", "2", "--tp", "2"]).data
    assert (data["dp"], data["tp"], data["world_size"]) == (2, 2, 4)
    assert len(data["timeline"]) == 4  # one per rank
    for rank_timeline in data["timeline"]:
        assert rank_timeline and all(b["start"] <= b["end"] for b in rank_timeline)


def test_checkpoint_is_read_back_by_the_demo(tmp_path):
    out = tmp_path / "ckpt"
    launch.run("mpipar.train", n=2, args=TINY + ["--out", str(out)])
    meta = json.loads((out / "config.json").read_text())["mpipar"]
    assert meta["task"] == "addition" and meta["steps"] == 12
    demo = launch.run("mpipar.demo", n=2, args=["--weights", str(out / "model.safetensors")]).data
    assert demo["task"]["n"] == meta["heldout"]
    assert demo["task"]["accuracy_parallel"] == demo["task"]["accuracy_serial"] == meta["accuracy"]


def test_impossible_layout_is_one_clear_error():
    assert_one_clear_error("mpipar.train", 3, TINY + ["--tp", "3"], "at most 2")
