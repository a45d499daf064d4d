"""The random model defined block by block (mpipar.models.random_init): a shard generated alone is
the same bits as the shard cut from the full model, for GPT-2 and Llama, even and uneven splits,
key/value heads replicated over several ranks; generating it draws only the blocks covering it."""
from dataclasses import replace
import zlib

import numpy as np
import pytest

from mpipar.models import PRESETS, GPTConfig, LlamaConfig, init_params, random_init
from mpipar.models import params as table
from mpipar.models.random_init import RandomSource

ODD = GPTConfig(vocab_size=37, n_ctx=16, n_embd=24, n_head=3, n_layer=2)  # nothing a power of 2
LLAMA = LlamaConfig(vocab_size=101, n_ctx=32, n_embd=60, n_head=5, n_kv_head=1, n_layer=2,
                    n_inner=70, tie_embeddings=False)  # p > 1 replicates the one key/value head
GQA = LlamaConfig(vocab_size=67, n_ctx=16, n_embd=48, n_head=6, n_kv_head=2, n_layer=1, n_inner=30,
                  dtype="float64")
CONFIGS = {"tiny": PRESETS["tiny"], "small": PRESETS["small"], "odd": ODD, "llama": LLAMA, "gqa": GQA}


def assert_same_shard(a, b, where):
    assert a.keys() == b.keys(), where
    for key, value in a.items():
        if isinstance(value, np.ndarray):
            assert value.dtype == b[key].dtype and value.shape == b[key].shape, (where, key)
            assert np.array_equal(value.view(np.uint8), b[key].view(np.uint8)), (where, key)
        else:  # the unit slices
            assert value == b[key], (where, key)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_shard_generated_alone_is_the_shard_of_the_full_model(name):
    config = CONFIGS[name]
    full = init_params(config, 7)
    for p in range(1, min(5, config.n_head) + 1):
        for r in range(p):
            alone = table.shard_params(config, RandomSource(config, 7), r, p)
            assert_same_shard(table.shard_params(config, full, r, p), alone, (name, p, r))


@pytest.mark.parametrize("name", ["odd", "gqa"])
def test_small_blocks_cut_inside_heads_and_parts(monkeypatch, name):
    monkeypatch.setattr(random_init, "BLOCK", 5)  # blocks straddle heads, parts and shards
    config = CONFIGS[name]
    full = init_params(config, 3)
    for p in range(1, config.n_head + 1):
        for r in range(p):
            alone = table.shard_params(config, RandomSource(config, 3), r, p)
            assert_same_shard(table.shard_params(config, full, r, p), alone, (name, p, r))


def test_a_block_is_its_own_generator_stream():
    config = PRESETS["small"]  # c_attn (192, 576): q, k, v parts of 192 columns, blocks of 64
    full = init_params(config, 5)
    name = "h.2.attn.c_attn.weight"
    rng = np.random.default_rng([5, zlib.crc32(name.encode()), 1, 2])  # k's third block
    block = (0.02 * rng.standard_normal((192, 64))).astype(np.float32)
    assert np.array_equal(full[name][:, 192 + 128:192 + 192], block)
    residual = 0.02 / np.sqrt(2 * config.n_layer)
    rng = np.random.default_rng([5, zlib.crc32(b"h.0.mlp.c_proj.weight"), 0, 0])
    block = (residual * rng.standard_normal((64, 192))).astype(np.float32)
    assert np.array_equal(full["h.0.mlp.c_proj.weight"][:64], block)


def test_seeds_and_parameters_give_different_streams():
    a, b = init_params(ODD, 0), init_params(ODD, 1)
    assert not np.array_equal(a["wte.weight"], b["wte.weight"])
    assert np.array_equal(a["wte.weight"], init_params(ODD, 0)["wte.weight"])  # reproducible
    assert not np.array_equal(a["h.0.attn.c_attn.weight"], a["h.1.attn.c_attn.weight"])
    q, k = a["h.0.attn.c_attn.weight"][:, :24], a["h.0.attn.c_attn.weight"][:, 24:48]
    assert not np.array_equal(q, k)
    with pytest.raises(ValueError, match="seed"):
        RandomSource(ODD, -1)


@pytest.mark.parametrize("p", [2, 4])
def test_a_shard_draws_only_the_blocks_that_cover_it(p):
    config = PRESETS["small"]
    shapes, B = table.param_shapes(config), random_init.BLOCK
    for r in range(p):
        source = RandomSource(config, 0)
        table.shard_params(config, source, r, p)
        bound = 0  # every block of a replicated weight; a sharded part: its own, +1 for a straddle
        for name, param in table.param_table(config).items():
            if param.init in ("zeros", "ones"):
                continue
            if param.split is None:
                bound += -(-shapes[name][0] // B)
                continue
            for unit in param.split.parts:
                mine = table.owned(config, unit, p, r)
                width = table.units(config)[unit][1]
                bound += -(-(mine.stop - mine.start) * width // B) + 1
        assert source.blocks <= bound, (p, r)
    whole = RandomSource(config, 0)
    table.shard_params(config, whole, 0, 1)
    assert source.blocks < whole.blocks / p + 60  # about a p-th of the model's blocks


def test_replicated_arrays_are_shared_and_sharded_ones_owned():
    source = RandomSource(LLAMA, 0)
    shards = [table.shard_params(LLAMA, source, r, 3) for r in range(3)]
    assert all(s["norm.weight"] is shards[0]["norm.weight"] for s in shards)  # as with a dict
    for name in ("layers.0.self_attn.k_proj.weight", "lm_head.weight"):
        value = shards[1][name]
        assert value.flags.owndata and value.flags.writeable and value.flags.c_contiguous
    # the one key/value head is every shard's: the same columns on each
    assert all(np.array_equal(s["layers.1.self_attn.v_proj.weight"],
                              shards[0]["layers.1.self_attn.v_proj.weight"]) for s in shards)


def test_float64_is_the_float32_model_before_rounding():
    wide = init_params(replace(ODD, dtype="float64"), 2)
    narrow = init_params(ODD, 2)
    assert all(np.array_equal(wide[n].astype(np.float32), narrow[n]) for n in narrow)


def test_other_axes_and_bad_indices():
    source = RandomSource(ODD, 0)
    full = init_params(ODD, 0)
    index = np.array([5, 0, 23])
    name = "h.1.mlp.c_fc.weight"  # split along axis 1; axis 0 asked: the whole, then the rows
    assert np.array_equal(source.take(name, 0, index), full[name][index])
    for cols in (index[::-1], [0, 2, 1, 3], [4, 4, 70, 69]):  # out of order, repeated
        assert np.array_equal(source.take(name, 1, cols), full[name][:, cols]), cols
    with pytest.raises(IndexError, match=name):
        source.take(name, 1, [96])
