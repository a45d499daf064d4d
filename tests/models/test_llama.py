"""The Llama model on one process: its rows of the parameter table, which query and key/value
heads every shard of a p-way split holds, the logits against an independent float64 oracle and
a case worked by hand, emulated splits, the KV cache, and bad inputs."""
from dataclasses import replace

from helpers import generate_without_cache
from mpi4py import MPI
import numpy as np
import pytest
import reference_llama as ref

from mpipar.measure import numerics
from mpipar.models import GPTConfig, Llama, LlamaConfig, init_params
from mpipar.models import params as table

SELF, SMALL = MPI.COMM_SELF, ref.SMALL
SMALL64 = replace(SMALL, dtype="float64")
UNTIED = replace(SMALL, tie_embeddings=False)  # an LM head of its own, lm_head.weight
PARAMS = ref.lively(SMALL)


def tokens_for(config, batch=2, length=12, seed=1):
    return np.random.default_rng(seed).integers(0, config.vocab_size, (batch, length))


# --- (a) the table --------------------------------------------------------------------------

def test_the_table_is_llamas_layout_in_mpipar_orientation():
    shapes, d, kv = table.param_shapes(SMALL), 72, 3 * 8
    assert shapes["embed_tokens.weight"] == (101, d) and shapes["norm.weight"] == (d,)
    assert shapes["layers.1.self_attn.q_proj.weight"] == (d, d)  # (in, out): x @ W
    assert shapes["layers.1.self_attn.k_proj.weight"] == shapes["layers.1.self_attn.v_proj.weight"] == (d, kv)
    assert shapes["layers.1.self_attn.o_proj.weight"] == (d, d)
    assert shapes["layers.0.mlp.gate_proj.weight"] == (d, 100)
    assert shapes["layers.0.mlp.down_proj.weight"] == (100, d)
    assert len(shapes) == 2 + 2 * 9 and not any(name.endswith("bias") for name in shapes)
    cuts = {name.split(".", 2)[-1]: table.spec(name).split for name in shapes if name.startswith("layers.0.")}
    assert cuts["self_attn.q_proj.weight"] == table.Split(1, ("heads",))
    assert cuts["self_attn.k_proj.weight"] == cuts["self_attn.v_proj.weight"] == table.Split(1, ("kv_heads",))
    assert cuts["self_attn.o_proj.weight"] == table.Split(0, ("heads",))
    assert cuts["mlp.up_proj.weight"] == cuts["mlp.gate_proj.weight"] == table.Split(1, ("hidden",))
    assert cuts["mlp.down_proj.weight"] == table.Split(0, ("hidden",))
    assert cuts["input_layernorm.weight"] is None and not table.is_sharded("norm.weight")
    untied = table.param_shapes(replace(SMALL, tie_embeddings=False))
    assert untied["lm_head.weight"] == (101, d) and table.is_sharded("lm_head.weight")
    assert "lm_head.weight" not in shapes


def test_init_params_for_llama():
    params = init_params(SMALL, 0)
    assert all(np.all(params[n] == 1) for n in params if n.endswith("norm.weight"))
    weights = np.concatenate([v.ravel() for n, v in params.items() if not n.endswith("norm.weight")])
    assert weights.dtype == np.float32 and abs(weights.std() / 0.02 - 1) < 0.02


@pytest.mark.parametrize("p", range(1, 10))
def test_llama_shards_merge_back_bit_for_bit(p):
    shards = [table.shard_params(SMALL, PARAMS, r, p) for r in range(p)]
    for name, value in PARAMS.items():
        if table.is_sharded(name):
            assert np.array_equal(table.merge_shards(SMALL, name, [s[name] for s in shards]), value), name
        else:
            assert all(s[name] is value for s in shards), name


# --- (b) grouped-query attention under p ranks ----------------------------------------------

SMOLLM2 = LlamaConfig()  # 9 query heads, 3 key/value heads: heads 3j..3j+2 read key/value head j
QUERY_HEADS = {2: [(0, 5), (5, 9)], 4: [(0, 3), (3, 5), (5, 7), (7, 9)],
               5: [(0, 2), (2, 4), (4, 6), (6, 8), (8, 9)], 9: [(h, h + 1) for h in range(9)]}
KV_HEADS = {2: [(0, 2), (1, 3)], 4: [(0, 1), (1, 2), (1, 3), (2, 3)],
            5: [(0, 1), (0, 2), (1, 2), (2, 3), (2, 3)], 9: [(h // 3, h // 3 + 1) for h in range(9)]}
#: how many ranks hold each key/value head
COPIES = {1: [1, 1, 1], 2: [1, 2, 1], 3: [1, 1, 1], 4: [1, 2, 2], 5: [2, 2, 2], 6: [2, 2, 3],
          7: [2, 3, 3], 8: [2, 3, 3], 9: [3, 3, 3]}


@pytest.mark.parametrize("p", range(1, 10))
def test_each_rank_holds_its_query_heads_and_the_kv_heads_they_read(p):
    heads = [table.owned(SMOLLM2, "heads", p, r) for r in range(p)]
    kv = [table.owned(SMOLLM2, "kv_heads", p, r) for r in range(p)]
    if p in QUERY_HEADS:
        assert [(s.start, s.stop) for s in heads] == QUERY_HEADS[p]
        assert [(s.start, s.stop) for s in kv] == KV_HEADS[p]
    assert sorted(h for s in heads for h in range(s.start, s.stop)) == list(range(9))  # a partition
    for h, k in zip(heads, kv):  # exactly the key/value heads h // 3 of its query heads
        assert list(range(k.start, k.stop)) == sorted({q // 3 for q in range(h.start, h.stop)})
    assert [sum(j in range(k.start, k.stop) for k in kv) for j in range(3)] == COPIES[p]


@pytest.mark.parametrize("ways", [1, 4, 9])
def test_shards_and_their_kv_cache_hold_their_own_kv_heads(ways):
    model = Llama(SMALL, PARAMS, SELF, ways=ways)
    cache = model.new_cache(2, 10)
    for r, s in enumerate(model.shards):
        n_kv = s["kv_heads"].stop - s["kv_heads"].start
        assert s["layers.1.self_attn.k_proj.weight"].shape == (72, 8 * n_kv)
        assert s["layers.1.self_attn.o_proj.weight"].shape[0] == 8 * (s["heads"].stop - s["heads"].start)
        assert cache[1][r][0].shape == cache[1][r][1].shape == (2, n_kv, 10, 8)
    # at 9 ways every key/value head is held 3 times: k and v weigh 3x, the rest once
    kv_bytes = 2 * 2 * 72 * 24 * 4  # k and v of the 2 layers
    full = sum(v.nbytes for v in PARAMS.values())
    assert model.param_bytes() == full + (sum(COPIES[ways]) / 3 - 1) * kv_bytes


# --- (c) the logits -------------------------------------------------------------------------

@pytest.mark.parametrize("config", [SMALL, SMALL64, UNTIED], ids=["float32", "float64", "untied"])
@pytest.mark.parametrize("seed", [0, 1])
def test_logits_match_the_float64_oracle(config, seed):
    params, tok = ref.lively(config, seed), tokens_for(config, seed=seed)
    hidden, exact_hidden = [], []
    logits = Llama(config, params, SELF).forward(tok, hidden=hidden)
    exact = ref.forward(config, params, tok, exact_hidden)
    assert logits.dtype == np.dtype(config.dtype) and logits.shape == exact.shape == (2, 12, 101)
    # ref.error_bound: about 1e-5 in float32 and 2e-14 in float64, where a wrong epsilon, theta
    # or head mapping would show (a wrong theta changes the logits by O(1))
    err = np.abs(logits - exact).max() / np.abs(exact).max()
    assert err <= ref.error_bound(config), f"relative error {err:.3g}"
    assert len(hidden) == 2 and np.abs(hidden[-1] - exact_hidden[-1]).max() <= \
        ref.error_bound(config) * np.abs(exact_hidden[-1]).max()


def test_a_case_worked_by_hand():
    """o_proj and down_proj zero (attention and MLP add exactly 0 to the residual stream),
    eps = 0: logits = rms_norm(E[t]) * g @ E.T.

    E = [1,-1,1,-1], [1,1,-1,-1], [2,0,-2,0]; g = [2,1,1,1]. Token 0: rms 1, so x = [2,-1,1,-1];
    dots with the rows 5, 1, 2. Token 2: rms sqrt(2), x = [2r, 0, -r, 0] (r = sqrt 2); dots
    r, 3r, 6r.
    """
    config = LlamaConfig(vocab_size=3, n_ctx=2, n_embd=4, n_head=2, n_kv_head=1, n_layer=1,
                         n_inner=3, rms_norm_eps=0.0, dtype="float64")
    params = init_params(config, seed=5)  # random q, k, v, gate and up: they must not matter
    for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
        params["layers.0." + name][...] = 0
    params["embed_tokens.weight"] = np.array([[1, -1, 1, -1], [1, 1, -1, -1], [2, 0, -2, 0]], float)
    params["norm.weight"] = np.array([2.0, 1, 1, 1])
    r = np.sqrt(2)
    for ways in (1, 2):
        logits = Llama(config, params, SELF, ways=ways).forward(np.array([[0, 2]]))
        np.testing.assert_allclose(logits, [[[5, 1, 2], [r, 3 * r, 6 * r]]], rtol=0, atol=1e-13)


@pytest.mark.parametrize("ways", range(2, 10))
def test_emulated_splits_are_bounded_and_deterministic_emulation_reproducible(ways):
    tok = tokens_for(SMALL)
    exact, serial = ref.forward(SMALL, PARAMS, tok), Llama(SMALL, PARAMS, SELF).forward(tok)
    scale = ref.error_bound(SMALL) * np.abs(exact).max()
    emulated = Llama(SMALL, PARAMS, SELF, ways=ways).forward(tok)
    assert np.abs(emulated - exact).max() <= scale
    assert np.abs(emulated - serial).max() <= 2 * scale  # both within `scale` of the exact logits
    runs = [Llama(SMALL, PARAMS, SELF, ways=ways, deterministic=True).forward(tok) for _ in range(2)]
    assert numerics.bitwise_equal(runs[0], runs[1])


# --- (d) the KV cache -----------------------------------------------------------------------

@pytest.mark.parametrize("ways", [1, 2, 4, 9])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_kv_cache_gives_the_tokens_of_full_recomputation(ways, temperature):
    model = Llama(SMALL, PARAMS, SELF, ways=ways)
    prompt = tokens_for(SMALL, batch=3, length=4, seed=2)
    out = model.generate(prompt, 10, temperature=temperature, seed=7)
    assert out.shape == (3, 14) and np.array_equal(out[:, :4], prompt)
    assert np.array_equal(out, generate_without_cache(model, prompt, 10, temperature, seed=7))
    assert len(set(out[:, 4:].ravel())) > 3  # not one token repeated


def test_cached_positions_give_the_logits_of_the_whole_sequence():
    model, tok = Llama(SMALL, PARAMS, SELF, ways=3), tokens_for(SMALL, length=9)
    cache, steps = model.new_cache(2, 9), []
    for start, stop in [(0, 5), (5, 6), (6, 9)]:  # a prompt of 5, one position, then three
        x = model.decode(tok[:, start:stop], cache, start)
        steps.append(model.tp.gather_from_tp(model.logit_parts(x)))
    whole = model.forward(tok)
    assert np.abs(np.concatenate(steps, axis=1) - whole).max() <= \
        2 * ref.error_bound(SMALL) * np.abs(whole).max()


# --- (e) bad inputs fail clearly ------------------------------------------------------------

def test_bad_models_fail_when_built():
    with pytest.raises(ValueError, match="cannot split 9 attention heads over 10 ranks: use at most 9"):
        Llama(SMALL, PARAMS, SELF, ways=10)
    with pytest.raises(ValueError, match="Llama needs a LlamaConfig, not GPTConfig"):
        Llama(GPTConfig(), PARAMS, SELF)
    with pytest.raises(ValueError, match="n_head 9 is not a multiple of n_kv_head 2"):
        Llama(replace(SMALL, n_kv_head=2), PARAMS, SELF)
    with pytest.raises(ValueError, match="'layers.1.mlp.up_proj.weight' is missing"):
        Llama(SMALL, {k: v for k, v in PARAMS.items() if k != "layers.1.mlp.up_proj.weight"}, SELF)
    with pytest.raises(ValueError, match="unexpected parameter 'h.0.ln_1.bias'"):
        Llama(SMALL, dict(PARAMS, **{"h.0.ln_1.bias": np.zeros(72)}), SELF)
    with pytest.raises(ValueError, match="unknown allreduce algorithm 'bogus'"):
        Llama(SMALL, PARAMS, SELF, algorithm="bogus")
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 101\)"):
        Llama(SMALL, PARAMS, SELF).forward([[3, 101]])
    with pytest.raises(ValueError, match="30 \\+ 3 positions do not fit the context of 32"):
        Llama(SMALL, PARAMS, SELF).generate(np.zeros((1, 30), int), 3)
