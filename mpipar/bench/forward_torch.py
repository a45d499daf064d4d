"""``bench forward --compare-torch``: Hugging Face transformers' model on the same weights.

GPT-2 runs as ``GPT2LMHeadModel``, the Llama shapes as ``LlamaForCausalLM``, built from a
config of the same shape and loaded with mpipar's parameters (on rank 0, in full), on the
same tokens: its forward time (median of the trials, with ``torch.set_num_threads`` = the
BLAS threads of one mpipar rank, ``OMP_NUM_THREADS``), the largest |logit difference| and how
often the two pick the same most likely token.

The weights' names (``hf_state_dict``) are the standard ones: GPT-2's under ``transformer.``,
whose Conv1D weights are (in, out) as mpipar's are, the LM head tied to ``wte``; Llama's
under ``model.``, whose Linear weights are (out, in): mpipar's (in, out) transposed. mpipar
rotates q and k in Hugging Face's half-split convention (``models.rotary``), so no row
permutation is needed. torch and transformers are optional: ``available()`` says whether
both import, and the benchmark refuses --compare-torch (on every rank alike) where not.
"""
import importlib.util
import os
import time

import numpy as np

from ..models.config import GPTConfig

#: the problem --compare-torch reports where torch or transformers is missing
MISSING = ("--compare-torch needs torch and transformers (Hugging Face), which do not import "
           "here; run it where they are installed, or drop --compare-torch")


def available():
    """True if torch and transformers can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


def hf_state_dict(config, params):
    """mpipar's full ``params`` under Hugging Face's names and layouts (NumPy arrays)."""
    if isinstance(config, GPTConfig):
        state = {"transformer." + name: value for name, value in params.items()}
        state["lm_head.weight"] = params["wte.weight"]  # tied
        return state
    state = {}
    for name, value in params.items():
        transpose = value.ndim == 2 and name.endswith("_proj.weight")  # Linear: (out, in)
        state["model." + name if name != "lm_head.weight" else name] = value.T if transpose else value
    if config.tie_embeddings:
        state["lm_head.weight"] = params["embed_tokens.weight"]
    return state


def hf_model(config, params):
    """The Hugging Face model of ``config`` with mpipar's ``params`` loaded, in eval mode."""
    import torch
    import transformers
    if isinstance(config, GPTConfig):
        hf_config = transformers.GPT2Config(
            vocab_size=config.vocab_size, n_positions=config.n_ctx, n_embd=config.n_embd,
            n_layer=config.n_layer, n_head=config.n_head,
            layer_norm_epsilon=config.layer_norm_epsilon, activation_function="gelu_new",
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = transformers.GPT2LMHeadModel(hf_config)
    else:
        hf_config = transformers.LlamaConfig(
            vocab_size=config.vocab_size, hidden_size=config.n_embd,
            intermediate_size=config.n_inner, num_hidden_layers=config.n_layer,
            num_attention_heads=config.n_head, num_key_value_heads=config.n_kv_head,
            head_dim=config.head_dim, max_position_embeddings=config.n_ctx,
            rms_norm_eps=config.rms_norm_eps, rope_theta=config.rope_theta,
            tie_word_embeddings=config.tie_embeddings, hidden_act="silu",
            attention_bias=False, mlp_bias=False)
        model = transformers.LlamaForCausalLM(hf_config)
    dtype = getattr(torch, np.dtype(config.dtype).name)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dtype)
             for k, v in hf_state_dict(config, params).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # GPT-2's causal-mask buffers (attn.bias, attn.masked_bias) are not weights
    missing = [k for k in missing if not k.endswith(("attn.bias", "attn.masked_bias"))]
    if missing or unexpected:
        raise RuntimeError(f"weights do not match the Hugging Face model: missing {missing}, "
                           f"unexpected {unexpected}")
    return model.to(dtype).eval()


def compare(config, params, tokens, logits, trials, warmup):
    """Time the Hugging Face model on ``tokens`` and compare its logits with mpipar's ``logits``
    (B, T, vocab): {"torch_seconds", "torch_seconds_all", "torch_threads",
    "max_abs_logit_diff", "argmax_agreement", "torch_version", "transformers_version"}."""
    import torch
    import transformers
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    model = hf_model(config, params)
    ids = torch.from_numpy(np.asarray(tokens, np.int64))
    with torch.inference_mode():
        for _ in range(warmup):
            model(ids)
        seconds = []
        for _ in range(trials):
            t0 = time.perf_counter()
            out = model(ids).logits
            seconds.append(time.perf_counter() - t0)
    theirs = out.float().numpy().astype(np.float64)
    ours = np.asarray(logits, np.float64)
    return {"torch_seconds": float(np.median(seconds)), "torch_seconds_all": seconds,
            "torch_threads": threads,
            "max_abs_logit_diff": float(np.max(np.abs(theirs - ours))),
            "argmax_agreement": float(np.mean(theirs.argmax(-1) == ours.argmax(-1))),
            "torch_version": torch.__version__, "transformers_version": transformers.__version__}
