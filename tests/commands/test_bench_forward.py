"""bench forward's measurements: the BLAS floor, the profile, decoding, the PyTorch comparison's
refusal and weight names. Structure and arithmetic only -- never how fast anything is."""
import json
import math
from pathlib import Path
import runpy

from jobs import assert_one_clear_error
import numpy as np
import pytest

from mpipar import launch
from mpipar.bench import forward_torch
from mpipar.bench.forward import SHAPES
from mpipar.measure.op_profile import KINDS
from mpipar.models.random_init import random_params

SMALL = ["--seq", "8", "--trials", "2", "--warmup", "0"]
TOOLS = Path(__file__).resolve().parents[2] / "tools"


def products_per_token(config):
    """Matrix products of one position through the model: per block GPT-2's c_attn, q k^T,
    P v, c_proj, c_fc, c_proj (6) or Llama's q, k, v, q k^T, P v, o, gate, up, down (9); the head."""
    return (6 if "layer_norm_epsilon" in config else 9) * config["n_layer"] + 1


def gpt2_flops(c, B, T):
    """2 m n k over GPT-2's forward products on one shard holding everything."""
    d, V = c["n_embd"], c["vocab_size"]
    weights = d * 3 * d + d * d + d * 4 * d + 4 * d * d  # c_attn, c_proj, c_fc, mlp c_proj
    attention = 2 * T * T * d  # q k^T and P v over all heads: heads * T * T * d_h each
    return 2 * B * (c["n_layer"] * (T * weights + attention) + T * d * V)


def check_balance(b, profiles, work):
    """The balance across ranks is the profiles' products and agreement, and work / seconds."""
    products = [t["matmul"] for t in profiles]
    assert b["products_seconds_per_rank"] == products
    assert b["wait_seconds_per_rank"] == [t["agreement"] for t in profiles]
    assert b["products_rate_per_rank"] == [w / s for w, s in zip(work, products)]
    assert products[b["slowest_rank"]] == max(products)
    assert b["products_max_over_min"] == max(products) / min(products) >= 1


def check_profile(table, calls):
    """Every kind present and non-negative; the kinds add up to the profiled total."""
    assert set(KINDS) <= set(table) and all(table[k] >= 0 for k in KINDS), table
    assert sum(table[k] for k in KINDS) == pytest.approx(table["total"], rel=1e-9)
    for kind, n in calls.items():
        assert table["calls"].get(kind) == n, (kind, table["calls"])


@pytest.mark.parametrize("preset, n, logits", [("tiny", 1, "sharded"), ("tiny", 2, "gathered"),
                                               ("llama-tiny", 2, "sharded")])
def test_forward_floor_profile_and_decode(preset, n, logits):
    job = launch.run("mpipar.bench", n=n, timeout=180,
                     args=["forward", "--preset", preset, *SMALL, "--profile", "--decode", "3",
                           "--logits", logits])
    data, c = job.data, job.data["config"]
    gpt2 = "layer_norm_epsilon" in c
    assert data["family"] == ("GPT" if gpt2 else "Llama") and data["world_size"] == n
    assert data["blas_floor_seconds"] > 0 and len(data["blas_floor_seconds_all"]) == 2
    assert math.isfinite(data["ratio_to_floor"]) and data["ratio_to_floor"] > 0
    assert data["ratio_to_floor"] == pytest.approx(data["seconds"] / data["blas_floor_seconds"])
    assert data["floor_products_per_rank"] == products_per_token(c)
    if gpt2 and n == 1:
        assert data["floor_flops_per_rank"] == gpt2_flops(c, 1, 8)

    blocks = c["n_layer"]
    calls = {"matmul": products_per_token(c), "softmax": blocks, "norm": 2 * blocks + 1,
             "activation": blocks, "embedding": 1, **({} if gpt2 else {"rotary": 2 * blocks})}
    assert len(data["profile_per_rank"]) == n
    for table in data["profile_per_rank"]:
        check_profile(table, calls)
        assert (table["communication"] > 0) == (n > 1)
    check_balance(data["balance"], data["profile_per_rank"], data["floor_flops_all_ranks"])
    assert data["floor_flops_all_ranks"][0] == data["floor_flops_per_rank"]
    # the embedding's and the row-parallel allreduces; the logits' allgather only if gathered
    expected_ops = ({"allreduce", "allgather"} if logits == "gathered" else {"allreduce"}) if n > 1 else set()
    assert all(set(by_op) == expected_ops for by_op in data["comm_seconds_by_op_per_rank"])

    d = data["decode"]
    assert d["steps"] == 3 and d["prompt"] == [1, 8]
    assert d["gemv_floor_seconds_per_token"] > 0 and math.isfinite(d["ratio_to_floor"])
    assert d["gemv_products_per_token"] == products_per_token(c)
    assert d["gemv_bandwidth_bytes_per_s"] > 0 and d["decode_bandwidth_bytes_per_s"] > 0
    # every step reads this rank's weight matrices at least once
    assert d["gemv_bytes_per_token_per_rank"] >= 0.9 * data["param_bytes_per_rank"]
    for table in d["profile_per_rank"]:
        check_profile(table, calls)
    check_balance(d["balance"], d["profile_per_rank"], d["balance"]["work_per_rank"])
    assert d["balance"]["work_per_rank"][0] == d["gemv_bytes_per_token_per_rank"]
    assert job.stdout.count("across the 2 ranks") == (2 if n == 2 else 0), job.stdout
    for line in ("BLAS floor", "forward profile, rank 0", "GEMV floor", "decode profile per token"):
        assert job.stdout.count(line) == 1, job.stdout


def test_floor_halves_with_two_ranks(tmp_path, capsys):
    """Each rank replays its own shard's products: half of the flops on each of 2 ranks; with
    --vs-serial rank 0's whole model replays all of them, and the speedup and the floors' are
    the same run's ratios; tools/forward_table.py puts the runs in one table."""
    one, two = (launch.run("mpipar.bench", n=n, timeout=120,
                           args=["forward", "--preset", "small", *SMALL, *extra]).data
                for n, extra in ((1, []), (2, ["--vs-serial", "--decode", "2"])))
    assert two["floor_flops_per_rank"] / one["floor_flops_per_rank"] == pytest.approx(0.5)
    assert two["serial_floor_flops"] == one["floor_flops_per_rank"]
    assert two["speedup"] == two["serial_seconds"] / two["seconds"]
    assert two["floor_speedup"] == two["serial_floor_seconds"] / two["blas_floor_seconds"]
    assert two["speedup_ceiling"] == two["serial_seconds"] / two["blas_floor_seconds"]
    d, alone = two["decode"], two["serial_decode"]
    assert alone["gemv_bytes_per_token_per_rank"] > 1.9 * d["gemv_bytes_per_token_per_rank"]
    assert d["speedup"] == alone["seconds_per_token"] / d["seconds_per_token"]
    assert d["speedup_ceiling"] == alone["seconds_per_token"] / d["gemv_floor_seconds_per_token"]
    paths = []
    for n, data in ((2, two), (1, one)):
        paths.append(tmp_path / f"p{n}.json")
        paths[-1].write_text(json.dumps(data))
    table = runpy.run_path(str(TOOLS / "forward_table.py"))
    table["main"]([str(p) for p in paths])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4  # header, rule, p = 1, p = 2
    assert lines[2].split()[:2] == ["small", "1"] and lines[3].split()[:2] == ["small", "2"]
    assert f"{one['seconds'] / two['seconds']:.2f}" in lines[3]


@pytest.mark.skipif(forward_torch.available(), reason="torch and transformers are installed here")
def test_compare_torch_without_torch_names_the_option():
    proc = assert_one_clear_error("mpipar.bench", 2, ["forward", "--preset", "tiny", "--compare-torch"],
                                  "--compare-torch needs torch and transformers", timeout=60)
    assert "Traceback" not in proc.stdout + proc.stderr


def test_vs_serial_needs_two_ranks():
    assert_one_clear_error("mpipar.bench", 1, ["forward", "--preset", "tiny", "--vs-serial"],
                           "--vs-serial compares p ranks with one", timeout=60)


def test_decode_must_fit_the_context():
    assert_one_clear_error("mpipar.bench", 1, ["forward", "--preset", "tiny", "--seq", "60",
                                               "--decode", "5"], "longer than the context of 64",
                           timeout=60)


@pytest.mark.parametrize("preset", ["tiny", "llama-tiny"])
def test_hf_state_dict_names_and_layouts(preset):
    """GPT-2: transformer.* as mpipar's (Conv1D is (in, out)); Llama: model.* with the
    projections transposed to Linear's (out, in); the LM head tied to the embedding."""
    config = SHAPES[preset]
    params = random_params(config)
    state = forward_torch.hf_state_dict(config, params)
    d, hidden = config.n_embd, config.n_inner
    if preset == "tiny":
        assert state["transformer.h.0.attn.c_attn.weight"].shape == (d, 3 * d)
        assert state["transformer.h.1.mlp.c_proj.weight"].shape == (hidden, d)
        assert state["lm_head.weight"] is params["wte.weight"]
        assert len(state) == len(params) + 1
    else:
        kv = config.n_kv_head * config.head_dim
        assert state["model.layers.0.self_attn.k_proj.weight"].shape == (kv, d)
        assert state["model.layers.1.mlp.down_proj.weight"].shape == (d, hidden)
        assert np.array_equal(state["model.layers.0.mlp.gate_proj.weight"].T,
                              params["layers.0.mlp.gate_proj.weight"])
        assert state["model.norm.weight"] is params["norm.weight"]
        assert state["lm_head.weight"] is params["embed_tokens.weight"]


def test_sequence_parallel_forward_sends_the_allreduces_bytes():
    """--sp: reduce-scatters and allgathers in place of the allreduces, the same ring bytes over
    all ranks (the logits' gather is the same in both)."""
    runs = [launch.run("mpipar.bench", n=2, timeout=120, args=[
        "forward", "--preset", "tiny", "--algorithm", "ring", *SMALL, *sp]).data for sp in ([], ["--sp"])]
    assert [r["sequence_parallel"] for r in runs] == [False, True]
    assert sum(runs[0]["bytes_sent_per_rank"]) == sum(runs[1]["bytes_sent_per_rank"]) > 0


def test_sequence_parallel_decoding_is_refused():
    assert_one_clear_error("mpipar.bench", 1, ["forward", "--preset", "tiny", "--seq", "8", "--sp",
                                                  "--decode", "2"],
                           "--sp with --decode")
