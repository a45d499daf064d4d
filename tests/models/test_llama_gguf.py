"""A Llama read from GGUF: the map from mpipar's names and layouts to the file's, checked with a
fake reader that records what it is asked (each shard reads its own slices and nothing else),
and end to end on a tiny GGUF file written with the rotary rows permuted as llama.cpp does."""
from dataclasses import replace

from mpi4py import MPI
import numpy as np
import pytest
import reference_llama as ref
from tiny_gguf import SHAPE, tiny_tokens, write_tiny_gguf

from mpipar.measure import numerics
from mpipar.models import Llama, LlamaConfig, load_gguf
from mpipar.models import params as table
from mpipar.models.gguf import GGUFFile
from mpipar.models.llama_gguf import GGUFSource, gguf_name

SELF, SMALL = MPI.COMM_SELF, ref.SMALL
PARAMS = ref.lively(SMALL)


def hugging_face_layout(config, params):
    """GGUF name -> the tensor as a reader hands it out: float32 (out, in), q and k in HF order."""
    return {gguf_name(n)[0]: (v.T if gguf_name(n)[1] else v).astype(np.float32) for n, v in params.items()}


class FakeReader:
    """GGUFFile's interface over a dict of Hugging Face-layout arrays; it records every read."""

    def __init__(self, config, tensors):
        self.config, self.tensors, self.reads = config, tensors, []

    def tensor_names(self):
        return list(self.tensors)

    def shape(self, name):
        return self.tensors[name].shape

    def llama_config(self, dtype="float32"):
        return replace(self.config, dtype=dtype)

    def read(self, name, rows=None, cols=None):
        assert cols is None or isinstance(cols, slice)  # GGUFFile's rule: columns as a range
        value = self.tensors[name]
        value = value if rows is None else value[rows]
        value = value if cols is None else value[:, cols]
        self.reads.append((name, rows, cols, value.size))
        return value.copy()


def test_every_parameter_has_its_gguf_name():
    names = {n: gguf_name(n) for n in table.param_shapes(replace(SMALL, tie_embeddings=False))}
    assert names["embed_tokens.weight"] == ("token_embd.weight", False)
    assert names["norm.weight"] == ("output_norm.weight", False)
    assert names["lm_head.weight"] == ("output.weight", False)  # (vocab, d) in both layouts
    assert names["layers.1.self_attn.q_proj.weight"] == ("blk.1.attn_q.weight", True)
    assert names["layers.0.self_attn.o_proj.weight"] == ("blk.0.attn_output.weight", True)
    assert names["layers.0.post_attention_layernorm.weight"] == ("blk.0.ffn_norm.weight", False)
    assert names["layers.1.mlp.down_proj.weight"] == ("blk.1.ffn_down.weight", True)
    assert len({g for g, _ in names.values()}) == len(names)  # one file tensor each


@pytest.mark.parametrize("ways", [1, 2, 4, 9])
def test_shards_read_from_a_file_are_those_of_the_full_arrays(ways):
    reader = FakeReader(SMALL, hugging_face_layout(SMALL, PARAMS))
    from_file = load_gguf(reader, SELF, ways=ways, deterministic=True)
    in_memory = Llama(SMALL, PARAMS, SELF, ways=ways, deterministic=True)
    for a, b in zip(from_file.shards, in_memory.shards):
        assert a.keys() == b.keys()
        assert all(numerics.bitwise_equal(a[n], b[n]) for n in PARAMS), ways
        assert all(a[n].flags.c_contiguous for n in PARAMS)
    tok = np.random.default_rng(3).integers(0, 101, (2, 9))
    assert numerics.bitwise_equal(from_file.forward(tok), in_memory.forward(tok))


@pytest.mark.parametrize("p", [1, 3, 5, 9])
def test_each_shard_reads_only_its_own_slices(p):
    for r in range(p):
        reader = FakeReader(SMALL, hugging_face_layout(SMALL, PARAMS))
        source = GGUFSource(reader, SMALL)
        shard = table.shard_params(SMALL, source, r, p)
        # every element read is one the shard keeps: nothing else is dequantized
        kept = sum(shard[n].size for n in PARAMS)
        assert sum(size for *_, size in reader.reads) == kept
        for name, rows, cols, _ in reader.reads:
            if name.endswith(("attn_q.weight", "attn_k.weight", "attn_v.weight", "ffn_gate.weight",
                              "ffn_up.weight", "token_embd.weight")):  # column-parallel: file rows
                assert isinstance(rows, slice) and cols is None, name
            elif name.endswith(("attn_output.weight", "ffn_down.weight")):  # row-parallel: file columns
                assert rows is None and isinstance(cols, slice), name
            else:  # the RMSNorm gains, replicated
                assert rows is None and cols is None, name
        kv = table.owned(SMALL, "kv_heads", p, r)
        rows = slice(8 * kv.start, 8 * kv.stop)  # the rows of its key/value heads, 8 each
        assert ("blk.0.attn_k.weight", rows, None, 72 * (rows.stop - rows.start)) in reader.reads


def test_a_file_that_disagrees_with_its_config_fails_clearly():
    tensors = hugging_face_layout(SMALL, PARAMS)
    with pytest.raises(ValueError, match="'layers.1.mlp.up_proj.weight' is missing"):
        load_gguf(FakeReader(SMALL, {k: v for k, v in tensors.items() if k != "blk.1.ffn_up.weight"}), SELF)
    tensors["blk.0.ffn_down.weight"] = tensors["blk.0.ffn_down.weight"][:, :99]
    with pytest.raises(ValueError, match=r"'layers.0.mlp.down_proj.weight' has shape \(99, 72\)"):
        load_gguf(FakeReader(SMALL, tensors), SELF)
    with pytest.raises(ValueError, match="cannot split 9 attention heads over 10 ranks"):
        load_gguf(FakeReader(SMALL, tensors), SELF, ways=10)  # before any tensor is read


class WrongRows(FakeReader):
    def read(self, name, rows=None, cols=None):
        return super().read(name)  # ignores the slice: the whole tensor


def test_a_reader_that_returns_the_wrong_slice_is_caught():
    message = r"token_embd.weight: read \(101, 72\) for mpipar's embed_tokens.weight, expected \(51, 72\)"
    with pytest.raises(ValueError, match=message):
        load_gguf(WrongRows(SMALL, hugging_face_layout(SMALL, PARAMS)), SELF, ways=2)


def llama_cpp_permuted(w, n_head):
    """What llama.cpp's converter stores for Hugging Face's q or k rows (DESIGN.md, "Models")."""
    out, d_in = w.shape
    return w.reshape(n_head, 2, out // n_head // 2, d_in).swapaxes(1, 2).reshape(out, d_in)


@pytest.mark.parametrize("ways", [1, 2, 4])
def test_a_tiny_gguf_file_end_to_end(tmp_path, ways):
    """F32 tensors dequantize exactly: the model read from the file (q and k rows permuted as
    llama.cpp stores them, un-permuted by GGUFFile) is bitwise the model of the arrays."""
    vocab = len(tiny_tokens())
    config = LlamaConfig(vocab_size=vocab, **SHAPE)
    params = ref.lively(config, seed=4)
    tensors = {name: (value, "F32") for name, value in hugging_face_layout(config, params).items()}
    for name, heads in (("attn_q", SHAPE["n_head"]), ("attn_k", SHAPE["n_kv_head"])):
        name = f"blk.0.{name}.weight"
        tensors[name] = (llama_cpp_permuted(tensors[name][0], heads), "F32")
    path = write_tiny_gguf(tmp_path / "tiny.gguf", tensors)
    from_file = load_gguf(path, SELF, ways=ways, deterministic=True)
    assert from_file.config == GGUFFile(path).llama_config()
    assert (from_file.config.n_head, from_file.config.n_kv_head, from_file.config.rope_theta) == (4, 2, 1e4)
    in_memory = Llama(from_file.config, params, SELF, ways=ways, deterministic=True)
    tok = np.random.default_rng(0).integers(0, vocab, (2, 7))
    assert numerics.bitwise_equal(from_file.forward(tok), in_memory.forward(tok))
    assert np.array_equal(from_file.generate(tok[:, :3], 4), in_memory.generate(tok[:, :3], 4))
