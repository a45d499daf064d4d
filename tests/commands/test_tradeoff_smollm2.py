"""python -m mpipar.bench tradeoff --model smollm2: the pretrained SmolLM2-135M-Instruct on the
English text shipped with mpipar, every wire setting, with perplexity.

The job launches mpirun itself (two ranks, 32 tokens, one trial: about ten seconds on two
cores), so these are ordinary pytest tests, not ``mpi``-marked ones. Nothing here asserts on
time. The perplexity function and the option checks are tested on one process.
"""
import configparser
import math
from pathlib import Path

from jobs import assert_one_clear_error
import numpy as np
import pytest

from mpipar import launch
from mpipar.bench.__main__ import build_parser
from mpipar.bench.tradeoff import ROW_KEYS, check, settings
from mpipar.bench.tradeoff_models import TEXT, perplexity

SEQ = 32
ARGS = ["tradeoff", "--model", "smollm2", "--seq", str(SEQ), "--trials", "1", "--order-size", "1000"]


@pytest.fixture(scope="module")
def job():
    return launch.run("mpipar.bench", n=2, args=ARGS, timeout=300)


def by_setting(job):
    return {(r["comm_dtype"], r["rounding"], r["algorithm"], r["deterministic"]): r
            for r in job.data["rows"]}


def test_one_row_per_setting_with_perplexity(job):
    data = job.data
    assert [tuple(k) for k in by_setting(job)] == settings()
    assert data["evaluation"] == {"batch": 1, "seq": SEQ, "positions": SEQ, "text": TEXT.name,
                                  "perplexity_positions": SEQ - 1}
    assert data["model"]["family"] == "smollm2" and data["model"]["task"] is None
    assert data["model"]["config"]["n_head"] == 9 and data["model"]["config"]["n_kv_head"] == 3
    serial = data["model"]["perplexity_serial"]
    assert math.isfinite(serial) and serial > 1
    for r in data["rows"]:
        assert set(ROW_KEYS) <= set(r), set(ROW_KEYS) - set(r)
        assert r["ranks_agree"] is True and r["task_accuracy"] is None
        assert math.isfinite(r["perplexity"]) and r["perplexity"] > 1
        assert r["perplexity_difference"] == r["perplexity"] - serial
        assert 0 <= r["top1_agreement"] <= 1
    out = job.stdout
    assert "SmolLM2-135M-Instruct" in out and "9 query / 3 key-value heads" in out
    assert f"over {SEQ - 1} positions of {TEXT.name}" in out and "Δppl" in out


def test_float32_perplexity_is_the_serial_one_within_its_bound(job):
    """Each position's loss is logsumexp(z) - z_target. logsumexp moves by at most
    max_j |dz_j| (its gradient, the softmax, sums to 1) and z_target by at most max |dz|,
    so |ln ppl - ln ppl_serial| = |mean loss - mean serial loss| <= 2 max |dz| -- plus the
    float64 rounding of the two sums, far below 1e-9."""
    serial = job.data["model"]["perplexity_serial"]
    for r in job.data["rows"]:
        if r["comm_dtype"] == "float32":
            bound = 2 * r["max_abs_error"] + 1e-9
            assert abs(math.log(r["perplexity"]) - math.log(serial)) <= bound, r
            assert r["max_abs_error"] < 1e-3 and r["top1_agreement"] == 1.0, r


def test_deterministic_mode_equals_the_emulated_split(job):
    rows = job.data["rows"]
    assert [r["bitwise_equal_emulated"] for r in rows if r["deterministic"]] == [True]
    assert all(r["bitwise_equal_emulated"] is None for r in rows if not r["deterministic"])
    assert "equals the emulated 2-way split bit for bit: yes" in job.stdout


def test_16_bit_wires_are_less_accurate(job):
    """bfloat16 keeps 8 significand bits, float16 11, float32 24: every 16-bit row's logits
    are further from the serial ones than any float32 row's, bfloat16's the furthest."""
    rows = job.data["rows"]
    err = {wire: [r["max_normalized_error"] for r in rows if r["comm_dtype"] == wire]
           for wire in ("float32", "float16", "bfloat16")}
    assert max(err["float32"]) < min(err["float16"]) and max(err["float32"]) < min(err["bfloat16"])
    assert max(err["float16"]) < min(err["bfloat16"])
    for r in rows:  # in the wire's own units the error is of one size for every wire
        assert r["max_normalized_error_wire"] < 200, r


def test_bytes_follow_the_wire(job):
    """A forward sends the embedding's all-reduce, two all-reduces per block and the logit
    all-gather, and nothing else (no argmax: that is generation's). Per hop, every one of those
    messages carries 16-bit numbers, so the bytes are exactly half of float32's for the same
    algorithm. Once sends the reductions' reduce-scatter in float32 and their all-gather in 16
    bits (3/4 of the bytes) and the logits in 16 bits (1/2)."""
    rows = by_setting(job)
    for alg in ("ring", "recursive_doubling"):
        f32 = rows["float32", "none", alg, False]
        for wire in ("float16", "bfloat16"):
            per_hop = rows[wire, "per_hop", alg, False]
            assert 2 * per_hop["bytes"] == f32["bytes"], (per_hop["traffic"], f32["traffic"])
            assert set(per_hop["traffic"]) == {f"allreduce {alg} {wire}/per_hop", f"allgather {alg}"}
    f32 = rows["float32", "none", "ring", False]["traffic"]
    for wire in ("float16", "bfloat16"):
        once = rows[wire, "once", "ring", False]["traffic"]
        assert 4 * once[f"allreduce ring {wire}/once"] == 3 * f32["allreduce ring"]
        assert 2 * once["allgather ring"] == f32["allgather ring"]


def test_perplexity_by_hand():
    """Vocabulary of 2, tokens 0, 1, 1. Position 0's logits (0, 0) give the next token 1 a
    probability of 1/2; position 1's (ln 3, 0) give it 1 / (3 + 1). The last position
    predicts nothing. Mean cross-entropy (ln 2 + ln 4) / 2 = 1.5 ln 2: perplexity 2^1.5."""
    logits = np.array([[[0.0, 0.0], [math.log(3), 0.0], [50.0, -50.0]]], np.float32)
    assert perplexity(logits, np.array([[0, 1, 1]])) == pytest.approx(2 ** 1.5, rel=1e-7)
    # two sequences: the mean runs over all B * (T - 1) positions; a sure prediction costs 0
    sure = np.array([[[0.0, 0.0], [math.log(3), 0.0], [0.0, 0.0]],
                     [[0.0, 100.0], [0.0, 100.0], [0.0, 0.0]]])
    expected = math.exp((math.log(2) + math.log(4) + 0 + 0) / 4)
    assert perplexity(sure, np.array([[0, 1, 1], [0, 1, 1]])) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity(logits[:, :1], np.array([[0]]))


class Ranks:
    """A communicator that only tells its size (check sends nothing without a --json)."""

    def __init__(self, size):
        self.size = size

    def Get_size(self):
        return self.size

    def Get_rank(self):
        return 0


@pytest.mark.parametrize("argv, ranks, message", [
    (["--seq", "5000"], 1, f"--seq 5000: {TEXT.name} is only"),
    (["--seq", "9000"], 1, "--seq 9000 exceeds the model's context of 8192 tokens"),
    (["--seq", "1"], 1, "--seq must be at least 2"),
    ([], 10, "the model has 9 query heads: run on at most 9 ranks"),
    (["--batch", "2"], 1, "--batch is for --model gpt2"),
    (["--preset", "tiny"], 1, "--preset is for --model gpt2"),
])
def test_bad_options_are_one_message(argv, ranks, message):
    args = build_parser().parse_args(["tradeoff", "--model", "smollm2", *argv])
    problem = check(args, Ranks(ranks))
    assert problem is not None and problem.startswith(message), problem


def test_gguf_needs_the_llama_model():
    args = build_parser().parse_args(["tradeoff", "--gguf", "x.gguf"])
    assert check(args, Ranks(1)) == "--gguf is for --model smollm2"


def test_a_missing_gguf_file_is_one_clear_error(tmp_path):
    missing = tmp_path / "none.gguf"
    assert_one_clear_error("mpipar.bench", 2, ["tradeoff", "--model", "smollm2", "--gguf",
                                               str(missing)], f"{missing}: no such file")


def test_the_text_ships_with_the_package():
    """The text is package data (setup.cfg), long enough for the default 256 tokens."""
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[2] / "setup.cfg")
    shipped = [p.strip() for p in cfg["options.package_data"]["mpipar"].split(",")]
    assert "data/text/*.txt" in shipped and TEXT.suffix == ".txt"
    assert len(TEXT.read_text(encoding="utf-8").split()) > 1500
