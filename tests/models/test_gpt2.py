"""The GPT-2 model on one process: against an independent float64 oracle, a case worked by
hand, the KV cache, safetensors loading, Hugging Face configs, bad inputs, split emulation."""
import json
import pickle

from helpers import generate_without_cache
from mpi4py import MPI
import numpy as np
import pytest
import reference_gpt2 as ref

from mpipar.measure import numerics
from mpipar.models import GPT, PRESETS, GPTConfig, init_params, load_state_dict

SELF = MPI.COMM_SELF
TINY = PRESETS["tiny"]
ODD = GPTConfig(vocab_size=37, n_ctx=16, n_embd=24, n_head=3, n_layer=2)  # nothing a power of 2
ODD64 = GPTConfig(vocab_size=37, n_ctx=16, n_embd=24, n_head=3, n_layer=2, dtype="float64")


def tokens_for(config, batch=2, length=12, seed=1):
    return np.random.default_rng(seed).integers(0, config.vocab_size, (batch, length))


# --- (a) the logits are GPT-2's ---------------------------------------------------------------

@pytest.mark.parametrize("config", [TINY, ODD, ODD64], ids=["tiny", "odd", "odd-float64"])
@pytest.mark.parametrize("seed", [0, 1])
def test_logits_match_the_float64_oracle(config, seed):
    params = ref.every_parameter_matters(init_params(config, seed), seed)
    tok = tokens_for(config, seed=seed)
    logits = GPT(config, params, SELF).forward(tok)
    exact = ref.forward(params, tok, config.n_head, config.layer_norm_epsilon)
    assert logits.dtype == np.dtype(config.dtype) and logits.shape == exact.shape
    # ref.error_bound: (6 n_layer + 3) sqrt(4d) u relative to the largest logit, about
    # 1e-5 in float32 and 1e-14 in float64 -- so in float64 even a wrong epsilon or
    # GELU constant (relative effects ~1e-6) would fail
    err = np.abs(logits - exact).max() / np.abs(exact).max()
    assert err <= ref.error_bound(config), f"relative error {err:.3g}"



@pytest.mark.parametrize("ways", [1, 3])
def test_final_hidden_is_what_the_lm_head_reads(ways):
    params, tok = ref.every_parameter_matters(init_params(ODD64, 2), 2), tokens_for(ODD64)
    model = GPT(ODD64, params, SELF, ways=ways)
    final, _ = ref.final_hidden(params, tok, ODD64.n_head)
    assert np.abs(model.final_hidden(tok) - final).max() <= ref.error_bound(ODD64) * np.abs(final).max()
    assert numerics.bitwise_equal(model.forward(tok), np.concatenate(
        [model.final_hidden(tok) @ s["wte.weight"].T for s in model.shards], axis=-1))

def test_a_case_worked_by_hand():
    """Attention and MLP zeroed (their c_proj weights and biases are 0, so each adds exactly 0
    to the residual stream): logits = ln_f(wte[t] + wpe[pos]) @ wte.T, with eps = 0.

    wte = [1,-1,1,-1], [1,1,-1,-1], [2,0,-2,0]; wpe = 0, [1,1,1,1]; ln_f gain 2, bias [.5,0,0,0].
    Tokens [0, 2].  Position 0: x = [1,-1,1,-1], mean 0, variance 1, so ln_f(x) = 2x + b =
    [2.5,-2,2,-2]; dot with the three rows: 8.5, 0.5, 1.  Position 1: x = [3,1,-1,1], mean 1,
    centred [2,0,-2,0], variance 2, normalised [r,0,-r,0] with r = sqrt 2, so ln_f(x) =
    [2r+.5, 0, -2r, 0]; dots: 0.5, 4r+.5, 8r+1.
    """
    config = GPTConfig(vocab_size=3, n_ctx=2, n_embd=4, n_head=2, n_layer=1,
                       layer_norm_epsilon=0.0, dtype="float64")
    params = init_params(config, seed=5)  # random q, k, v and c_fc: they must not matter
    for name in ("attn.c_proj.weight", "attn.c_proj.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"):
        params["h.0." + name][...] = 0
    params["wte.weight"] = np.array([[1, -1, 1, -1], [1, 1, -1, -1], [2, 0, -2, 0]], float)
    params["wpe.weight"] = np.array([[0, 0, 0, 0], [1, 1, 1, 1]], float)
    params["ln_f.weight"] = np.full(4, 2.0)
    params["ln_f.bias"] = np.array([0.5, 0, 0, 0])
    r = np.sqrt(2)
    expected = np.array([[[8.5, 0.5, 1.0], [0.5, 4 * r + 0.5, 8 * r + 1]]])
    for ways in (1, 2):
        logits = GPT(config, params, SELF, ways=ways).forward(np.array([[0, 2]]))
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-13)  # a few float64 ops
    np.testing.assert_allclose(ref.forward(params, [[0, 2]], 2, eps=0.0), expected, atol=1e-13)


# --- (b) the KV cache --------------------------------------------------------------------------

@pytest.mark.parametrize("config,ways", [(TINY, 1), (ODD, 1), (TINY, 3), (ODD, 2)])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_kv_cache_gives_the_tokens_of_full_recomputation(config, ways, temperature):
    model = GPT(config, ref.every_parameter_matters(init_params(config, 0)), SELF, ways=ways)
    prompt = tokens_for(config, batch=3, length=4, seed=2)
    out = model.generate(prompt, 10, temperature=temperature, seed=7)
    assert out.shape == (3, 14) and np.array_equal(out[:, :4], prompt)
    assert np.array_equal(out, generate_without_cache(model, prompt, 10, temperature, seed=7))


# --- (c) safetensors ---------------------------------------------------------------------------

def test_safetensors_round_trip_with_prefix_and_extras(tmp_path, monkeypatch):
    from safetensors.numpy import save_file  # a declared dependency: never skipped
    params = ref.every_parameter_matters(init_params(ODD, 3))
    tensors = {"transformer." + k: v for k, v in params.items()}
    tensors["lm_head.weight"] = params["wte.weight"].copy()  # tied head: ignored
    tensors["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, 16, 16), np.float32))
    tensors["transformer.h.1.attn.masked_bias"] = np.array([-1e4], np.float32)
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    for name in ("load", "loads", "Unpickler"):  # the happy path must never unpickle
        monkeypatch.setattr(pickle, name, lambda *a, **k: pytest.fail("pickle was used"))
    loaded = load_state_dict(path, ODD)
    assert sorted(loaded) == sorted(params)
    assert all(numerics.bitwise_equal(loaded[k], params[k]) for k in params)
    tok = tokens_for(ODD)
    assert numerics.bitwise_equal(GPT(ODD, loaded, SELF).forward(tok),
                                  GPT(ODD, params, SELF).forward(tok))
    assert load_state_dict(str(path), ODD64)["wte.weight"].dtype == np.float64  # cast to config


@pytest.mark.parametrize("change,named", [
    (lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"), "'h.1.mlp.c_fc.bias' is missing"),
    (lambda t: t.update({"transformer.wpe.weight": np.zeros((15, 24), np.float32)}),
     "'wpe.weight' has shape (15, 24), expected (16, 24)"),
    (lambda t: t.update({"h.7.ln_1.weight": np.ones(24, np.float32)}), "'h.7.ln_1.weight'"),
])
def test_bad_state_dicts_name_the_tensor(tmp_path, change, named):
    from safetensors.numpy import save_file  # a declared dependency: never skipped
    tensors = {"transformer." + k: v for k, v in init_params(ODD, 0).items()}
    change(tensors)
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    for source in (tmp_path / "bad.safetensors", tensors):
        with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
            load_state_dict(source, ODD)


class _Trap:
    """Unpickling this creates a file: proof that a loader ran pickle."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_is_never_loaded(tmp_path):
    marker = tmp_path / "pickle-ran"
    path = tmp_path / "pytorch_model.safetensors"
    path.write_bytes(pickle.dumps({"wte.weight": _Trap(str(marker))}))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_state_dict(path)
    assert not marker.exists()


# --- (d) Hugging Face config.json --------------------------------------------------------------

def test_config_from_hugging_face_json(tmp_path):
    hf = {"model_type": "gpt2", "activation_function": "gelu_new", "vocab_size": 37,
          "n_positions": 16, "n_ctx": 1024, "n_embd": 24, "n_head": 3, "n_layer": 2,
          "layer_norm_epsilon": 1e-6, "architectures": ["GPT2LMHeadModel"]}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    config = GPTConfig.from_hf_json(tmp_path / "config.json")
    # n_positions (the rows of wpe) wins over the legacy n_ctx; unknown keys are ignored
    assert config == GPTConfig(vocab_size=37, n_ctx=16, n_embd=24, n_head=3, n_layer=2,
                               layer_norm_epsilon=1e-6)
    assert GPTConfig.from_hf_json(tmp_path / "config.json", dtype="float64").dtype == "float64"
    del hf["n_positions"], hf["layer_norm_epsilon"]
    (tmp_path / "old.json").write_text(json.dumps(hf))
    old = GPTConfig.from_hf_json(tmp_path / "old.json")
    assert old.n_ctx == 1024 and old.layer_norm_epsilon == 1e-5


# --- (e) bad inputs fail clearly ---------------------------------------------------------------

@pytest.mark.parametrize("tokens,message", [
    ([[0, 96]], r"token ids must lie in \[0, 96\)"),
    ([[-1, 3]], r"token ids must lie in \[0, 96\)"),
    ([1, 2, 3], r"must be a \(batch, time\) integer array"),
    ([[[1]]], r"must be a \(batch, time\) integer array"),
    ([[0.0, 1.0]], r"must be a \(batch, time\) integer array"),
    (np.zeros((1, 65), int), "65 \\+ 0 positions do not fit the context of 64"),
    (np.zeros((1, 0), int), "do not fit"),
])
def test_bad_tokens(tokens, message):
    model = GPT(TINY, init_params(TINY, 0), SELF)
    with pytest.raises(ValueError, match=message):
        model.forward(tokens)


def test_bad_generation_length_and_configs():
    params = init_params(TINY, 0)
    with pytest.raises(ValueError, match="60 \\+ 5 positions do not fit the context of 64"):
        GPT(TINY, params, SELF).generate(np.zeros((1, 60), int), 5)
    assert GPT(TINY, params, SELF).generate(np.zeros((1, 60), int), 4).shape == (1, 64)
    with pytest.raises(ValueError, match="n_embd 50 is not divisible by n_head 4"):
        GPT(GPTConfig(96, 64, 50, 4, 2), params, SELF)
    # a 16-bit wire whose own settings are fine does not hide the configuration's problem
    with pytest.raises(ValueError, match="n_embd 50 is not divisible by n_head 4"):
        GPT(GPTConfig(96, 64, 50, 4, 2), params, SELF, comm_dtype="bfloat16", algorithm="ring")
    with pytest.raises(ValueError, match="split 4 attention heads over 5 ranks: use at most 4"):
        GPT(TINY, params, SELF, ways=5)
    with pytest.raises(ValueError, match="'h.1.ln_2.bias' is missing"):
        GPT(TINY, {k: v for k, v in params.items() if k != "h.1.ln_2.bias"}, SELF)


@pytest.mark.parametrize("kwargs,message", [
    (dict(ways=0), "ways must be a positive number"),
    (dict(algorithm="bogus"), "unknown allreduce algorithm 'bogus'"),
])
def test_bad_model_arguments_fail_when_the_model_is_built(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPT(TINY, init_params(TINY, 0), SELF, **kwargs)


@pytest.mark.parametrize("kwargs,message", [
    (dict(argmax="bogus"), "argmax must be"), (dict(temperature=-1.0), "temperature must be"),
    (dict(max_new_tokens=-2), "max_new_tokens must be"),
])
def test_bad_generation_arguments(kwargs, message):
    model = GPT(TINY, init_params(TINY, 0), SELF)
    args = dict(dict(max_new_tokens=3), **kwargs)
    with pytest.raises(ValueError, match=message):
        model.generate([[1, 2]], **args)


def test_parameters_take_the_config_dtype():
    params = {k: v.astype(np.float64) for k, v in init_params(TINY, 0).items()}
    assert GPT(TINY, params, SELF).forward([[1, 2]]).dtype == np.float32
    params["wte.weight"] = params["wte.weight"].astype(np.int64)
    with pytest.raises(ValueError, match="'wte.weight' has dtype int64, not a float"):
        GPT(TINY, params, SELF)


def test_config_json_without_positions_and_bad_epsilon(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(dict(vocab_size=5, n_embd=4, n_head=2, n_layer=1)))
    with pytest.raises(ValueError, match="lacks n_positions"):
        GPTConfig.from_hf_json(tmp_path / "config.json")
    assert "layer_norm_epsilon" in GPTConfig(layer_norm_epsilon=-1.0).problems()


# --- (f) emulating a split on one process ------------------------------------------------------

@pytest.mark.parametrize("config", [TINY, ODD], ids=["tiny", "odd"])
def test_emulated_split_is_bounded_and_deterministic_emulation_reproducible(config):
    params, tok = ref.every_parameter_matters(init_params(config, 0)), tokens_for(config)
    exact = ref.forward(params, tok, config.n_head)
    serial = GPT(config, params, SELF).forward(tok)
    scale = ref.error_bound(config) * np.abs(exact).max()
    for ways in range(2, config.n_head + 1):
        emulated = GPT(config, params, SELF, ways=ways).forward(tok)
        # both are within `scale` of the exact logits (test above), so within 2 * scale
        # of each other; and the split must be as accurate as the serial model
        assert np.abs(emulated - exact).max() <= scale
        assert np.abs(emulated - serial).max() <= 2 * scale
        runs = [GPT(config, params, SELF, ways=ways, deterministic=True).forward(tok)
                for _ in range(2)]
        assert numerics.bitwise_equal(runs[0], runs[1])  # two models, same bits

