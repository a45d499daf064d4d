"""The parameters of a Llama read from a GGUF file, every rank reading only the slices it keeps
(``llama.load_gguf`` builds the model through it).

``GGUFSource`` is a source of shards (see ``params``): it answers mpipar's parameter names
with GGUF's tensors, asking the reader (``gguf.GGUFFile``, or anything with the same
``read(name, rows=None, cols=None)``, ``shape(name)`` and ``tensor_names()``) for the indices
a shard owns and nothing else. The reader hands out float32 in Hugging Face's (out, in)
layout with the query and key rows already in Hugging Face's order; mpipar stores linear
weights as (in, out), so

* a column-parallel weight (q, k, v, gate, up: mpipar's columns cut) is a set of the
  file's rows, and
* a row-parallel weight (o, down: mpipar's rows cut) is a range of the file's columns,

transposed after reading. The embedding is (vocab, d) in both: its rows are the vocabulary.
"""
import numpy as np

from .params import param_shapes

#: mpipar's model-wide names -> GGUF's
GGUF_TOP = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}
#: mpipar's names within block i (``layers.{i}.``) -> GGUF's within ``blk.{i}.``
GGUF_BLOCK = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(name):
    """(GGUF's name of mpipar's parameter ``name``, whether mpipar stores it transposed)."""
    if name.startswith("layers."):
        _, i, rest = name.split(".", 2)
        return f"blk.{i}.{GGUF_BLOCK[rest]}", rest.endswith("_proj.weight")
    return GGUF_TOP[name], False


def _range(index):
    """Contiguous indices as a slice (what a reader cuts without copying), others as they are."""
    index = np.asarray(index)
    if index.size and np.array_equal(index, np.arange(index[0], index[0] + index.size)):
        return slice(int(index[0]), int(index[0]) + index.size)
    return slice(0, 0) if index.size == 0 else index


class GGUFSource:
    """The parameters of ``config``'s Llama, read slice by slice from a GGUF ``reader``."""

    def __init__(self, reader, config):
        self.reader, self.shapes = reader, param_shapes(config)
        self.reads = []  #: (GGUF name, rows, cols, shape returned): what was asked of the reader

    def names(self):
        """The table's names whose tensor the file holds (a missing one is check_params' error)."""
        present = set(self.reader.tensor_names())
        return [name for name in self.shapes if gguf_name(name)[0] in present]

    def shape(self, name):
        """The file's shape of ``name``, in mpipar's layout."""
        file_name, transposed = gguf_name(name)
        shape = tuple(self.reader.shape(file_name))
        return shape[::-1] if transposed else shape

    def take(self, name, axis=None, index=None):
        """Indices ``index`` along mpipar's ``axis`` of ``name`` (all of it for axis None), read
        as the file's rows (axis 0 of the file's layout) or columns (axis 1)."""
        file_name, transposed = gguf_name(name)
        cut = {}
        if axis is not None:
            cut["rows" if (1 - axis if transposed else axis) == 0 else "cols"] = _range(index)
        value = self.reader.read(file_name, **cut)
        value = value.T if transposed else value
        expected = list(self.shapes[name])
        if axis is not None:
            expected[axis] = len(index)
        if value.shape != tuple(expected):
            raise ValueError(f"{file_name}: read {value.shape} for mpipar's {name}, expected "
                             f"{tuple(expected)}")
        self.reads.append((file_name, cut.get("rows"), cut.get("cols"), value.shape))
        return value
