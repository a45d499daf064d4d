"""The tokenizer, chat and GGUF-metadata sections of ``smollm2_reference.py``'s output.

Split from that script to keep each file short; it is run the same way (from the
repository root, in the throwaway environment that has transformers), never by the tests.
"""

from __future__ import annotations

import math

import numpy as np

SIG_DIGITS = 7

# Texts for the tokenizer cases: each probes a different part of byte-level BPE.
TOKENIZER_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you doing today?",
    "def add(a, b):\n    return a + b\n",
    "for (int i = 0; i < n; i++) {\n\tsum += x[i];\n}",
    "if x:\n    if y:\n        print({'k': [1, 2]})\n",
    "Wait... what?!?! -- (really) [yes]; {no} <maybe> @#$%^&*",
    "12345",
    "3.14159",
    "1,000,000",
    "Version 2.0 released in 2024 with 99.9% uptime.",
    "camelCaseName snake_case_name SHOUTING_CASE MixedCASE iPhone",
    "  leading spaces",
    "trailing spaces   ",
    "multiple     spaces   between",
    "line one\nline two\n\nline four\r\nend",
    "tab\tseparated\tvalues\n\tindented",
    "Café naïve façade über Straße",
    "中文文本 and 日本語のテキスト",
    "Emoji: 🙂🎉 done",
    "<|im_start|>user\nhi<|im_end|>",
    "<|endoftext|>",
    "x =  42\n    7 items\n\n100",
    "",
]

CHAT_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
CHAT_MESSAGES_SYSTEM = [
    {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
    {"role": "user", "content": "Why is the sky blue?"},
]


def sig(x: float, digits: int = SIG_DIGITS) -> float:
    """Round a float to `digits` significant digits (JSON stays short)."""
    x = float(x)
    if x == 0.0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


def permute_hf_to_gguf(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of Q/K rows (HF -> file)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_gguf_to_hf(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute_hf_to_gguf` (file -> HF)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_section(path: str, model) -> dict:
    """Metadata read straight from the file, and the Q/K row-layout check."""
    import gguf

    reader = gguf.GGUFReader(path)

    def field(key):
        return reader.fields[key].contents()

    meta = {
        "architecture": field("general.architecture"),
        "rope_freq_base": float(field("llama.rope.freq_base")),
        "rms_norm_eps": float(field("llama.attention.layer_norm_rms_epsilon")),
        "rope_dimension_count": int(field("llama.rope.dimension_count")),
        "context_length": int(field("llama.context_length")),
        "head_count": int(field("llama.attention.head_count")),
        "head_count_kv": int(field("llama.attention.head_count_kv")),
        "tokenizer_model": field("tokenizer.ggml.model"),
        "tokenizer_pre": field("tokenizer.ggml.pre"),
        "add_bos_token": bool(field("tokenizer.ggml.add_bos_token")),
        "bos_token_id": int(field("tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(field("tokenizer.ggml.eos_token_id")),
        "tensor_types": {},
    }
    tensors = {t.name: t for t in reader.tensors}
    for t in reader.tensors:
        kind = t.tensor_type.name
        meta["tensor_types"][kind] = meta["tensor_types"].get(kind, 0) + 1
    meta["token_embd_type"] = tensors["token_embd.weight"].tensor_type.name
    meta["has_output_weight"] = "output.weight" in tensors

    attn = model.model.layers[0].self_attn
    checks = {}
    for name, hf_weight, n_head in [
        ("blk.0.attn_q.weight", attn.q_proj.weight, int(meta["head_count"])),
        ("blk.0.attn_k.weight", attn.k_proj.weight, int(meta["head_count_kv"])),
    ]:
        t = tensors[name]
        raw = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        hf = hf_weight.detach().cpu().numpy()
        checks[name] = {
            "shape": list(raw.shape),
            "n_head": n_head,
            "hf_equals_raw": bool(np.array_equal(hf, raw)),
            "hf_equals_permute_hf_to_gguf(raw)": bool(np.array_equal(hf, permute_hf_to_gguf(raw, n_head))),
            "hf_equals_permute_gguf_to_hf(raw)": bool(np.array_equal(hf, permute_gguf_to_hf(raw, n_head))),
            "raw_equals_permute_hf_to_gguf(hf)": bool(np.array_equal(raw, permute_hf_to_gguf(hf, n_head))),
            "max_abs_diff_hf_vs_raw": sig(np.abs(hf - raw).max()),
        }
    meta["qk_layout"] = {
        "permute_hf_to_gguf": (
            "w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)"
        ),
        "permute_gguf_to_hf": (
            "w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)"
        ),
        "checks": checks,
    }
    return meta


# ---------------------------------------------------------------- tokenizer


def llama_cpp_style_tokenizer(tok):
    """A copy of the backend tokenizer with llama.cpp's "smollm" pre-tokenizer.

    llama.cpp splits every digit off first (regex \\p{N}) and then applies the
    GPT-2 regex; SmolLM2's own tokenizer.json does the same with
    Digits(individual_digits=True) + ByteLevel.  transformers' GGUF loader
    does not know the "smollm" pre-tokenizer name and falls back to plain
    GPT-2 ByteLevel, which differs only when a run of whitespace comes right
    before a digit (the vocabulary has no token containing a digit besides
    the digits themselves).
    """
    from tokenizers import Tokenizer, pre_tokenizers

    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    return backend


def tokenizer_section(tok) -> tuple[list, dict]:
    digit_split = llama_cpp_style_tokenizer(tok)
    cases = []
    differing = []
    for text in TOKENIZER_TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        case = {
            "text": text,
            "ids": ids,
            "decoded": tok.decode(ids),
            "tokens": tok.convert_ids_to_tokens(ids),
        }
        alt = digit_split.encode(text, add_special_tokens=False).ids
        if alt != ids:
            case["ids_llama_cpp_smollm_pretokenizer"] = alt
            differing.append(text)
        cases.append(case)
    default_ids = tok.encode("Hello world")
    plain_ids = tok.encode("Hello world", add_special_tokens=False)
    info = {
        "class": type(tok).__name__,
        "adds_bos": bool(tok.bos_token_id is not None and default_ids[:1] == [tok.bos_token_id]),
        "default_encode_equals_no_special": default_ids == plain_ids,
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "special_tokens": {t: tok.convert_tokens_to_ids(t) for t in tok.all_special_tokens},
        "pre_tokenizer": str(tok.backend_tokenizer.pre_tokenizer),
        "encode_call": "tokenizer.encode(text, add_special_tokens=False)",
        "texts_where_llama_cpp_smollm_pretokenizer_differs": differing,
        "note": (
            "ids come from transformers' GGUF tokenizer as loaded (plain GPT-2 ByteLevel "
            "pre-tokenizer). llama.cpp's 'smollm' pre-tokenizer and SmolLM2's tokenizer.json "
            "split digits first; where that changes the ids, the case also has "
            "ids_llama_cpp_smollm_pretokenizer."
        ),
    }
    return cases, info


def chat_section(tok) -> dict:
    def render(messages):
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return {
            "messages": messages,
            "rendered": rendered,
            "ids": tok.encode(rendered, add_special_tokens=False),
        }

    section = render(CHAT_MESSAGES)
    section["system_user"] = render(CHAT_MESSAGES_SYSTEM)
    section["template"] = tok.chat_template
    return section


# ---------------------------------------------------------------- model
