"""python -m mpipar.generate as a user runs it: SmolLM2 over 2 ranks against Hugging Face's run
of the same file (tests/data/smollm2_reference.json), its JSON and logits, and clear errors."""
import importlib.util
import json
import os
import subprocess
import sys

from jobs import assert_one_clear_error
import numpy as np
import pytest

from mpipar import launch

REFERENCE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "smollm2_reference.json")


def run_generate(args, tmp_path, n=2):
    """Run the command with exactly ``args`` plus --json; (its JSON, stdout)."""
    out = tmp_path / "generate.json"
    cmd = launch.mpiexec() + ["-n", str(n), sys.executable, "-m", "mpi4py", "-m", "mpipar.generate",
                              *args, "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, **launch.ONE_THREAD))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout


def test_chat_answer_equals_hugging_face_and_the_serial_run(tmp_path):
    with open(REFERENCE, encoding="utf-8") as f:
        chat = next(p for p in json.load(f)["model"]["prompts"] if p["name"] == "chat")
    question = "What is the capital of France?"
    data, stdout = run_generate(["--chat", question, "--max-new-tokens", "12", "--compare-serial",
                                 "--save-logits", str(tmp_path / "logits.npy")], tmp_path)
    assert data["prompt_ids"] == chat["ids"]  # the same chat template and tokenizer
    end = chat["greedy"]["first_eos_index"]    # the answer stops at <|im_end|>, which it keeps
    assert data["generated_ids"] == chat["greedy"]["ids"][:end + 1]
    assert data["completion"] == "The capital of France is Paris." and data["completion"] in stdout
    assert data["world_size"] == 2 and data["ranks_agree"] and data["serial"]["tokens_identical"]
    assert data["peak_rss_bytes"] == max(data["peak_rss_per_rank"]) > 0
    assert data["tokens_per_second"] > 0 and 0 < data["prefill_seconds"] < data["seconds"]
    assert data["communication_seconds"] > 0 and data["messages_per_rank"] > 0
    assert data["compute_seconds"] + data["communication_seconds"] == pytest.approx(data["seconds"])
    logits = np.load(tmp_path / "logits.npy")
    assert logits.shape == (len(chat["ids"]), 49152) and logits.dtype == np.float32
    top = np.take_along_axis(logits, np.array(chat["top_ids"]), axis=1)
    assert np.abs(top - np.array(chat["top_logits"])).max() < 1e-3  # float32 sums in another order


@pytest.mark.parametrize("args, message", [
    (["--prompt", ""], "--prompt is empty"),
    (["--chat", "  "], "--chat is empty"),
    (["--save-logits", "logits.txt"], "must end in .npy"),
    (["--max-new-tokens", "-1"], "--max-new-tokens must be >= 0"),
    (["--gguf", "/nonexistent/model.gguf"], "/nonexistent/model.gguf: no such file"),
    (["--max-new-tokens", "9000"], "do not fit the context of 8192"),
])
def test_bad_input_is_one_clear_error(args, message):
    assert_one_clear_error("mpipar.generate", 2, args, message)


def test_a_file_that_is_not_gguf_is_one_clear_error(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a model at all" * 100)
    assert_one_clear_error("mpipar.generate", 2, ["--gguf", str(bad)], str(bad))


def test_pipelined_generation_equals_hugging_face_and_the_serial_run(tmp_path):
    """--pp 2 on 2 ranks: 15 layers per stage, two copies of the prompt as two micro-batches."""
    with open(REFERENCE, encoding="utf-8") as f:
        plain = next(p for p in json.load(f)["model"]["prompts"] if p["name"] == "plain")
    data, stdout = run_generate(["--prompt", plain["text"], "--max-new-tokens", "8", "--pp", "2",
                                 "--copies", "2", "--compare-serial"], tmp_path)
    assert data["prompt_ids"] == plain["ids"]
    assert data["generated_ids"] == plain["greedy"]["ids"][:8]
    assert data["completion"] in stdout and stdout.count(data["completion"]) == 1  # rank 0 prints
    assert data["serial"]["tokens_identical"] and data["serial"]["bitwise_equal"]  # tp = 1: exact
    assert data["ranks_agree"] and data["sequences"] == 2 and data["tokens_generated"] == 16
    pipe = data["pipeline"]
    assert pipe["stages"] == 2 and pipe["tp"] == 1 and pipe["layers_per_stage"] == [15, 15]
    assert pipe["micro_batches"] == 2 and pipe["steps"] == 8 and pipe["decode_tokens_per_second"] > 0
    assert [r["stage"] for r in pipe["per_rank"]] == [0, 1]
    assert all(0 <= r[phase]["bubble"] <= 1 for r in pipe["per_rank"] for phase in ("prefill", "decode"))
    d, T = data["config"]["n_embd"], len(plain["ids"])
    assert pipe["per_rank"][0]["p2p_bytes_sent"] == 2 * (T + 7) * d * 4  # the hidden states, float32
    first, last = data["param_bytes_per_rank"]
    assert first < 0.7 * (first + last) and last < 0.7 * (first + last)  # each stage its own layers


@pytest.mark.parametrize("args, message", [
    (["--pp", "3"], "--pp 3 must be a whole number >= 1 that divides the 2 ranks"),
    (["--pp", "0"], "--pp 0 must be a whole number >= 1"),
    (["--copies", "0"], "--copies must be >= 1"),
    (["--micro-batches", "2", "--copies", "2"], "--micro-batches needs --pp > 1"),
    (["--pp", "2", "--micro-batches", "3", "--copies", "2"], "3 micro-batches need at least 3 sequences"),
    (["--pp", "2", "--sp"], "--sp does not run with --pp"),
])
def test_bad_pipeline_options_are_one_clear_error(args, message):
    assert_one_clear_error("mpipar.generate", 2, args, message)


def test_more_stages_than_layers_is_one_clear_error(tmp_path):
    """A one-layer Llama (the GGUF file of tests/models/tiny_gguf.py) cannot make 2 stages."""
    where = os.path.join(os.path.dirname(os.path.dirname(__file__)), "models", "tiny_gguf.py")
    spec = importlib.util.spec_from_file_location("tiny_gguf", where)
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    path = tiny.write_tiny_gguf(tmp_path / "one_layer.gguf")
    assert_one_clear_error("mpipar.generate", 2, ["--gguf", str(path), "--pp", "2"],
                           "--pp 2: 2 pipeline stages need at least 2 layers; the model has 1")
