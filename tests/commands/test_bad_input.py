"""Bad input as an adversarial user types it: every entry point answers with one clear error
naming the option or file, from rank 0, a non-zero exit, no traceback, within seconds -- and
never runs (or finishes) on garbage: NaN weights, a diverging learning rate, an impossible size.

Each case fails on a main without the checks: a traceback per rank, an abort, exit 0 on NaN
weights, or a run that allocates gigabytes.
"""
import json
import os

from jobs import assert_one_clear_error
import numpy as np
import pytest

from mpipar import launch
from mpipar.models import GPTConfig, init_params

CFG = GPTConfig(vocab_size=50, n_ctx=32, n_embd=24, n_head=3, n_layer=1)
HF = dict(model_type="gpt2", vocab_size=50, n_positions=32, n_embd=24, n_head=3, n_layer=1)
TRAIN = ["--preset", "tiny", "--steps", "1", "--quiet"]


def checkpoint(folder, params=None, config=HF, raw=None):
    """A GPT-2 checkpoint folder: safetensors (or raw bytes) and a config.json (or raw text)."""
    from safetensors.numpy import save_file
    os.makedirs(folder, exist_ok=True)
    weights = os.path.join(folder, "model.safetensors")
    if raw is not None:
        with open(weights, "wb") as f:
            f.write(raw)
    else:
        save_file(init_params(CFG, 3) if params is None else params, weights)
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(config if isinstance(config, str) else json.dumps(config))
    return weights


def test_nan_weights_are_an_error_naming_the_tensor(tmp_path):
    params = init_params(CFG, 3)
    params["h.0.mlp.c_fc.weight"][5, 7] = np.nan
    weights = checkpoint(tmp_path / "nan", params)
    assert_one_clear_error("mpipar.demo", 2, ["--weights", weights],
                           "tensor 'h.0.mlp.c_fc.weight' holds 1 NaN or infinite value(s)")
    # read whole, as one process does
    assert_one_clear_error("mpipar.demo", 1, ["--weights", weights], "'h.0.mlp.c_fc.weight' holds")


def test_bfloat16_weights_are_read_as_float16_ones_are(tmp_path):
    import ml_dtypes
    params = {k: v.astype(ml_dtypes.bfloat16) for k, v in init_params(CFG, 3).items()}
    weights = checkpoint(tmp_path / "bf16", params)
    data = launch.run("mpipar.demo", n=2, args=["--weights", weights, "--tokens", "2"]).data
    assert data["tokens_identical"] and data["ranks_agree"]


@pytest.mark.parametrize("name, raw, config, message", [
    ("garbage", b"not safetensors" * 9, HF, "not a readable safetensors file"),
    ("empty", b"", HF, "not a readable safetensors file"),
    ("notjson", None, "{not json", "config.json: not JSON"),
    ("string", None, dict(HF, n_head="three"), "n_head must be a whole number >= 1, not 'three'"),
    ("bool", None, dict(HF, n_head=True), "config.json: n_head must be a whole number >= 1, not True"),
    ("nodigits", None, dict(HF, mpipar={"task": "addition", "seed": 0, "heldout": 9}),
     "its mpipar record of the addition task is incomplete or malformed (KeyError: 'digits')"),
])
def test_unreadable_checkpoints_are_one_clear_error(tmp_path, name, raw, config, message):
    weights = checkpoint(tmp_path / name, raw=raw, config=config)
    assert_one_clear_error("mpipar.demo", 2, ["--weights", weights], message)


@pytest.mark.parametrize("args, message", [
    (["--eval-every", "0"], "--eval-every must be >= 1"),
    (["--eval-every", "-1"], "--eval-every must be >= 1"),
    (["--bucket-kb", "inf"], "--bucket-kb must be a number in (0, 1048576]"),
    (["--bucket-kb", "nan"], "--bucket-kb must be a number in (0, 1048576]"),
    (["--tp", "0"], "--tp must be >= 1, not 0"),
    (["--dp", "0"], "--dp must be >= 1, not 0"),
    (["--pp", "2", "--micro-batches", "0"], "--micro-batches must be >= 1, not 0"),
    (["--lr", "nan"], "--lr must be a number in (0, 1], not nan"),
    (["--lr", "1e30"], "--lr must be a number in (0, 1]"),
    (["--seed", "-1"], "--seed must be a whole number in [0, 2**32), not -1"),
    (["--global-batch", "100000000000"], "--global-batch 100000000000 (dp = 2) needs about"),
])
def test_bad_training_options_are_one_clear_error(args, message):
    assert_one_clear_error("mpipar.train", 2, TRAIN + args, message)


def test_training_that_diverges_stops_with_an_error(monkeypatch):
    """--lr is at most 1, which AdamW with clipping survives; a loss that still turns NaN (here
    made so on step 2) ends the run with an error instead of a model of NaNs and exit 0."""
    from mpipar import train
    from mpipar.parallel.data_parallel import DataParallel
    step = DataParallel.step

    def diverging(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        self.steps_taken = getattr(self, "steps_taken", 0) + 1
        return dict(out, loss=float("nan")) if self.steps_taken == 2 else out

    monkeypatch.setattr(DataParallel, "step", diverging)
    with pytest.raises(ValueError, match=r"step 2: the loss is nan .* training diverged \(--lr"):
        train.main(["--preset", "tiny", "--steps", "5", "--quiet"])


@pytest.mark.parametrize("module, args, message", [
    ("mpipar.demo", ["--preset", "tiny", "--rounding", "once"], "--rounding once rounds a 16-bit wire"),
    ("mpipar.demo", ["--preset", "tiny", "--seed", "-1"], "--seed must be a whole number"),
    ("mpipar.demo_collectives", ["--size", "1000GiB"], "--size 1000 GiB needs about"),
    ("mpipar.generate", ["--copies", "10000000", "--max-new-tokens", "1"], "--copies 10000000 of a"),
    ("mpipar.generate", ["--seed", "-3"], "--seed must be a whole number"),
    ("mpipar.bench", ["collectives", "--max-size", "1000GiB"], "--max-size 1000 GiB needs about"),
    ("mpipar.bench", ["tune", "--max-size", "1000GiB"], "--max-size 1000 GiB needs about"),
    ("mpipar.bench", ["ledger", "--size", "1000GiB"], "--size 1000 GiB needs about"),
    ("mpipar.bench", ["dp", "--batch", "100000000"], "--batch 100000000 x --seq 32 needs about"),
    ("mpipar.bench", ["pp", "--batch-per-micro", "10000000"], "--batch-per-micro 10000000 x --seq 32"),
    ("mpipar.bench", ["forward", "--preset", "tiny", "--batch", "100000000"], "--batch 100000000 x --seq"),
])
def test_bad_sizes_and_combinations_are_one_clear_error(module, args, message):
    assert_one_clear_error(module, 2, args, message)


def test_train_out_at_a_file_or_a_foreign_folder_is_refused_before_training(tmp_path):
    (tmp_path / "afile").write_text("x")
    assert_one_clear_error("mpipar.train", 2, TRAIN + ["--out", str(tmp_path / "afile")],
                           "is a file, not a folder")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert_one_clear_error("mpipar.train", 2, TRAIN + ["--out", str(tmp_path / "mine")],
                           "holds other files than a checkpoint (notes.txt)")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
