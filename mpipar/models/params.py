"""GPT-2's configuration and parameters: presets, random init, safetensors loading, sharding.

Parameter names and layouts are Hugging Face's GPT-2 ones (Radford et al. 2019,
"Language Models are Unsupervised Multitask Learners"); its Conv1D stores
weights as (in, out), so ``x @ W + b`` applies them:

    wte.weight (vocab, d)   wpe.weight (n_ctx, d)   ln_f.weight|bias (d)
    h.{i}.ln_1.weight|bias (d)          h.{i}.ln_2.weight|bias (d)
    h.{i}.attn.c_attn.weight (d, 3d)    .bias (3d)     [q | k | v] columns
    h.{i}.attn.c_proj.weight (d, d)     .bias (d)
    h.{i}.mlp.c_fc.weight (d, 4d)       .bias (4d)
    h.{i}.mlp.c_proj.weight (4d, d)     .bias (d)
"""
import os

import numpy as np

from ..collectives.blocks import split


def param_shapes(config):
    """Every parameter's name and shape."""
    d, f = config.n_embd, 4 * config.n_embd
    shapes = {"wte.weight": (config.vocab_size, d), "wpe.weight": (config.n_ctx, d),
              "ln_f.weight": (d,), "ln_f.bias": (d,)}
    for i in range(config.n_layer):
        h = f"h.{i}."
        shapes.update({h + "ln_1.weight": (d,), h + "ln_1.bias": (d,),
                       h + "ln_2.weight": (d,), h + "ln_2.bias": (d,),
                       h + "attn.c_attn.weight": (d, 3 * d), h + "attn.c_attn.bias": (3 * d,),
                       h + "attn.c_proj.weight": (d, d), h + "attn.c_proj.bias": (d,),
                       h + "mlp.c_fc.weight": (d, f), h + "mlp.c_fc.bias": (f,),
                       h + "mlp.c_proj.weight": (f, d), h + "mlp.c_proj.bias": (d,)})
    return shapes


def init_params(config, seed=0):
    """A deterministic random GPT-2: N(0, 0.02) weights, residual projections scaled by
    1/sqrt(2 n_layer) (Radford et al. 2019, sec. 2.3), zero biases, unit LayerNorm gains."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith("bias") or "ln_" in name:
            value = np.ones(shape) if name.endswith("ln_1.weight") or name.endswith(
                "ln_2.weight") or name == "ln_f.weight" else np.zeros(shape)
        else:
            std = 0.02 / np.sqrt(2 * config.n_layer) if name.endswith("c_proj.weight") else 0.02
            value = rng.normal(0.0, std, shape)
        params[name] = value.astype(config.dtype)
    return params


def _ignored(name):
    """The tied ``lm_head.weight`` and the causal-mask buffers ``h.{i}.attn.bias|masked_bias``."""
    parts = name.split(".")
    return name == "lm_head.weight" or parts[-2:] in (["attn", "bias"], ["attn", "masked_bias"])


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
        name = key[len("transformer."):] if key.startswith("transformer.") else key
        if _ignored(name):
            continue
        params[name] = np.asarray(value)
    if config is not None:
        check_params(config, params)
        params = {k: v.astype(config.dtype, copy=False) for k, v in params.items()}
    return params


def check_params(config, params):
    """Raise ValueError naming the first missing, unexpected or misshapen tensor."""
    shapes = param_shapes(config)
    for name, shape in shapes.items():
        if name not in params:
            raise ValueError(f"parameter {name!r} is missing")
        if np.asarray(params[name]).dtype.kind != "f":
            raise ValueError(f"parameter {name!r} has dtype {params[name].dtype}, not a float")
        if tuple(params[name].shape) != shape:
            raise ValueError(f"parameter {name!r} has shape {tuple(params[name].shape)}, "
                             f"expected {shape} for {config}")
    extra = sorted(set(params) - set(shapes))
    if extra:
        raise ValueError(f"unexpected parameter {extra[0]!r} (and {len(extra) - 1} more)"
                         if len(extra) > 1 else f"unexpected parameter {extra[0]!r}")


SHARDED = ("wte.weight", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
           "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight")


def is_sharded(name):
    """True for parameters split over tensor-parallel ranks, False for replicated ones."""
    return name.endswith(SHARDED)


def shard_params(config, params, r, p):
    """The parameters shard r of a p-way tensor-parallel split owns, as contiguous copies.

    Attention splits by heads: shard r owns heads ``split(n_head, p, r)``; its Q, K
    and V columns of c_attn (column-parallel) and the matching rows of c_proj
    (row-parallel). The MLP splits its 4d hidden units: columns of c_fc, rows of
    c_proj. The token embedding splits by vocabulary rows. Everything else --
    position embedding, LayerNorms, row-parallel biases -- is replicated.
    """
    d = config.n_embd
    hd = d // config.n_head
    heads = split(config.n_head, p, r)
    cols = np.arange(heads.start * hd, heads.stop * hd)
    qkv = np.concatenate([cols, d + cols, 2 * d + cols])
    hidden = split(4 * d, p, r)
    vocab = split(config.vocab_size, p, r)
    dtype = np.dtype(config.dtype)
    take = lambda a, idx, axis=0: np.ascontiguousarray(np.take(a, idx, axis=axis), dtype)  # noqa: E731
    shard = {"wte.weight": take(params["wte.weight"], np.arange(vocab.start, vocab.stop)),
             "vocab": vocab, "heads": heads}
    for name, value in params.items():
        if name == "wte.weight":
            continue
        if name.endswith("attn.c_attn.weight"):
            value = take(value, qkv, axis=1)
        elif name.endswith("attn.c_attn.bias"):
            value = take(value, qkv)
        elif name.endswith("attn.c_proj.weight"):
            value = take(value, cols)
        elif name.endswith("mlp.c_fc.weight"):
            value = take(value, np.arange(hidden.start, hidden.stop), axis=1)
        elif name.endswith("mlp.c_fc.bias") or name.endswith("mlp.c_proj.weight"):
            value = take(value, np.arange(hidden.start, hidden.stop))
        else:  # replicated: shared by every shard this process holds
            value = np.asarray(value, dtype)
        shard[name] = value
    return shard
