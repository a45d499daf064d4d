"""The parameter table: shapes, initialisation, and the split that shard_params, merge_shards
and is_sharded read from it -- for even and uneven splits, and key/value heads shared by
several query heads (grouped-query attention)."""
from dataclasses import dataclass

import numpy as np
import pytest

from mpipar.models import PRESETS, GPTConfig, init_params
from mpipar.models import params as table

ODD = GPTConfig(vocab_size=37, n_ctx=16, n_embd=24, n_head=3, n_layer=2, dtype="float64")


@dataclass(frozen=True)
class GroupedConfig:
    """What the table reads of a config, with 6 query heads sharing 2 key/value heads."""

    vocab_size: int = 11
    n_ctx: int = 4
    n_embd: int = 12
    n_head: int = 6
    n_kv_head: int = 2
    head_dim: int = 2
    n_inner: int = 10
    n_layer: int = 1
    dtype: str = "float64"


def test_the_table_is_gpt2s_layout():
    shapes = table.param_shapes(PRESETS["tiny"])
    d, V = 48, 96
    assert shapes["wte.weight"] == (V, d) and shapes["wpe.weight"] == (64, d)
    assert shapes["h.1.attn.c_attn.weight"] == (d, 3 * d) and shapes["h.1.mlp.c_proj.weight"] == (4 * d, d)
    assert len(shapes) == len(table.TOP) + 2 * len(table.BLOCK)
    assert list(table.param_table(PRESETS["tiny"])) == list(shapes)  # one order everywhere


def test_init_follows_the_table():
    config = PRESETS["small"]
    params = init_params(config, 0)
    for name, param in table.param_table(config).items():
        value = params[name]
        assert value.dtype == np.float32 and value.shape == table.param_shapes(config)[name]
        if param.init in ("zeros", "ones"):
            assert np.all(value == (param.init == "ones")), name
        else:  # std 0.02, or 0.02 / sqrt(2 n_layer) = 0.0071 for the residual projections
            std = 0.02 if param.init == "normal" else 0.02 / np.sqrt(2 * config.n_layer)
            assert abs(value.std() / std - 1) < 0.1, name


@pytest.mark.parametrize("config", [ODD, GroupedConfig()], ids=["gpt2-odd", "grouped"])
def test_shards_merge_back_bit_for_bit(config):
    rng = np.random.default_rng(0)
    params = {name: rng.standard_normal(shape) for name, shape in table.param_shapes(config).items()}
    for p in range(1, config.n_head + 1):
        shards = [table.shard_params(config, params, r, p) for r in range(p)]
        for name, value in params.items():
            if table.is_sharded(name):
                merged = table.merge_shards(config, name, [s[name] for s in shards])
                assert np.array_equal(merged, value), (name, p)
            else:  # replicated: one array shared by every shard, not a copy
                assert all(s[name] is value for s in shards), (name, p)


@pytest.mark.parametrize("p", [1, 2, 3])
def test_gpt2_shards_partition_every_split_axis(p):
    for name, param in table.param_table(ODD).items():
        if param.split is None:
            continue
        n = table.param_shapes(ODD)[name][param.split.axis]
        index = np.concatenate([table.shard_index(ODD, param.split, p, r) for r in range(p)])
        assert sorted(index) == list(range(n)), name  # each index owned by exactly one shard


@pytest.mark.parametrize("p,kv", [(1, [(0, 2)]), (2, [(0, 1), (1, 2)]), (3, [(0, 1), (0, 2), (1, 2)]),
                                  (6, [(0, 1)] * 3 + [(1, 2)] * 3)])
def test_a_shard_holds_the_kv_heads_its_query_heads_read(p, kv):
    config = GroupedConfig()  # query heads 0-2 read kv head 0, heads 3-5 kv head 1
    got = [table.owned(config, "kv_heads", p, r) for r in range(p)]
    assert [(s.start, s.stop) for s in got] == kv
    for r in range(p):
        heads = table.owned(config, "heads", p, r)
        assert {h // 3 for h in range(heads.start, heads.stop)} == set(range(kv[r][0], kv[r][1]))


def block_weights(config, p, r):
    """How many numbers of one block's split parameters shard r of p holds."""
    shapes, total = table.param_shapes(config), 0
    for name, param in table.param_table(config).items():
        if name.startswith(("h.0.", "layers.0.")) and param.split is not None:
            shape = list(shapes[name])
            shape[param.split.axis] = len(table.shard_index(config, param.split, p, r))
            total += int(np.prod(shape))
    return total


@pytest.mark.parametrize("p", range(1, 13))
def test_hidden_units_even_out_the_weights_of_a_block(p):
    config, d = GPTConfig(), 768  # gpt2-small: 12 heads of 64
    hidden = [table.owned(config, "hidden", p, r) for r in range(p)]
    if 12 % p == 0:  # every shard has as many heads: np.array_split blocks
        assert [(s.start, s.stop) for s in hidden] == [
            (int(a[0]), int(a[-1]) + 1) for a in np.array_split(np.arange(4 * d), p)]
    weights = [block_weights(config, p, r) for r in range(p)]
    # a hidden unit is 2d + 1 numbers (c_fc's column and bias, c_proj's row): no shard is
    # further from the lightest than that
    assert max(weights) - min(weights) <= 2 * d + 1, weights
    if p == 8:  # 2 heads on ranks 0-3, 1 on ranks 4-7
        assert [s.stop - s.start for s in hidden] == [320] * 4 + [448] * 4
