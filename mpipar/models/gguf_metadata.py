"""The key-value metadata of a GGUF file, read without one NumPy array per value.

The GGUF specification (ggml's ``docs/gguf.md``, "File Structure") lays a file out as

- the header: uint32 ``magic`` (the bytes "GGUF"), uint32 ``version``, uint64 ``tensor_count``,
  uint64 ``metadata_kv_count`` -- 24 bytes;
- ``metadata_kv_count`` key-value pairs, each a ``gguf_string_t`` key, a uint32
  ``gguf_metadata_value_type`` and the value;
- the tensor descriptors, then the aligned tensor data (``general.alignment``, a uint32 power of
  two, 32 when absent).

A ``gguf_string_t`` is a uint64 byte count then that many bytes of UTF-8, no terminating NUL.
The value types are 0-7 UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL (one byte,
0 or 1; any other byte reads as True, as GGUFReader reads it), 8 STRING, 9 ARRAY, 10-12 UINT64,
INT64, FLOAT64 (integers in two's complement, floats IEEE 754). An ARRAY is a uint32 item
type, a uint64 item count ("the number of elements, not the number of bytes"), then the items;
arrays may nest. Versions 2 and 3 share this layout (version 1 counted in uint32). Files are
little-endian by default; a big-endian file is recognised, as the ``gguf`` package recognises
it, by a version whose low 16 bits read as zero in little-endian order.

``gguf.GGUFReader`` turns every item of every array into NumPy arrays of its own -- a 49152-token
vocabulary and its merges become hundreds of thousands of them, about 150 MiB for a moment.
``read_metadata`` instead walks the section once with ``struct`` over a memory map, checking
every length against the file's size and decoding every string (so a corrupt file fails at open,
not later), and keeps the scalars, the strings and the short arrays. An array of more than
``EAGER_ITEMS`` items (a vocabulary, its merges, token types and scores) stays in the file: it is
decoded again, into a fresh list, each time it is asked for -- a fixed-size item type in one
vectorised ``np.frombuffer``, strings one after the other (each one's length says where the next
begins) -- so an open file holds none of them.
"""
from collections.abc import Mapping
import struct
from typing import NamedTuple

from gguf import GGUFValueType
import numpy as np

HEADER_BYTES = 24
VERSIONS = (2, 3)
MAGIC = b"GGUF"
#: arrays of at most this many items are decoded at open; longer ones when asked for
EAGER_ITEMS = 64
#: arrays nested deeper than this are refused (the specification sets no limit; a file does)
MAX_DEPTH = 8

T = GGUFValueType
#: the fixed-size value types: NumPy's type code
SCALARS = {T.UINT8: "u1", T.INT8: "i1", T.UINT16: "u2", T.INT16: "i2", T.UINT32: "u4",
           T.INT32: "i4", T.FLOAT32: "f4", T.BOOL: "?", T.UINT64: "u8", T.INT64: "i8",
           T.FLOAT64: "f8"}


class Header(NamedTuple):
    """The 24-byte header: ``order`` is "<" (little-endian) or ">" (big-endian)."""
    order: str
    version: int
    tensor_count: int
    kv_count: int


class LazyArray(NamedTuple):
    """An array value left in the file: its first item's offset, item type and item count."""
    offset: int
    item_type: GGUFValueType
    count: int


def read_header(buffer):
    """The ``Header`` of the GGUF file in ``buffer`` (bytes, a memory map...); ValueError if
    it is not GGUF version 2 or 3."""
    if len(buffer) < HEADER_BYTES:
        raise ValueError(f"truncated: {len(buffer)} bytes, shorter than a GGUF header")
    if bytes(buffer[:4]) != MAGIC:
        raise ValueError("no GGUF magic")
    order = ">" if struct.unpack_from("<I", buffer, 4)[0] & 0xFFFF == 0 else "<"
    version, tensors, kvs = struct.unpack_from(order + "IQQ", buffer, 4)
    if version not in VERSIONS:
        raise ValueError(f"GGUF version {version}; mpipar reads versions 2 and 3")
    return Header(order, version, tensors, kvs)


def read_metadata(buffer, header=None):
    """The ``Metadata`` of the GGUF file in ``buffer`` (a ``np.memmap``, mmap or bytes, kept
    for the arrays decoded later). Every problem is a ValueError (or UnicodeDecodeError)."""
    header = read_header(buffer) if header is None else header
    walker = _Walker(buffer, header.order)
    pos, items = HEADER_BYTES, {}
    if header.kv_count * 12 > walker.size - pos:  # a key's length and a value type, at least
        raise ValueError(f"truncated: room for fewer than {header.kv_count} key-value pairs")
    for _ in range(header.kv_count):
        key, pos = walker.string(pos)
        kind, pos = walker.value_type(pos)
        if key in items:
            raise ValueError(f"key {key!r} appears twice")
        if kind == T.ARRAY:
            item_type, count, pos = walker.array_header(pos)
            eager = count <= EAGER_ITEMS
            values, end = walker.array(pos, item_type, count, keep=eager)
            items[key], pos = (kind, values if eager else LazyArray(pos, item_type, count)), end
        elif kind == T.STRING:
            value, pos = walker.string(pos)
            items[key] = (kind, value)
        else:
            items[key] = (kind, walker.array(pos, kind, 1)[0][0])
            pos += walker.dtypes[kind].itemsize
    metadata = Metadata(walker, items, header, pos)
    alignment = items.get("general.alignment")
    if alignment is not None and (alignment[0] != T.UINT32 or alignment[1] < 1
                                  or alignment[1] & (alignment[1] - 1)):
        raise ValueError(f"general.alignment is {alignment[1]!r} ({alignment[0].name}), not a "
                         f"uint32 power of two")
    return metadata


class Metadata(Mapping):
    """A GGUF file's key-value pairs, in the file's order, as Python values: int, float, bool,
    str, or lists of them (nested lists for nested arrays).

    ``end`` is the offset just past the section, where the tensor descriptors begin. An array of
    more than ``EAGER_ITEMS`` items is decoded from the file at every ``m[key]`` (so keep the
    list you get rather than asking again); ``length(key)`` counts its items without decoding."""

    def __init__(self, walker, items, header, end):
        self._walker, self._items, self.header, self.end = walker, items, header, end

    def __getitem__(self, key):
        value = self._items[key][1]
        if isinstance(value, LazyArray):
            return self._walker.array(value.offset, value.item_type, value.count, keep=True)[0]
        return value

    def __contains__(self, key):  # Mapping's would decode the value
        return key in self._items

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)

    def value_type(self, key):
        """The ``gguf.GGUFValueType`` of a key's value (ARRAY for an array)."""
        return self._items[key][0]

    def iterate(self, key):
        """The items of an array value one at a time, decoded as they are reached (never all
        of them at once, for a long array); ValueError if the value is not an array."""
        kind, value = self._items[key]
        if kind != T.ARRAY:
            raise ValueError(f"{key} is a {kind.name}, not an array")
        if isinstance(value, LazyArray):
            return self._walker.iterate(value.offset, value.item_type, value.count)
        return iter(value)

    def length(self, key):
        """The number of items of an array value (without decoding it); None for a scalar, a
        string, or a key the file lacks."""
        kind, value = self._items.get(key, (None, None))
        if kind != T.ARRAY:
            return None
        return value.count if isinstance(value, LazyArray) else len(value)


class _Walker:
    """Reads values at byte offsets of ``buffer``, checking each against its end."""

    def __init__(self, buffer, order):
        self.view = memoryview(buffer).cast("B")
        self.size, self.order = len(self.view), order
        self.dtypes = {kind: np.dtype(order + code) for kind, code in SCALARS.items()}
        self._u64 = struct.Struct(order + "Q").unpack_from

    def need(self, pos, n):
        if n > self.size - pos:
            raise ValueError(f"truncated: {n} bytes at offset {pos} run past the end "
                             f"({self.size} bytes)")

    def unpack(self, code, pos):
        self.need(pos, struct.calcsize(code))
        return struct.unpack_from(self.order + code, self.view, pos)

    def value_type(self, pos):
        (raw,), pos = self.unpack("I", pos), pos + 4
        try:
            return T(raw), pos
        except ValueError:
            raise ValueError(f"unknown value type {raw} at offset {pos - 4}") from None

    def string(self, pos, keep=True):
        self.need(pos, 8)
        (n,) = self._u64(self.view, pos)
        self.need(pos + 8, n)
        text = str(self.view[pos + 8:pos + 8 + n], "utf-8")  # decoded even if not kept: checked
        return (text if keep else None), pos + 8 + n

    def array_header(self, pos):
        """(item type, item count, the offset of the first item) of the array at ``pos``."""
        item_type, pos = self.value_type(pos)
        (count,) = self.unpack("Q", pos)
        return item_type, count, pos + 8

    def array(self, pos, item_type, count, keep=True, depth=1):
        """(the ``count`` items of ``item_type`` at ``pos`` as a list, or None if not
        ``keep``; the offset after them)."""
        if item_type in SCALARS:  # one vectorised read
            dtype = self.dtypes[item_type]
            self.need(pos, count * dtype.itemsize)
            items = np.frombuffer(self.view, dtype, count, pos).tolist() if keep else None
            return items, pos + count * dtype.itemsize
        items, end = ([] if keep else None), pos
        for item, after in self.items(pos, item_type, count, keep, depth):
            end = after
            if keep:
                items.append(item)
        return items, end

    def items(self, pos, item_type, count, keep=True, depth=1):
        """Yield (item, the offset after it) for each of the ``count`` strings or nested arrays
        at ``pos`` (item None if not ``keep``)."""
        if item_type == T.STRING:
            self.need(pos, count * 8)  # a length, at least, per item: no loop over a bogus count
            for _ in range(count):
                text, pos = self.string(pos, keep)
                yield text, pos
            return
        if depth >= MAX_DEPTH:
            raise ValueError(f"arrays nested deeper than {MAX_DEPTH} at offset {pos}")
        self.need(pos, count * 12)  # an item type and a count per nested array
        for _ in range(count):
            sub_type, n, pos = self.array_header(pos)
            sub, pos = self.array(pos, sub_type, n, keep, depth + 1)
            yield sub, pos

    def iterate(self, pos, item_type, count):
        """The items at ``pos``, one at a time (no list of them all)."""
        if item_type in SCALARS:
            yield from self.array(pos, item_type, count)[0]
        else:
            for item, _ in self.items(pos, item_type, count):
                yield item


__all__ = ["EAGER_ITEMS", "HEADER_BYTES", "Header", "Metadata", "read_header", "read_metadata"]
