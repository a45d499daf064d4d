"""GPT-2 checkpoints read slice by slice (mpipar.models.safetensors_source) and
``load_model(..., sliced=True)``: the shards are load_state_dict's bit for bit, every read is a
range the shard keeps, bad files name the file and the tensor."""
from dataclasses import replace
import re

from mpi4py import MPI
import numpy as np
import pytest

from mpipar.models import GPT, PRESETS, GPTConfig, init_params, load_state_dict
from mpipar.models import params as table
from mpipar.models.checkpoint import SHIPPED, load_model
from mpipar.models.random_init import RandomSource
from mpipar.models.safetensors_source import SafetensorsSource, ranges
from mpipar.tasks.addition import AdditionTask

SELF = MPI.COMM_SELF
ODD = GPTConfig(vocab_size=37, n_ctx=16, n_embd=24, n_head=3, n_layer=2)  # nothing a power of 2


def write(path, config, seed=0, change=None):
    """A Hugging Face-style file: ``transformer.`` keys, the tied head and the mask buffers."""
    from safetensors.numpy import save_file
    tensors = {"transformer." + k: v for k, v in init_params(config, seed).items()}
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"].copy()
    for i in range(config.n_layer):
        tensors[f"transformer.h.{i}.attn.bias"] = np.ones((1, 1, config.n_ctx, config.n_ctx), np.float32)
    if change:
        change(tensors)
    save_file(tensors, str(path))
    return path


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


@pytest.mark.parametrize("config", [PRESETS["tiny"], ODD, replace(ODD, dtype="float64")],
                         ids=["tiny", "odd", "odd-float64"])
def test_shards_are_load_state_dicts_bit_for_bit(tmp_path, config):
    path = write(tmp_path / "model.safetensors", config)
    full = load_state_dict(path, config)
    for p in range(1, config.n_head + 1):
        for r in range(p):
            alone = table.shard_params(config, SafetensorsSource(path, config), r, p)
            cut = table.shard_params(config, full, r, p)
            assert alone.keys() == cut.keys()
            assert all(same(alone[n], cut[n]) for n in full), (p, r)


def test_every_read_is_a_range_the_shard_keeps(tmp_path):
    config = PRESETS["tiny"]
    path = write(tmp_path / "model.safetensors", config)
    for r in range(3):
        source = SafetensorsSource(path, config)
        shard = table.shard_params(config, source, r, 3)
        kept = sum(shard[n].size for n in table.param_shapes(config))
        assert sum(int(np.prod(shape)) for *_, shape in source.reads) == kept
        reads = {key: (axis, runs) for key, axis, runs, _ in source.reads}
        q, k = (table.owned(config, u, 3, r) for u in ("heads", "kv_heads"))
        hd, d = config.head_dim, config.n_embd
        assert reads["transformer.h.0.attn.c_attn.weight"] == (1, [  # [q | k | v]: three ranges
            (q.start * hd, q.stop * hd), (d + k.start * hd, d + k.stop * hd),
            (2 * d + k.start * hd, 2 * d + k.stop * hd)])
        vocab = table.owned(config, "vocab", 3, r)
        assert reads["transformer.wte.weight"] == (0, [(vocab.start, vocab.stop)])
        assert "lm_head.weight" not in reads and "transformer.h.0.attn.bias" not in reads


def test_replicated_tensors_are_read_once_and_shared(tmp_path):
    path = write(tmp_path / "model.safetensors", ODD)
    source = SafetensorsSource(path, ODD)
    shards = [table.shard_params(ODD, source, r, 3) for r in range(3)]
    assert all(s["ln_f.weight"] is shards[0]["ln_f.weight"] for s in shards)
    assert [key for key, *_ in source.reads].count("transformer.wpe.weight") == 1


@pytest.mark.parametrize("change,named", [
    (lambda t: t.update({"transformer.wpe.weight": np.zeros((15, 24), np.float32)}),
     "'wpe.weight' has shape (15, 24), expected (16, 24)"),
    (lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"), "'h.1.mlp.c_fc.bias' is missing"),
    (lambda t: t.update({"h.7.ln_1.weight": np.ones(24, np.float32)}),
     "unexpected parameter 'h.7.ln_1.weight'"),
    (lambda t: t.update({"transformer.ln_f.bias": np.zeros(24, np.int32)}),
     "'transformer.ln_f.bias' has dtype I32"),
])
def test_bad_files_name_the_file_and_the_tensor(tmp_path, change, named):
    path = write(tmp_path / "bad.safetensors", ODD, change=change)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + re.escape(named)):
        SafetensorsSource(path, ODD)


def test_a_file_that_is_not_safetensors(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="x.safetensors"):
        SafetensorsSource(tmp_path / "x.safetensors", ODD)


def test_ranges():
    assert ranges([3, 4, 5, 9, 10, 2]) == [(3, 6), (9, 11), (2, 3)] and ranges([]) == []


def test_load_model_sliced(tmp_path):
    config, source, task = load_model(preset="tiny", seed=4, sliced=True)
    assert isinstance(source, RandomSource) and task is None and config == PRESETS["tiny"]
    _, full, _ = load_model(preset="tiny", seed=4)  # the default: full arrays, as before
    assert isinstance(full, dict)
    assert all(same(source.take(n), full[n]) for n in full)
    config, source, task = load_model(sliced=True)  # the shipped model, with its task
    assert isinstance(source, SafetensorsSource) and source.path == str(SHIPPED)
    assert isinstance(task, AdditionTask)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, 7))
    for ways in (1, 2, 4):
        lazy = GPT(config, source, SELF, ways=ways, deterministic=True)
        eager = GPT(config, load_model()[1], SELF, ways=ways, deterministic=True)
        assert same(lazy.forward(tokens), eager.forward(tokens)), ways
        assert lazy.param_bytes() == eager.param_bytes()
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="config.json"):
        load_model(weights=tmp_path / "model.safetensors", sliced=True)
