"""The random model of a config, defined block by block so that a rank generates only its own slices.

``RandomSource(config, seed)`` is a source of shards (see ``params``): ``shard_params`` asks it
for a shard's indices and it draws only the blocks that cover them; ``init_params`` (in
``params``) is the same definition asked for every index, so shard r of the full random model
and shard r generated alone are the same bits.

The definition. Every parameter has a *block axis* -- the axis its split cuts (``Split.axis``),
axis 0 for a replicated one -- made of parts side by side (c_attn's [q | k | v]; one part if it
is not cut in several). Each part is cut into blocks of ``BLOCK`` consecutive indices (the last
one shorter). Block j of part i of parameter ``name`` is

    std * rng.standard_normal(the parameter's shape, the block axis as long as block j)
    rng = np.random.default_rng([seed, crc32(name), i, j])

drawn in float64 (in C order, as numpy fills an array), then rounded to ``config.dtype``. The
key goes through numpy's SeedSequence (each entry below 2**32 is one word of entropy, so the
keys of distinct blocks are distinct) into a PCG64 generator: the blocks are independent
streams, any of which can be drawn without the others (the idea of counter-based generators,
Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3", with SeedSequence hashing
the counter). ``std``: 0.02 for "normal", 0.02 / sqrt(2 n_layer) for "residual"
(Radford et al. 2019, sec. 2.3); "zeros" and "ones" draw nothing.

Cost. One generator per block, tens of microseconds to create, against the milliseconds its
64 x 768 normals take in gpt2-small: its ~2,500 blocks are generated in about the time one
stream over the whole model takes (cache-sized, often less). A shard draws at most two
partial blocks per part beyond its own indices, so generating it costs time proportional to
the shard, and its memory is the shard plus one block.
"""
import zlib

import numpy as np

from .params import param_shapes, spec, units
from .sources import SlicedSource

#: indices of the block axis per generator
BLOCK = 64


def param_key(name):
    """The parameter's word of the generator key: crc32 of its name."""
    return zlib.crc32(name.encode())


def along(axis, key):
    """The index that applies ``key`` to axis ``axis`` and takes all of the axes before it."""
    return (slice(None),) * axis + (key,)


def block_layout(config, name, shape):
    """(block axis, lengths of its parts) of parameter ``name``."""
    cut = spec(name).split
    if cut is None:
        return 0, (shape[0],)
    sizes = units(config)
    return cut.axis, tuple(sizes[unit][0] * sizes[unit][1] for unit in cut.parts)


class RandomSource(SlicedSource):
    """The random parameters of ``config`` for ``seed``, generated on request, slice by slice.

    A replicated parameter is generated once and the same array handed to every shard of this
    source (as ``shard_params`` shares a dict's); a sharded one is a fresh array per request.
    """

    def __init__(self, config, seed=0):
        if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 32:
            raise ValueError(f"seed must be a whole number in [0, 2**32), not {seed!r}")
        self.config, self.seed = config, int(seed)
        self.dtype = np.dtype(config.dtype)
        self.shapes = param_shapes(config)
        self.keys = {name: param_key(name) for name in self.shapes}
        if len(set(self.keys.values())) < len(self.keys):
            raise ValueError("two parameter names share a crc32: their random values would coincide")
        self.std = {"normal": 0.02, "residual": 0.02 / np.sqrt(2 * config.n_layer)}
        self.blocks = 0  #: blocks drawn so far (what generation cost)

    def names(self):
        return list(self.shapes)

    def shape(self, name):
        return self.shapes[name]

    def _slice(self, name, axis, index):
        """The indices ``index`` along ``axis`` of ``name`` (all of it for axis None), drawing
        only the blocks that cover them."""
        shape, init = self.shapes[name], spec(name).init
        block_axis, parts = block_layout(self.config, name, shape)
        if axis is None:
            axis, index = block_axis, np.arange(shape[block_axis])
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= shape[axis]):
            raise IndexError(f"{name}: indices outside [0, {shape[axis]}) along axis {axis}")
        out_shape = shape[:axis] + (index.size,) + shape[axis + 1:]
        if init in ("zeros", "ones"):
            return np.full(out_shape, 1 if init == "ones" else 0, self.dtype)
        if axis != block_axis:  # not how shards are cut: the whole parameter, then the indices
            return np.take(self._slice(name, None, None), index, axis=axis)
        out = np.empty(out_shape, self.dtype)
        offsets = np.cumsum((0,) + parts)
        part = np.searchsorted(offsets, index, side="right") - 1
        local = index - offsets[part]
        most = -(-max(parts) // BLOCK)  # blocks of the longest part
        group = part * most + local // BLOCK
        order = np.argsort(group, kind="stable")
        ids, starts = np.unique(group[order], return_index=True)
        for g, start, stop in zip(ids, starts, [*starts[1:], index.size]):
            i, j = divmod(int(g), most)
            values = self.block(name, i, j, parts[i], shape, block_axis)
            where = order[start:stop]
            rows = local[where] - j * BLOCK
            if where[-1] - where[0] == where.size - 1 and np.all(np.diff(rows) == 1):  # a run
                run = slice(rows[0], rows[0] + rows.size)
                out[along(axis, slice(where[0], where[0] + where.size))] = values[along(axis, run)]
            else:
                out[along(axis, where)] = np.take(values, rows, axis=axis)
        return out

    def block(self, name, i, j, length, shape, block_axis):
        """Block j of part i (``length`` indices long) of parameter ``name``, in float64 (rounded
        to config.dtype where it is stored)."""
        size = min(BLOCK, length - j * BLOCK)
        rng = np.random.default_rng([self.seed, self.keys[name], i, j])
        values = rng.standard_normal(shape[:block_axis] + (size,) + shape[block_axis + 1:])
        values *= self.std[spec(name).init]
        self.blocks += 1
        return values


def random_params(config, seed=0):
    """Every parameter in full: each one assembled from all of its blocks."""
    source = RandomSource(config, seed)
    return {name: source.take(name) for name in source.names()}
