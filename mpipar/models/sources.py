"""Sources of shards: where ``params.shard_params`` gets a shard's slices.

A source is a dict of full arrays, or any object with ``names()``, ``shape(name)`` and
``take(name, axis, index)`` (``ArraySource`` is the dict's) -- a reader that returns only
the indices asked for, so a rank never holds more than its own slices: a GGUF file
(``llama_gguf.GGUFSource``), a safetensors checkpoint (``safetensors_source.SafetensorsSource``),
the random model (``random_init.RandomSource``), rank 0's arrays sent slice by slice
(``rank0_source.FromRank0``).
"""
import numpy as np

from .params import spec


class SlicedSource:
    """What a source that makes or reads slices on request shares: ``take`` of a replicated
    parameter produces it once and hands the same array to every shard asking (as
    ``shard_params`` shares a dict's); anything else is ``_slice(name, axis, index)``, which a
    subclass defines (``random_init.RandomSource``, ``safetensors_source.SafetensorsSource``)."""

    def take(self, name, axis=None, index=None):
        """The indices ``index`` along ``axis`` of parameter ``name``; all of it for axis None."""
        if axis is None and spec(name).split is None:
            cache = self.__dict__.setdefault("_replicated", {})
            if name not in cache:
                cache[name] = self._slice(name, None, None)
            return cache[name]
        return self._slice(name, axis, index)


class ArraySource:
    """The source of shards for a dict of full arrays: ``take`` slices them in memory."""

    def __init__(self, params):
        self.params = params

    def names(self):
        return list(self.params)

    def shape(self, name):
        return tuple(self.params[name].shape)

    def take(self, name, axis=None, index=None):
        """The indices ``index`` along ``axis`` of parameter ``name``; the whole array for axis None."""
        value = self.params[name]
        return value if axis is None else np.take(value, index, axis=axis)


def as_source(params):
    """``params`` itself if it is a source, else an ArraySource over the dict."""
    return params if hasattr(params, "take") else ArraySource(params)
