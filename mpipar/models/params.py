"""The models' parameters in one table -- name -> shape, init, split -- and everything that reads it.

GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask
Learners"): Hugging Face's names and layouts; its Conv1D stores weights as
(in, out), so ``x @ W + b`` applies them. ``TOP`` holds the model-wide
parameters and ``BLOCK`` those of every transformer block ``h.{i}.``.

Llama (Touvron et al. 2023): Hugging Face's names without the ``model.`` prefix,
``LLAMA_TOP`` and ``LLAMA_BLOCK`` (``layers.{i}.``); no biases. mpipar stores its
linear weights as (in, out) as well, so the same ``x @ W`` applies them: a loader
transposes Hugging Face's nn.Linear (out, in). ``embed_tokens`` is (vocab, d) in
both. ``lm_head.weight`` exists only where the config does not tie it to the
embedding. Which pair of tables a config reads: ``architecture(config)``.

A ``Split`` records, once, how a tensor-parallel split cuts a parameter (the idea
of Megatron-LM's ``set_tensor_model_parallel_attributes``): the axis, and the
units that axis is made of -- attention heads of ``head_dim`` columns, key/value
heads, MLP hidden units, vocabulary rows. c_attn's axis holds three parts side by
side, [q | k | v], each cut in its own unit. Shard r of p owns ``owned(config, unit,
p, r)`` of every unit (``np.array_split`` sizes, hidden units balanced against the heads;
the key/value heads its query heads read). ``shard_params``, ``merge_shards``, ``is_sharded``,
the checkpoint, the optimizer and data parallelism all read the table: adding a parameter is
one line here.

Shards are cut from a *source*: a dict of full arrays or a reader of slices (sources.py).
"""
from dataclasses import dataclass
import functools
import math

import numpy as np

from ..collectives.blocks import split as block_of
from ..collectives.blocks import weighted_split_offsets
from .config import LlamaConfig


@dataclass(frozen=True)
class Split:
    """A parameter cut along ``axis``; ``parts`` names the unit of each consecutive part of that axis."""

    axis: int     #: the axis that is cut
    parts: tuple  #: one unit per part: "heads", "kv_heads", "hidden" or "vocab"


@dataclass(frozen=True)
class Param:
    """One row of the table: the full shape, how ``init_params`` fills it, how a split cuts it."""

    shape: tuple          #: in the dimensions of ``dims``: "d", "qkv", "q", "kv", "hidden", "vocab", "ctx"
    init: str             #: "normal" N(0, 0.02), "residual" N(0, 0.02 / sqrt(2 n_layer)), "zeros", "ones"
    split: Split = None   #: None: replicated on every shard


QKV = ("heads", "kv_heads", "kv_heads")  # c_attn's columns: [q | k | v]

TOP = {
    "wte.weight": Param(("vocab", "d"), "normal", Split(0, ("vocab",))),  # also the tied LM head
    "wpe.weight": Param(("ctx", "d"), "normal"),
    "ln_f.weight": Param(("d",), "ones"),
    "ln_f.bias": Param(("d",), "zeros"),
}
BLOCK = {
    "ln_1.weight": Param(("d",), "ones"),
    "ln_1.bias": Param(("d",), "zeros"),
    "ln_2.weight": Param(("d",), "ones"),
    "ln_2.bias": Param(("d",), "zeros"),
    "attn.c_attn.weight": Param(("d", "qkv"), "normal", Split(1, QKV)),  # column-parallel
    "attn.c_attn.bias": Param(("qkv",), "zeros", Split(0, QKV)),
    "attn.c_proj.weight": Param(("d", "d"), "residual", Split(0, ("heads",))),  # row-parallel
    "attn.c_proj.bias": Param(("d",), "zeros"),  # added once, after the reduction
    "mlp.c_fc.weight": Param(("d", "hidden"), "normal", Split(1, ("hidden",))),  # column-parallel
    "mlp.c_fc.bias": Param(("hidden",), "zeros", Split(0, ("hidden",))),
    "mlp.c_proj.weight": Param(("hidden", "d"), "residual", Split(0, ("hidden",))),  # row-parallel
    "mlp.c_proj.bias": Param(("d",), "zeros"),
}

VOCAB_ROWS = Split(0, ("vocab",))
LLAMA_TOP = {
    "embed_tokens.weight": Param(("vocab", "d"), "normal", VOCAB_ROWS),  # the LM head too, if tied
    "norm.weight": Param(("d",), "ones"),
}
LLAMA_HEAD = {"lm_head.weight": Param(("vocab", "d"), "normal", VOCAB_ROWS)}  # untied models only
LLAMA_BLOCK = {
    "input_layernorm.weight": Param(("d",), "ones"),
    "self_attn.q_proj.weight": Param(("d", "q"), "normal", Split(1, ("heads",))),  # column-parallel
    "self_attn.k_proj.weight": Param(("d", "kv"), "normal", Split(1, ("kv_heads",))),
    "self_attn.v_proj.weight": Param(("d", "kv"), "normal", Split(1, ("kv_heads",))),
    "self_attn.o_proj.weight": Param(("q", "d"), "normal", Split(0, ("heads",))),  # row-parallel
    "post_attention_layernorm.weight": Param(("d",), "ones"),
    "mlp.gate_proj.weight": Param(("d", "hidden"), "normal", Split(1, ("hidden",))),  # column-parallel
    "mlp.up_proj.weight": Param(("d", "hidden"), "normal", Split(1, ("hidden",))),
    "mlp.down_proj.weight": Param(("hidden", "d"), "normal", Split(0, ("hidden",))),  # row-parallel
}


@dataclass(frozen=True)
class Architecture:
    """A model's rows: the model-wide ones, and those of every block ``{prefix}.{i}.``."""

    top: dict
    block: dict
    prefix: str


GPT2, LLAMA = Architecture(TOP, BLOCK, "h"), Architecture(LLAMA_TOP, LLAMA_BLOCK, "layers")
_TOPS = {**TOP, **LLAMA_TOP, **LLAMA_HEAD}  # model-wide names never collide
_BLOCKS = {arch.prefix: arch.block for arch in (GPT2, LLAMA)}


def architecture(config):
    """Which rows a config's model has: LLAMA for a LlamaConfig, else GPT-2's."""
    return LLAMA if isinstance(config, LlamaConfig) else GPT2


def dims(config):
    """The sizes the table's shapes are written in."""
    q, kv = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
    return {"d": config.n_embd, "qkv": q + 2 * kv, "q": q, "kv": kv, "hidden": config.n_inner,
            "vocab": config.vocab_size, "ctx": config.n_ctx}


def units(config):
    """unit -> (how many the model has, width of one along a split axis)."""
    return {"heads": (config.n_head, config.head_dim), "kv_heads": (config.n_kv_head, config.head_dim),
            "hidden": (config.n_inner, 1), "vocab": (config.vocab_size, 1)}


def param_table(config):
    """Every parameter's full name and table row, in checkpoint order (model-wide first)."""
    arch = architecture(config)
    table = dict(arch.top)
    if not getattr(config, "tie_embeddings", True):
        table.update(LLAMA_HEAD)
    for i in range(config.n_layer):
        table.update({f"{arch.prefix}.{i}.{name}": param for name, param in arch.block.items()})
    return table


def param_shapes(config):
    """Every parameter's name and full shape."""
    size = dims(config)
    return {name: tuple(size[n] for n in param.shape) for name, param in param_table(config).items()}


def param_count(config):
    """Psi: how many numbers the whole model has (a tied weight counted once)."""
    return sum(math.prod(shape) for shape in param_shapes(config).values())


def spec(name):
    """The table's row of a parameter: ``h.3.mlp.c_fc.weight`` reads BLOCK["mlp.c_fc.weight"],
    ``layers.3.mlp.up_proj.weight`` LLAMA_BLOCK["mlp.up_proj.weight"]."""
    parts = name.split(".", 2)
    return _BLOCKS[parts[0]][parts[2]] if parts[0] in _BLOCKS else _TOPS[name]


def is_sharded(name):
    """True for parameters split over tensor-parallel ranks, False for replicated ones."""
    return spec(name).split is not None


def init_params(config, seed=0):
    """Deterministic random parameters, in full. GPT-2: N(0, 0.02) weights, residual projections
    scaled by 1/sqrt(2 n_layer) (Radford et al. 2019, sec. 2.3), zero biases, unit LayerNorm
    gains. Llama: N(0, 0.02) weights (Hugging Face's initializer_range) and unit RMSNorm gains.

    The model is ``random_init``'s, defined block by block: a rank that needs only its shard asks
    ``random_init.RandomSource(config, seed)`` instead and gets the same bits as
    ``shard_params(config, init_params(config, seed), r, p)`` while generating its slices only.
    """
    from .random_init import random_params  # random_init reads this table
    return random_params(config, seed)


def check_params(config, params):
    """Raise ValueError naming the first missing, unexpected or misshapen tensor of ``params``
    (a dict of arrays, or a source: then the reader answers for dtypes)."""
    from .sources import as_source  # sources reads this table
    shapes, source = param_shapes(config), as_source(params)
    present = set(source.names())
    for name, shape in shapes.items():
        if name not in present:
            raise ValueError(f"parameter {name!r} is missing")
        if isinstance(params, dict) and np.asarray(params[name]).dtype.kind != "f":
            raise ValueError(f"parameter {name!r} has dtype {params[name].dtype}, not a float")
        if source.shape(name) != shape:
            raise ValueError(f"parameter {name!r} has shape {source.shape(name)}, "
                             f"expected {shape} for {config}")
    extra = sorted(present - set(shapes))
    if extra:
        raise ValueError(f"unexpected parameter {extra[0]!r} (and {len(extra) - 1} more)"
                         if len(extra) > 1 else f"unexpected parameter {extra[0]!r}")


def owned(config, unit, p, r):
    """The slice of ``unit`` indices that shard r of a p-way split owns.

    Query heads and vocabulary rows: ``np.array_split`` blocks. Key/value heads: those the
    shard's query heads read -- n_head / n_kv_head query heads share one (grouped-query
    attention), so a key/value head is replicated where p > n_kv_head. Hidden units:
    ``hidden_offsets``, which evens out the weights of a block over the shards.
    """
    if unit == "kv_heads":
        heads, group = block_of(config.n_head, p, r), config.n_head // config.n_kv_head
        return slice(heads.start // group, (heads.stop - 1) // group + 1)
    if unit == "hidden":
        offsets = hidden_offsets(config, p)
        return slice(offsets[r], offsets[r + 1])
    return block_of(units(config)[unit][0], p, r)


@functools.lru_cache(maxsize=64)
def hidden_offsets(config, p):
    """Where the MLP's hidden units are cut: a block's weights as even over the shards as whole
    units allow (``weighted_split_offsets``); ``np.array_split`` blocks where p divides the heads.
    GPT-2 small on 8 ranks: ranks 0-3 hold 2 heads and 320 units, ranks 4-7 1 head and 448, 0.89 M
    numbers each (384 units each gave 0.98 M against 0.79 M: the largest shard was 11 % larger).
    """
    size, per_unit, fixed = dims(config), 0, [0] * p
    for param in architecture(config).block.values():
        if param.split is None:
            continue
        rest = math.prod(size[n] for i, n in enumerate(param.shape) if i != param.split.axis)
        for unit in param.split.parts:
            if unit == "hidden":
                per_unit += rest
                continue
            for r in range(p):
                mine = owned(config, unit, p, r)
                fixed[r] += rest * units(config)[unit][1] * (mine.stop - mine.start)
    return weighted_split_offsets(config.n_inner, fixed, per_unit)


def shard_index(config, split, p, r):
    """The indices along ``split.axis`` that shard r of p owns, part after part."""
    offset, index = 0, []
    for unit in split.parts:
        count, width = units(config)[unit]
        mine = owned(config, unit, p, r)
        index.append(offset + np.arange(mine.start * width, mine.stop * width))
        offset += count * width
    return np.concatenate(index)


def shard_params(config, params, r, p):
    """The parameters shard r of a p-way tensor-parallel split owns, as contiguous copies.

    ``params``: a dict of full arrays or a source (sources.py), asked
    for this shard's indices only. Besides the arrays, the shard records the slice of
    every unit it owns (``heads``, ``kv_heads``, ``hidden``, ``vocab``). Replicated
    parameters of a dict are not copied: every shard this process holds shares them
    (``RandomSource`` and ``SafetensorsSource`` hand every shard the same array too).
    """
    from .sources import as_source  # sources reads this table
    dtype, source = np.dtype(config.dtype), as_source(params)
    shard = {unit: owned(config, unit, p, r) for unit in units(config)}
    for name in source.names():
        cut = spec(name).split
        if cut is None:
            shard[name] = np.asarray(source.take(name), dtype)
        else:
            index = shard_index(config, cut, p, r)
            shard[name] = np.ascontiguousarray(source.take(name, cut.axis, index), dtype)
    return shard


def merge_shards(config, name, pieces):
    """The full parameter ``name`` from the pieces of shards 0..p-1, each put back where
    ``shard_params`` took it from (a replicated key/value head is written by each owner)."""
    cut = spec(name).split
    full = np.empty(param_shapes(config)[name], pieces[0].dtype)
    where = [slice(None)] * full.ndim
    for r, piece in enumerate(pieces):
        where[cut.axis] = shard_index(config, cut, len(pieces), r)
        full[tuple(where)] = piece
    return full
