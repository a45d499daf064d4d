"""GPT-2 checkpoints in Hugging Face's layout: loading them, saving a (possibly tensor-parallel) model,
and `load_model`, which picks what an entry point runs (random, a checkpoint, or the shipped model).

``model.safetensors`` holds the full parameters under GPT-2's names (safetensors:
no pickle, nothing executes on load) and ``config.json`` beside it holds the
shape in Hugging Face's keys, so ``python -m mpipar.demo --weights`` and
``load_state_dict`` read it back in full; ``safetensors_source.SafetensorsSource``
reads only the slices of one shard. Saving reassembles every sharded parameter by
gathering it over the tensor-parallel group along the axis ``params`` records.
"""
import json
import os
from pathlib import Path

import numpy as np

from ..collectives import allgather
from ..tasks.addition import AdditionTask
from .config import PRESETS, GPTConfig
from .params import check_params, init_params, merge_shards, param_table
from .random_init import RandomSource
from .safetensors_source import SafetensorsSource, param_name


def load_state_dict(path_or_dict, config=None):
    """GPT-2 parameters from a safetensors file (never pickle) or a dict of arrays.

    Keys may carry the ``transformer.`` prefix; the tied ``lm_head.weight`` and the
    ``attn.bias`` / ``attn.masked_bias`` buffers are ignored. With ``config`` every
    tensor is checked: a missing, unexpected or misshapen one is a ValueError naming it.
    """
    if isinstance(path_or_dict, (str, os.PathLike)):
        from safetensors.numpy import load_file
        raw = load_file(os.fspath(path_or_dict))
    else:
        raw = dict(path_or_dict)
    params = {}
    for key, value in raw.items():
        name = param_name(key)
        if name is None:
            continue
        params[name] = np.asarray(value)
    if config is not None:
        check_params(config, params)
        params = {k: v.astype(config.dtype, copy=False) for k, v in params.items()}
    return params


def full_params(model):
    """Every parameter the model holds (a pipeline stage: its own), in full, on every rank of
    the model's tensor-parallel group."""
    tp, out = model.tp, {}
    for name, param in param_table(model.config).items():
        if name not in model.shards[0]:
            continue
        value = model.shards[0][name]
        if param.split is None:
            out[name] = value.copy()
            continue
        if tp.comm.Get_size() == 1:
            pieces = [s[name] for s in model.shards]
        else:  # gather along the split axis, then cut at the known shard sizes
            axis = param.split.axis
            sizes = tp.comm.allgather(value.shape[axis])  # small control data
            whole = allgather(tp.comm, value, axis=axis)
            pieces = np.split(whole, np.cumsum(sizes)[:-1], axis=axis)
        out[name] = merge_shards(model.config, name, pieces)
    return out


def save(model, folder, metadata=None):
    """Write ``folder``/model.safetensors and config.json (call on every rank of the
    tensor-parallel group; the group's rank 0 writes)."""
    params = full_params(model)
    if model.tp.comm.Get_rank() != 0:
        return None
    return save_params(model.config, params, folder, metadata)


def save_params(config, params, folder, metadata=None):
    """Write the full ``params`` of a GPT-2 of ``config`` as ``folder``/model.safetensors
    and its config.json (one process); returns the weights' path."""
    from safetensors.numpy import save_file
    os.makedirs(folder, exist_ok=True)
    c = config
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    save_file({k: np.ascontiguousarray(v) for k, v in params.items()},
              os.path.join(folder, "model.safetensors"), metadata=meta)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "gpt2", "vocab_size": c.vocab_size, "n_positions": c.n_ctx,
                   "n_embd": c.n_embd, "n_head": c.n_head, "n_layer": c.n_layer,
                   "layer_norm_epsilon": c.layer_norm_epsilon, "mpipar": metadata or {}},
                  f, indent=1)
    return os.path.join(folder, "model.safetensors")


#: the model the demo ships with, trained by ``python -m mpipar.train`` (README, "Training")
SHIPPED = Path(__file__).resolve().parents[1] / "data" / "addition" / "model.safetensors"


def load_model(preset=None, weights=None, seed=0, sliced=False):
    """(config, params, task) of the model an entry point runs.

    ``preset``: random weights of that shape (``init_params(PRESETS[preset], seed)``);
    ``weights``: a ``model.safetensors`` with its Hugging Face ``config.json`` beside it;
    neither: the addition model shipped in ``mpipar/data/addition``. ``task`` is the
    AdditionTask a checkpoint of ``python -m mpipar.train`` records in its config.json,
    else None. Bad input is a ValueError naming the option or file.

    ``sliced=True``: ``params`` is a source instead of full arrays -- a
    ``random_init.RandomSource`` for a preset (the same bits as ``init_params``), a
    ``safetensors_source.SafetensorsSource`` for a file, its header checked -- from which
    a model built over a tensor-parallel group generates or reads only its own slices.
    """
    if preset is not None and weights is not None:
        raise ValueError("give --preset (random weights) or --weights, not both")
    if preset is not None:
        config = PRESETS[preset]
        return config, RandomSource(config, seed) if sliced else init_params(config, seed), None
    weights = os.fspath(weights or SHIPPED)
    config_json = os.path.join(os.path.dirname(os.path.abspath(weights)), "config.json")
    if not os.path.isfile(weights):
        raise ValueError(f"--weights {weights!r}: no such file")
    if not os.path.isfile(config_json):
        raise ValueError(f"--weights needs the Hugging Face config.json beside it: {config_json}")
    config = GPTConfig.from_hf_json(config_json)
    with open(config_json) as f:
        meta = json.load(f).get("mpipar", {})
    task = None
    if meta.get("task") == "addition":
        task = AdditionTask(digits=int(meta["digits"]), seed=int(meta["seed"]),
                            heldout=int(meta["heldout"]))
    params = SafetensorsSource(weights, config) if sliced else load_state_dict(weights, config)
    return config, params, task
