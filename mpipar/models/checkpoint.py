"""GPT-2 checkpoints in Hugging Face's layout: loading them, saving a (possibly tensor-parallel) model,
and `load_model`, which picks what an entry point runs (random, a checkpoint, or the shipped model).

``model.safetensors`` holds the full parameters under GPT-2's names (safetensors:
no pickle, nothing executes on load) and ``config.json`` beside it holds the
shape in Hugging Face's keys, so ``python -m mpipar.demo --weights`` and
``load_state_dict`` read it back in full; ``safetensors_source.SafetensorsSource``
reads only the slices of one shard. Saving reassembles every sharded parameter by
gathering it over the tensor-parallel group along the axis ``params`` records.

A checkpoint is one unit. ``save_params`` writes both files into a hidden folder beside
the target (``.NAME.saving-PID``), flushes them to disk, and only then puts that folder in
the target's place: a run killed while saving leaves the previous checkpoint as it was
(the hidden folder is all that remains of the new one). config.json records the sha256 of
the weights, and loading checks it, so weights and config from different saves never load
together. The swap is two renames (the old folder aside, the new one in): between them,
for microseconds, the target is missing and the old checkpoint is ``.NAME.previous-PID``.
"""
import hashlib
import json
import os
from pathlib import Path
import shutil

import numpy as np

from ..collectives import allgather
from ..tasks.addition import AdditionTask
from .config import PRESETS, GPTConfig
from .params import check_params, init_params, merge_shards, param_table
from .random_init import RandomSource
from .safetensors_source import SafetensorsSource, bf16_tensor, finite, param_name


def load_state_dict(path_or_dict, config=None):
    """GPT-2 parameters from a safetensors file (never pickle) or a dict of arrays.

    Keys may carry the ``transformer.`` prefix; the tied ``lm_head.weight`` and the
    ``attn.bias`` / ``attn.masked_bias`` buffers are ignored. With ``config`` every
    tensor is checked: a missing, unexpected or misshapen one is a ValueError naming it.
    """
    path = None
    if isinstance(path_or_dict, (str, os.PathLike)):
        path = os.fspath(path_or_dict)
        raw = _read_file(path)
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
    for name, value in params.items():
        finite(path or "parameters", name, value)
    return params


def _read_file(path):
    """Every tensor of a safetensors file as NumPy arrays (BF16 through ml_dtypes); a file that
    is not safetensors is a ValueError naming it."""
    from safetensors import SafetensorError, safe_open
    out = {}
    try:
        with safe_open(path, framework="numpy") as f:
            for key in f.keys():
                if f.get_slice(key).get_dtype() == "BF16":
                    out[key] = np.array(bf16_tensor(path, key)).astype(np.float32)
                else:
                    out[key] = f.get_tensor(key)
    except (OSError, SafetensorError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    return out


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


CHECKPOINT_FILES = ("model.safetensors", "config.json")


def folder_problem(folder):
    """Why ``folder`` cannot receive a checkpoint, or None: it must be new, or a folder
    holding a checkpoint and nothing else (saving replaces the folder as a whole)."""
    folder = os.path.abspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        return f"--out {folder!r} is a file, not a folder"
    if os.path.isdir(folder):
        other = sorted(set(os.listdir(folder)) - set(CHECKPOINT_FILES))
        if other:
            return (f"--out {folder!r} holds other files than a checkpoint ({', '.join(other[:3])}"
                    f"{', ...' if len(other) > 3 else ''}): saving replaces the folder as a whole, "
                    "so give a new folder or a checkpoint's")
    parent = os.path.dirname(folder)
    while not os.path.isdir(parent):  # the nearest folder that exists must take a new one
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"--out {folder!r}: the folder {parent!r} is not writable"
    return None


def sha256(path):
    """The hex sha256 of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_params(config, params, folder, metadata=None):
    """Write the full ``params`` of a GPT-2 of ``config`` as ``folder``/model.safetensors
    and its config.json (one process), as one unit (module docstring); returns the
    weights' path."""
    from safetensors.numpy import save_file
    problem = folder_problem(folder)
    if problem:
        raise ValueError(problem)
    folder = os.path.abspath(folder)
    parent, name = os.path.split(folder)
    os.makedirs(parent, exist_ok=True)
    saving = os.path.join(parent, f".{name}.saving-{os.getpid()}")
    shutil.rmtree(saving, ignore_errors=True)
    os.mkdir(saving)
    try:
        weights = os.path.join(saving, "model.safetensors")
        meta = {k: str(v) for k, v in (metadata or {}).items()}
        meta["mpipar_config"] = json.dumps(config.to_dict())  # inside the hashed file
        save_file({k: np.ascontiguousarray(v) for k, v in params.items()}, weights, metadata=meta)
        c = config
        with open(os.path.join(saving, "config.json"), "w") as f:
            json.dump({"model_type": "gpt2", "vocab_size": c.vocab_size, "n_positions": c.n_ctx,
                       "n_embd": c.n_embd, "n_head": c.n_head, "n_layer": c.n_layer,
                       "layer_norm_epsilon": c.layer_norm_epsilon,
                       "mpipar": dict(metadata or {}, weights_sha256=sha256(weights))}, f, indent=1)
        umask = os.umask(0)
        os.umask(umask)
        for file in CHECKPOINT_FILES:  # ordinary permissions, and on disk before the swap
            os.chmod(os.path.join(saving, file), 0o666 & ~umask)
            _fsync(os.path.join(saving, file))
        _fsync(saving)
        previous = os.path.join(parent, f".{name}.previous-{os.getpid()}")
        if os.path.isdir(folder):
            os.rename(folder, previous)
        os.rename(saving, folder)
        _fsync(parent)
        shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(saving, ignore_errors=True)
        raise
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
    if not isinstance(meta, dict):
        raise ValueError(f"{config_json}: its \"mpipar\" entry must be a JSON object")
    recorded = meta.get("weights_sha256")
    if recorded is not None and recorded != sha256(weights):
        raise ValueError(f"--weights {weights!r} is not the file its config.json was saved with "
                         "(the sha256 it records differs): a checkpoint copied or saved in part")
    task = None
    if meta.get("task") == "addition":
        try:
            task = AdditionTask(digits=int(meta["digits"]), seed=int(meta["seed"]),
                                heldout=int(meta["heldout"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{config_json}: its mpipar record of the addition task is incomplete "
                             f"or malformed ({type(e).__name__}: {e}); it needs whole numbers "
                             "digits, seed and heldout") from None
    _same_shape(weights, config_json, config)
    params = SafetensorsSource(weights, config) if sliced else load_state_dict(weights, config)
    return config, params, task


def _same_shape(weights, config_json, config):
    """A ValueError if the weights were saved by mpipar with another shape than config.json
    now says (n_head, say, which changes no tensor's shape and would load silently)."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(weights, framework="numpy") as f:
            saved = (f.metadata() or {}).get("mpipar_config")
    except (OSError, SafetensorError):
        return  # not readable: the loader names the file
    if saved is None:
        return
    saved = json.loads(saved)
    for key, value in config.to_dict().items():
        if key in saved and saved[key] != value:
            raise ValueError(f"{config_json} says {key} = {value!r}, but {weights} was saved with "
                             f"{key} = {saved[key]!r}")
