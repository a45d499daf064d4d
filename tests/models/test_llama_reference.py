"""The real SmolLM2-135M-Instruct read from its GGUF file, on one process: the configuration and
shapes the file states, and the logits and greedy tokens of Hugging Face transformers on the same
file (tests/data/smollm2_reference.json, written by tools/smollm2_reference.py), an independent
implementation -- the only proof that the rotary layout and the un-permuted q and k rows are right.

How close the logits must be: both implementations compute in float32 from the same dequantized
weights, so each lies within ``error_bound`` of the exact logits (reference_llama: (8 n_layer + 3)
sqrt(n_inner) u relative to the largest logit, 5.7e-4 for 30 layers) and they lie within twice
that of each other. That bound assumes a well-conditioned network; measured, the difference is
hundreds of times smaller (max |difference| 5e-5 on logits up to ~35).
"""
from dataclasses import replace
import functools

from mpi4py import MPI
import numpy as np
import pytest
import reference_llama as ref
from smollm2_ref import smollm2_reference

from mpipar.models import LlamaConfig, load_gguf
from mpipar.models.gguf import smollm2_path

PROMPTS = smollm2_reference()["model"]["prompts"]


@functools.cache
def smollm2():
    return load_gguf(smollm2_path(), MPI.COMM_SELF)


def test_the_file_states_smollm2s_shape():
    model = smollm2()
    c = model.config
    assert np.float32(c.rms_norm_eps) == np.float32(1e-5)  # stored as a float32 in the file
    assert replace(c, rms_norm_eps=1e-5) == LlamaConfig(
        vocab_size=49152, n_ctx=8192, n_embd=576, n_head=9, n_kv_head=3, n_layer=30, n_inner=1536,
        rms_norm_eps=1e-5, rope_theta=100000.0, tie_embeddings=True)
    s = model.shards[0]
    assert s["embed_tokens.weight"].shape == (49152, 576) and s["norm.weight"].shape == (576,)
    assert s["layers.29.self_attn.q_proj.weight"].shape == (576, 576)
    assert s["layers.29.self_attn.k_proj.weight"].shape == (576, 192)
    assert s["layers.0.mlp.down_proj.weight"].shape == (1536, 576)
    # the embedding, the final gain, and per block two gains, q and o, k and v, gate, up and down
    n = 49152 * 576 + 576 + 30 * (2 * 576 + 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536)
    assert model.param_bytes() == 4 * n and n == 134_515_008


@pytest.mark.parametrize("prompt", PROMPTS, ids=[p["name"] for p in PROMPTS])
def test_logits_match_hugging_face_transformers(prompt):
    model = smollm2()
    logits = model.forward(np.array([prompt["ids"]]))[0].astype(np.float64)  # (T, vocab)
    assert np.isfinite(logits).all()
    top = np.take_along_axis(logits, np.array(prompt["top_ids"]), -1)
    probes = logits[:, prompt["probe_ids"]]
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    diff = {"top-20": np.abs(top - prompt["top_logits"]).max(),
            "probes": np.abs(probes - prompt["probe_logits"]).max(),
            "logsumexp": np.abs(lse - prompt["last_logsumexp"]).max()}
    print(prompt["name"], "max |mpipar - transformers|:", ", ".join(f"{k} {v:.2g}" for k, v in diff.items()))
    bound = 2 * ref.error_bound(model.config) * np.abs(logits).max()
    assert max(diff.values()) <= bound, diff
    assert (logits.argmax(-1) == np.array(prompt["top_ids"])[:, 0]).all()  # the same favourite everywhere


@pytest.mark.parametrize("prompt", PROMPTS, ids=[p["name"] for p in PROMPTS])
def test_greedy_tokens_are_hugging_faces(prompt):
    greedy = prompt["greedy"]
    out = smollm2().generate(np.array([prompt["ids"]]), len(greedy["ids"]))
    # the closest call among them (top-1 minus top-2) is 0.0076, far above the logits' difference
    assert out[0, len(prompt["ids"]):].tolist() == greedy["ids"]
