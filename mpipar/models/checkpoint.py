"""Saving a (possibly tensor-parallel) model as a Hugging Face style GPT-2 checkpoint.

``model.safetensors`` holds the full parameters under GPT-2's names (safetensors:
no pickle, nothing executes on load) and ``config.json`` beside it holds the
shape in Hugging Face's keys, so ``python -m mpipar.demo --weights`` and
``load_state_dict`` read it back. Shards are reassembled by gathering each
sharded parameter over the tensor-parallel group.
"""
import json
import os

import numpy as np

from ..collectives import allgather
from .params import is_sharded


def _merge(config, name, pieces):
    """The full parameter from every shard's piece (shard order)."""
    if name == "wte.weight" or name.endswith(("attn.c_proj.weight", "mlp.c_proj.weight")):
        return np.concatenate(pieces, axis=0)  # rows: vocabulary, heads' rows, hidden units
    if name.endswith(("mlp.c_fc.weight", "mlp.c_fc.bias")):
        return np.concatenate(pieces, axis=-1)
    # c_attn: each shard holds [q_r | k_r | v_r]; the full layout is [q | k | v]
    thirds = [np.split(piece, 3, axis=-1) for piece in pieces]
    return np.concatenate([np.concatenate([t[j] for t in thirds], axis=-1) for j in range(3)],
                          axis=-1)


def full_params(model):
    """Every parameter in full, on every rank of the model's tensor-parallel group."""
    tp, out = model.tp, {}
    for name, value in model.shards[0].items():
        if not isinstance(value, np.ndarray):
            continue
        if not is_sharded(name):
            out[name] = value.copy()
            continue
        if tp.comm.Get_size() == 1:
            pieces = [s[name] for s in model.shards]
        else:  # gather along the split axis, then cut at the known shard sizes
            axis = 0 if name == "wte.weight" or name.endswith("c_proj.weight") else -1
            sizes = tp.comm.allgather(value.shape[axis])  # small control data
            whole = allgather(tp.comm, value, axis=axis)
            pieces = np.split(whole, np.cumsum(sizes)[:-1], axis=axis)
        out[name] = _merge(model.config, name, pieces)
    return out


def save(model, folder, metadata=None):
    """Write ``folder``/model.safetensors and config.json (call on every rank of the
    tensor-parallel group; the group's rank 0 writes)."""
    from safetensors.numpy import save_file
    params = full_params(model)
    if model.tp.comm.Get_rank() != 0:
        return None
    os.makedirs(folder, exist_ok=True)
    c = model.config
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    save_file({k: np.ascontiguousarray(v) for k, v in params.items()},
              os.path.join(folder, "model.safetensors"), metadata=meta)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "gpt2", "vocab_size": c.vocab_size, "n_positions": c.n_ctx,
                   "n_embd": c.n_embd, "n_head": c.n_head, "n_layer": c.n_layer,
                   "layer_norm_epsilon": c.layer_norm_epsilon, "mpipar": metadata or {}},
                  f, indent=1)
    return os.path.join(folder, "model.safetensors")
