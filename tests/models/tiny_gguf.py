"""Tiny GGUF files for the tests of ``mpipar.models.gguf`` and ``mpipar.models.tokenizer``,
written with the ``gguf`` package's ``GGUFWriter`` (the GGUF specification, ggml's
``docs/gguf.md``): a small Llama's metadata, a byte-level BPE vocabulary, and whatever tensors a
test asks for, quantized by ``gguf.quants.quantize`` or given as hand-built block bytes.
"""
import gguf
import numpy as np
from tokenizers import pre_tokenizers

#: a small Llama: 4 query heads of width 16 sharing 2 key/value heads
SHAPE = dict(n_ctx=32, n_embd=64, n_head=4, n_kv_head=2, n_layer=1, n_inner=96)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"]
TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'bad' %}{{ raise_exception('no bad roles') }}"
            "{% endif %}{{ bos_token + m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}"
            "{% if add_generation_prompt %}{{ bos_token + 'assistant: ' }}{% endif %}")


def tiny_tokens():
    """Control tokens, the 256 characters of the byte-level alphabet, then the merged tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    return SPECIALS + alphabet + [m.replace(" ", "") for m in MERGES]


def q4_1_block(d, m, q):
    """One Q4_1 block by hand: fp16 scale d, fp16 minimum m, then 16 bytes whose low nibbles
    hold q[0:16] and high nibbles q[16:32] (ggml's ``block_q4_1``); x = d * q + m."""
    q = np.asarray(q, np.uint8)
    assert q.shape == (32,) and q.max() < 16
    packed = q[:16] | (q[16:] << np.uint8(4))
    return np.concatenate([np.float16(d).reshape(1).view(np.uint8),
                           np.float16(m).reshape(1).view(np.uint8), packed])


def quantized(weights, kind):
    """``weights`` (out, in) in the storage of ggml type ``kind``: what GGUFWriter.add_tensor
    takes (uint8 block bytes for the block formats)."""
    qtype = gguf.GGMLQuantizationType[kind]
    weights = np.asarray(weights, np.float32)
    if kind == "F32":
        return weights, None
    if kind == "F16":
        return weights.astype(np.float16), None
    return gguf.quants.quantize(weights, qtype), qtype


def write_tiny_gguf(path, tensors=None, arch="llama", metadata=None, tokens=None, types=None,
                    tokenizer_model="gpt2", pre="smollm", vocab_rows=True):
    """Write a tiny Llama GGUF file at ``path`` and return the path.

    ``tensors``: name -> (array, kind): float weights in Hugging Face's (out, in) order and a
    ggml type name to store them in, or (uint8 block bytes, kind) stored as they are. A
    Q8_0 ``token_embd.weight`` of one row per token is added unless given (or ``vocab_rows``
    is False). ``metadata``: key -> value overriding or adding to the defaults (value None
    drops the key)."""
    tokens = tiny_tokens() if tokens is None else tokens
    types = [3 if t in SPECIALS else 1 for t in tokens] if types is None else types
    rng = np.random.default_rng(0)
    tensors = dict(tensors or {})
    if vocab_rows and "token_embd.weight" not in tensors:
        tensors["token_embd.weight"] = (rng.standard_normal((len(tokens), SHAPE["n_embd"])), "Q8_0")
    meta = {"llama.context_length": SHAPE["n_ctx"], "llama.embedding_length": SHAPE["n_embd"],
            "llama.block_count": SHAPE["n_layer"], "llama.feed_forward_length": SHAPE["n_inner"],
            "llama.attention.head_count": SHAPE["n_head"],
            "llama.attention.head_count_kv": SHAPE["n_kv_head"],
            "llama.attention.layer_norm_rms_epsilon": np.float32(1e-5),
            "llama.rope.freq_base": np.float32(10000.0),
            "tokenizer.ggml.model": tokenizer_model, "tokenizer.ggml.pre": pre,
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.merges": MERGES, "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.add_bos_token": False,
            "tokenizer.chat_template": TEMPLATE}
    meta.update(metadata or {})
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in meta.items():
        _add(w, key, value)
    for name, (array, kind) in tensors.items():
        array = np.asarray(array)
        if array.dtype == np.uint8:
            w.add_tensor(name, array, raw_dtype=gguf.GGMLQuantizationType[kind])
        else:
            data, qtype = quantized(array, kind)
            w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _add(w, key, value):
    """One metadata pair, typed as llama.cpp's converter types it."""
    T = gguf.GGUFValueType
    if value is None:
        return
    if isinstance(value, bool):
        w.add_key_value(key, value, T.BOOL)
    elif isinstance(value, np.float32):
        w.add_key_value(key, float(value), T.FLOAT32)
    elif isinstance(value, (int, np.integer)):
        w.add_key_value(key, int(value), T.UINT32)
    elif isinstance(value, str):
        w.add_key_value(key, value, T.STRING)
    elif isinstance(value, list) and value and isinstance(value[0], str):
        w.add_key_value(key, value, T.ARRAY, sub_type=T.STRING)
    elif isinstance(value, list):
        w.add_key_value(key, [int(v) for v in value], T.ARRAY, sub_type=T.INT32)
    else:
        raise TypeError(f"{key}: cannot store {value!r}")
