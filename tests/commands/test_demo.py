"""python -m mpipar.demo as a user runs it: JSON contents, deterministic mode, clear errors."""
from argparse import Namespace
import json
import subprocess
import sys

from jobs import assert_one_clear_error
import pytest

from mpipar import demo_models, launch

KEYS = {"world_size", "config", "tokens_parallel", "tokens_serial", "tokens_identical",
        "bitwise_equal", "max_ulp", "max_normalized_error", "ranks_agree", "comm", "seconds"}


def test_demo_shipped_addition_model_at_three_ranks():
    data = launch.run("mpipar.demo", n=3, args=["--model", "addition"]).data
    assert KEYS <= set(data) and data["model"] == "addition"
    task = data["task"]
    assert task["name"] == "addition" and task["n"] >= 200
    assert task["accuracy_parallel"] >= 0.99 and task["accuracy_serial"] >= 0.99
    assert data["tokens_identical"] and data["ranks_agree"]
    for text, parallel, serial, correct in task["examples"]:
        a, b = map(int, text.split("+"))
        assert correct == a + b and parallel == serial


def test_demo_default_mode_at_two_ranks():
    data = launch.run("mpipar.demo", n=2, args=["--preset", "tiny", "--tokens", "4"]).data
    assert KEYS <= set(data)
    assert data["world_size"] == 2 and data["config"]["n_head"] == 4
    assert data["tokens_identical"] and data["ranks_agree"]
    assert len(data["tokens_parallel"]) == 8 + 4
    # row-parallel sums in another order: close, not necessarily equal (see the lesson)
    assert data["max_normalized_error"] < 50
    assert set(data["seconds"]) >= {"total", "compute", "comm"}
    assert data["seconds"]["comm"] > 0
    assert data["peak_rss_bytes"] == max(data["peak_rss_per_rank"]) > 0
    ops = {r["op"] for r in data["comm"]["records"]}
    assert {"allreduce", "allgather"} <= ops
    # the distributed argmax moves fewer bytes than gathering all logits
    assert data["argmax_bytes"]["distributed"] < data["argmax_bytes"]["gather"]


def test_demo_deterministic_is_bitwise_at_three_ranks(tmp_path):
    data = launch.run("mpipar.demo", n=3, args=["--preset", "tiny", "--tokens", "3",
                                                 "--deterministic", "--algorithm", "ring"]).data
    assert data["bitwise_equal"] and data["max_ulp"] == 0 and data["tokens_identical"]
    assert all(layer["bitwise_equal"] for layer in data["layers"])
    cost = data["deterministic_cost"]
    assert cost["deterministic"]["bytes_sent_all_ranks"] > cost["default"]["bytes_sent_all_ranks"]


def test_demo_without_mpirun(tmp_path):
    out = tmp_path / "demo.json"
    proc = subprocess.run([sys.executable, "-m", "mpipar.demo", "--preset", "tiny", "--tokens", "2",
                           "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["world_size"] == 1 and data["bitwise_equal"]


def test_more_ranks_than_heads_is_one_clear_error():
    assert_one_clear_error("mpipar.demo", 5, ["--preset", "tiny"],
                           "cannot split 4 attention heads over 5 ranks")


def test_missing_weights_file_is_one_clear_error(tmp_path):
    assert_one_clear_error("mpipar.demo", 2, ["--weights", str(tmp_path / "nope.safetensors")],
                           "no such file")


def test_weights_with_hugging_face_config(tmp_path):
    from safetensors.numpy import save_file

    from mpipar.models import GPTConfig, init_params
    cfg = GPTConfig(vocab_size=50, n_ctx=32, n_embd=24, n_head=3, n_layer=1)
    params = {"transformer." + k: v for k, v in init_params(cfg, seed=3).items()}
    save_file(params, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(dict(
        vocab_size=50, n_positions=32, n_embd=24, n_head=3, n_layer=1, layer_norm_epsilon=1e-5)))
    data = launch.run("mpipar.demo", n=3, args=["--weights", str(tmp_path / "model.safetensors"),
                                                 "--tokens", "2"]).data
    assert data["config"]["vocab_size"] == 50 and data["tokens_identical"]


def test_demo_default_is_smollm2_split_over_four_ranks_bitwise_in_deterministic_mode():
    data = launch.run("mpipar.demo", n=4, args=["--tokens", "5", "--deterministic"]).data
    assert KEYS <= set(data) and data["model"] == "smollm2"
    assert data["config"]["n_head"] == 9 and data["config"]["n_kv_head"] == 3
    # 9 query heads over 4 ranks: 3, 2, 2, 2; each rank keeps the key/value heads they read
    assert [s["heads"] for s in data["sharding"]] == [[0, 3], [3, 5], [5, 7], [7, 9]]
    assert [s["kv_heads"] for s in data["sharding"]] == [[0, 1], [1, 2], [1, 3], [2, 3]]
    assert sum(s["param_bytes"] for s in data["sharding"]) > data["serial_param_bytes"]
    assert max(s["param_bytes"] for s in data["sharding"]) < data["serial_param_bytes"] / 3
    assert data["bitwise_equal"] and data["tokens_identical"] and data["ranks_agree"]
    assert len(data["layers"]) == 30 and all(layer["bitwise_equal"] for layer in data["layers"])
    chat = data["chat"]
    assert chat["message"] == demo_models.DEFAULT_CHAT
    assert chat["answer_parallel"] == chat["answer_serial"] and chat["answer_parallel"].strip()
    assert len(data["tokens_parallel"]) <= data["prompt_length"] + 5


def _options(**given):
    base = dict(model=None, preset=None, weights=None, gguf=None)
    return Namespace(**{**base, **given})


def test_the_default_model_is_smollm2_when_installed_else_the_adder(monkeypatch):
    assert demo_models.choose(_options()) == "smollm2"
    assert demo_models.choose(_options(preset="tiny")) == "gpt2"
    assert demo_models.choose(_options(model="addition")) == "addition"
    monkeypatch.setattr(demo_models, "smollm2_installed", lambda: False)
    assert demo_models.choose(_options()) == "addition"
    assert demo_models.choose(_options(gguf="x.gguf")) == "smollm2"
    with pytest.raises(ValueError, match="--preset"):
        demo_models.choose(_options(model="smollm2", preset="tiny"))
    with pytest.raises(ValueError, match="--gguf"):
        demo_models.choose(_options(model="addition", gguf="x.gguf"))


@pytest.mark.parametrize("args, message", [
    (["--model", "addition", "--chat", "hi"], "--chat is a message for SmolLM2"),
    (["--model", "smollm2", "--preset", "tiny"], "exclude each other"),
    (["--chat", "  "], "--chat is empty"),
])
def test_conflicting_options_are_one_clear_error(args, message):
    assert_one_clear_error("mpipar.demo", 2, args, message)


def test_missing_gguf_file_is_one_clear_error(tmp_path):
    assert_one_clear_error("mpipar.demo", 2, ["--gguf", str(tmp_path / "nope.gguf")], "no such file")


def test_demo_pipeline_of_smollm2_over_two_stages_is_bitwise_equal_to_serial():
    """--pp 2 on 2 ranks: 15 layers each, tp = 1 per stage, so no sum is reordered."""
    data = launch.run("mpipar.demo", n=2, args=["--pp", "2", "--tokens", "6"]).data
    assert data["model"] == "smollm2" and (data["pp"], data["tp"]) == (2, 1)
    assert [s["layers"] for s in data["stages"]] == [[0, 15], [15, 30]]
    assert [(s["embedding"], s["head"]) for s in data["stages"]] == [(True, False), (False, True)]
    assert data["bitwise_equal"] and data["max_ulp"] == 0 and data["tokens_identical"]
    assert data["ranks_agree"] and data["sequences"] == 2  # one copy of the prompt per stage
    chat = data["chat"]
    assert chat["answer_parallel"] == chat["answer_serial"] and chat["answer_parallel"].strip()
    pipe = data["pipeline"]
    assert pipe["stages"] == 2 and pipe["micro_batches"] == 2 and pipe["p2p_bytes_sent"] > 0
    work = pipe["weights_per_token_per_stage"]
    assert work[1] > work[0]  # the last stage also runs the LM head
    assert pipe["predicted_bubble"]["decode_per_stage"][1] == 0.0
    assert {r["op"] for r in data["comm"]["records"]} == {"send", "recv"}


def test_demo_pipeline_times_tensor_parallel_is_bitwise_in_deterministic_mode():
    """dp 1 x pp 2 x tp 2 on 4 ranks: the serial run emulates the tp split of every stage."""
    data = launch.run("mpipar.demo", n=4, args=["--preset", "tiny", "--pp", "2", "--copies", "3",
                                                 "--micro-batches", "2", "--tokens", "3",
                                                 "--deterministic"]).data
    assert (data["pp"], data["tp"], data["sequences"]) == (2, 2, 3)
    assert [(s["stage"], s["tp_rank"]) for s in data["stages"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert data["bitwise_equal"] and data["tokens_identical"] and data["ranks_agree"]
    assert data["pipeline"]["micro_batch_sizes"] == [2, 1]
    assert len(data["tokens_parallel"]) == 8 + 3


@pytest.mark.parametrize("n, args, message", [
    (2, ["--preset", "tiny", "--pp", "3"], "--pp 3 must be a whole number >= 1 that divides the 2 ranks"),
    (3, ["--preset", "tiny", "--pp", "3"], "--pp 3: 3 pipeline stages need at least 3 layers"),
    (2, ["--preset", "tiny", "--copies", "2"], "--copies needs --pp > 1"),
    (2, ["--model", "addition", "--pp", "2", "--copies", "2"], "--copies: the adder asks"),
    (2, ["--preset", "tiny", "--pp", "2", "--copies", "2", "--micro-batches", "3"],
     "--micro-batches 3: 3 micro-batches need at least 3 sequences"),
])
def test_bad_pipeline_options_are_one_clear_error(n, args, message):
    assert_one_clear_error("mpipar.demo", n, args, message)
