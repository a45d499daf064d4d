"""python -m mpipar.train as a user runs it: loss history independent of the layout,
checkpoints the demo can read, clear errors."""
import json

from jobs import assert_one_clear_error
import numpy as np
import pytest

from mpipar import launch, train

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


def test_sequence_parallel_trains_like_tensor_parallel_on_half_the_activations():
    tp, sp = (launch.run("mpipar.train", n=2, args=TINY + ["--tp", "2", *extra]).data
              for extra in ([], ["--sp"]))
    # the same model and batches; the reductions add in another order (ring reduce-scatter
    # blocks of positions instead of the all-reduce's), float32 rounding amplified by 12 steps
    assert np.allclose(sp["loss"], tp["loss"], rtol=1e-4)
    whole, blocks = (run["activation_bytes_per_rank"] for run in (tp, sp))
    assert whole["replicated"][0] == whole["replicated"][1] == sum(blocks["replicated"])
    assert blocks["sharded"] == whole["sharded"]
    assert "reduce_scatter" in blocks["bytes_sent"][0] and "reduce_scatter" not in whole["bytes_sent"][0]


def test_sp_without_tp_is_one_clear_error():
    assert_one_clear_error("mpipar.train", 1, TINY + ["--sp"], "--sp needs --tp")


def test_impossible_layout_is_one_clear_error():
    assert_one_clear_error("mpipar.train", 3, TINY + ["--tp", "3"], "at most 2")


PIPE = TINY + ["--n-layer", "3", "--micro-batches", "4", "--deterministic"]


def test_pipeline_losses_are_bitwise_one_process_and_the_json_reports_the_bubble():
    one = launch.run("mpipar.train", n=1, args=PIPE + ["--pp", "1"]).data
    for n, schedule in ((2, "zb-h1"), (3, "gpipe")):
        data = launch.run("mpipar.train", n=n, args=PIPE + ["--pp", str(n), "--schedule",
                                                             schedule]).data
        assert data["loss"] == one["loss"]  # deterministic: the same bits (3 layers on n stages)
        pipe = data["pipeline"]
        assert (pipe["schedule"], pipe["pp"], pipe["micro_batches"]) == (schedule, n, 4)
        assert pipe["bubble_predicted"] == {"zb-h1": 1 / 13, "gpipe": 2 / 6}[schedule]
        assert len(pipe["bubble_measured"]) == n and all(0 <= b < 1 for b in pipe["bubble_measured"])
        # every activation forward and gradient backward: 2 (n - 1) x m messages of b x T x d
        assert sum(r["p2p_messages"] for r in pipe["ranks"]) == 2 * (n - 1) * 4
        assert pipe["p2p_bytes"] > 0 and all(b > 0 for b in pipe["peak_activation_bytes"])
    assert one["loss"][-1] < one["loss"][0]


def test_show_schedule_prints_the_chart_and_its_bubble():
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "mpipar.train", "--pp", "4", "--schedule", "1f1b",
                           "--show-schedule"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "rank 3 .  .  .  F0 B0 -- F1" in proc.stdout
    assert "bubble 0.273 of the step" in proc.stdout


def test_bad_pipeline_options_are_one_clear_error():
    assert_one_clear_error("mpipar.train", 2, TINY + ["--pp", "2", "--n-layer", "1"],
                           "2 pipeline stages need at least 2 layers")
    assert_one_clear_error("mpipar.train", 2, TINY + ["--pp", "2", "--micro-batches", "40"],
                           "--micro-batches 40 exceeds the 32 examples")
    assert_one_clear_error("mpipar.train", 2, TINY + ["--pp", "2", "--schedule", "interleaved",
                                                      "--micro-batches", "3"],
                           "must be a multiple of --pp")
    assert_one_clear_error("mpipar.train", 3, TINY + ["--pp", "2"], "Mesh:")



def test_zero_trains_the_bits_of_deterministic_data_parallelism_and_reports_memory():
    args = TINY + ["--deterministic", "--steps", "4"]
    dp = launch.run("mpipar.train", n=3, args=args).data
    zero = launch.run("mpipar.train", n=3, args=args + ["--zero", "3"]).data
    assert zero["loss"] == dp["loss"] and zero["accuracy"] == dp["accuracy"]
    assert (zero["memory"]["zero"], dp["memory"]["zero"]) == (3, 0)
    mine, full = zero["memory"]["ranks"][0], dp["memory"]["ranks"][0]
    assert len(zero["memory"]["ranks"]) == 3 and mine["held"]["optimizer"] < full["held"]["optimizer"]


def test_bad_zero_stage_is_one_clear_error():
    assert_one_clear_error("mpipar.train", 2, TINY + ["--zero", "4"], "--zero must be one of 0, 1, 2, 3")
    parser = train.build_parser()
    for extra, message in ((["--tp", "2"], "does not combine with --tp 2"),
                           (["--pp", "2", "--n-layer", "2"], "or a pipeline")):
        with pytest.raises(ValueError, match=message):
            train.settings_from(parser.parse_args(TINY + ["--zero", "2"] + extra), 4)
