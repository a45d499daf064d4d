"""The parameters of a GPT-2 safetensors checkpoint, every rank reading only the slices it keeps
(``checkpoint.load_model(..., sliced=True)`` builds models through it).

``SafetensorsSource`` is a source of shards (see ``params``). It names the file's tensors as
``checkpoint.load_state_dict`` does -- the ``transformer.`` prefix dropped, the tied
``lm_head.weight`` and the ``attn.bias`` / ``attn.masked_bias`` buffers ignored -- and reads a
shard's indices with safetensors' ``safe_open(path, framework="numpy").get_slice(key)``, one
contiguous range at a time: c_attn's columns [q | k | v] are three ranges, read one after the
other and put side by side. GPT-2 stores its weights as (in, out) like mpipar, so a range of
mpipar's axis is a range of the file's. The file is opened for each read and closed after it:
the pages a read maps are given back before the next one.

bfloat16 tensors (BF16), which NumPy cannot name, are read from the file's bytes through
``ml_dtypes.bfloat16`` and widened to config.dtype, as float16 ones are. A value that is NaN
or infinite is a ValueError naming the file and the tensor: such weights give NaN logits,
which would otherwise pass for a result.
"""
import json
import os

import numpy as np

from .params import check_params
from .sources import SlicedSource

#: safetensors' dtypes that mpipar reads as floats
FLOATS = ("BF16", "F16", "F32", "F64")


def bf16_tensor(path, key):
    """The BF16 tensor ``key`` of the safetensors file ``path`` as a read-only ml_dtypes.bfloat16
    array mapped from the file (format: an 8-byte little-endian header length, the JSON header
    with each tensor's dtype, shape and data_offsets, then the data)."""
    import ml_dtypes
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        entry = json.loads(f.read(n))[key]
    begin, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    if end - begin != 2 * int(np.prod(shape)):
        raise ValueError(f"{path}: tensor {key!r} has {end - begin} bytes for shape {shape}")
    data = np.memmap(path, dtype=np.uint16, mode="r", offset=8 + n + begin, shape=shape)
    return data.view(ml_dtypes.bfloat16)


def finite(path, key, value):
    """``value``, or a ValueError naming the tensor if it holds NaN or infinite values."""
    if not np.isfinite(value).all():
        bad = int(value.size - np.isfinite(value).sum())
        raise ValueError(f"{path}: tensor {key!r} holds {bad} NaN or infinite value(s)")
    return value


def param_name(key):
    """mpipar's name of the checkpoint's tensor ``key`` (``transformer.`` dropped), or None for
    those mpipar does not keep: the tied ``lm_head.weight`` and the causal-mask buffers
    ``h.{i}.attn.bias`` / ``h.{i}.attn.masked_bias``."""
    name = key[len("transformer."):] if key.startswith("transformer.") else key
    parts = name.split(".")
    if name == "lm_head.weight" or parts[-2:] in (["attn", "bias"], ["attn", "masked_bias"]):
        return None
    return name


def ranges(index):
    """Indices as the list of (start, stop) runs of consecutive ones that make them up, in order."""
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    if index.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    starts, stops = np.r_[0, breaks], np.r_[breaks, index.size]
    return [(int(index[a]), int(index[b - 1]) + 1) for a, b in zip(starts, stops)]


class SafetensorsSource(SlicedSource):
    """The parameters of ``config``'s GPT-2 in the safetensors file ``path``, read slice by slice.

    Opening checks the header against ``config``: a missing, unexpected, misshapen or non-float
    tensor is a ValueError naming the file and the tensor. A replicated parameter is read once
    and the same array handed to every shard of this source (as ``shard_params`` shares a
    dict's); a sharded one is read afresh for each shard.
    """

    def __init__(self, path, config):
        from safetensors import SafetensorError, safe_open
        self.path, self.config = os.fspath(path), config
        self.dtype = np.dtype(config.dtype)
        self.reads = []  #: (file's key, axis, (start, stop) runs, shape read): what was read
        self.dtypes = {}  #: mpipar's name -> the file's dtype
        try:
            with safe_open(self.path, framework="numpy") as f:
                self.keys, self.file_shapes, dtypes = {}, {}, {}
                for key in f.keys():
                    name = param_name(key)
                    if name is None:
                        continue
                    if name in self.keys:
                        raise ValueError(f"{self.path}: {key!r} and {self.keys[name]!r} are both "
                                         f"mpipar's {name}")
                    piece = f.get_slice(key)
                    self.keys[name], dtypes[name] = key, piece.get_dtype()
                    self.file_shapes[name] = tuple(piece.get_shape())
        except (OSError, SafetensorError) as e:  # not a file, or not safetensors
            raise ValueError(f"{self.path}: not a readable safetensors file ({e})") from None
        try:
            check_params(config, self)
        except ValueError as e:
            raise ValueError(f"{self.path}: {e}") from None
        self.dtypes = dtypes
        for name, dtype in dtypes.items():
            if dtype not in FLOATS:
                raise ValueError(f"{self.path}: tensor {self.keys[name]!r} has dtype {dtype}, "
                                 f"not one of {', '.join(FLOATS)}")

    def names(self):
        """mpipar's names of the file's tensors (ignored ones left out)."""
        return list(self.keys)

    def shape(self, name):
        """The file's shape of ``name``."""
        return self.file_shapes[name]

    def _slice(self, name, axis, index):
        """The indices ``index`` along ``axis`` of ``name`` (all of it for axis None), in
        config.dtype, reading each contiguous run of them and nothing else."""
        from safetensors import safe_open
        key, shape = self.keys[name], self.file_shapes[name]
        runs = [(0, shape[0])] if axis is None else ranges(index)
        axis = 0 if axis is None else axis
        if runs and (min(a for a, _ in runs) < 0 or max(b for _, b in runs) > shape[axis]):
            raise IndexError(f"{self.path}: {key!r} has {shape[axis]} indices along axis {axis}")
        pieces = []
        wheres = [(slice(None),) * axis + (slice(start, stop),) for start, stop in runs]
        if self.dtypes.get(name) == "BF16":
            tensor = bf16_tensor(self.path, key)
            pieces = [np.asarray(tensor[where]).astype(self.dtype) for where in wheres]
            del tensor
        else:
            with safe_open(self.path, framework="numpy") as f:
                tensor = f.get_slice(key)
                pieces = [np.asarray(tensor[where]).astype(self.dtype, copy=False) for where in wheres]
        if not pieces:
            empty = shape[:axis] + (0,) + shape[axis + 1:]
            return np.empty(empty, self.dtype)
        value = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=axis)
        expected = shape[:axis] + (sum(b - a for a, b in runs),) + shape[axis + 1:]
        if value.shape != expected:
            raise ValueError(f"{self.path}: read {value.shape} of {key!r}, expected {expected}")
        self.reads.append((key, axis, runs, value.shape))
        return finite(self.path, key, value)
