"""gguf_metadata: every value type of the GGUF specification read as gguf.GGUFReader reads it, in
both byte orders; long arrays left in the file until asked for; GGUFFile's reader handing the
key-value section to it (and correct without that hook); one ValueError naming the file for
every truncation and corruption of the section; and, on SmolLM2-135M-Instruct's file, the same
metadata as GGUFReader's at a small fraction of its memory."""
import re
import struct
import tracemalloc

import gguf
from gguf import GGUFValueType as T
import numpy as np
import pytest
from tiny_gguf import write_tiny_gguf

from mpipar.models import gguf as gguf_file
from mpipar.models.gguf import GGUFFile, smollm2_path
from mpipar.models.gguf_metadata import EAGER_ITEMS, HEADER_BYTES, read_header, read_metadata
from mpipar.models.tokenizer import Tokenizer

LONG = EAGER_ITEMS + 1
#: key -> (value type, item type or None, value written, value read back)
VALUES = {
    "u8": (T.UINT8, None, 200, 200), "i8": (T.INT8, None, -100, -100),
    "u16": (T.UINT16, None, 65000, 65000), "i16": (T.INT16, None, -32000, -32000),
    "u32": (T.UINT32, None, 4_000_000_000, 4_000_000_000), "i32": (T.INT32, None, -7, -7),
    "f32": (T.FLOAT32, None, 0.1, float(np.float32(0.1))), "bool": (T.BOOL, None, True, True),
    "no": (T.BOOL, None, False, False), "s": (T.STRING, None, "héllo 🙂", "héllo 🙂"),
    "empty": (T.STRING, None, "", ""), "u64": (T.UINT64, None, 2**63 + 5, 2**63 + 5),
    "i64": (T.INT64, None, -2**62, -2**62), "f64": (T.FLOAT64, None, 0.1, 0.1),
    "short": (T.ARRAY, T.STRING, ["a", "b c"], ["a", "b c"]),
    "ints": (T.ARRAY, T.INT32, [3, -1], [3, -1]),
    "tokens": (T.ARRAY, T.STRING, [f"t{i}é" for i in range(LONG)], [f"t{i}é" for i in range(LONG)]),
    "scores": (T.ARRAY, T.FLOAT32, [i / 3 for i in range(LONG)],
               np.float32([i / 3 for i in range(LONG)]).tolist()),
    "flags": (T.ARRAY, T.BOOL, [i % 2 == 0 for i in range(LONG)], [i % 2 == 0 for i in range(LONG)]),
    "u64s": (T.ARRAY, T.UINT64, list(range(2**40, 2**40 + LONG)), list(range(2**40, 2**40 + LONG))),
}


def write_values(path, endianess=gguf.GGUFEndian.LITTLE, extra=()):
    w = gguf.GGUFWriter(str(path), "llama", endianess=endianess)
    for key, (kind, sub, value, _) in VALUES.items():
        w.add_key_value(key, value, kind, sub_type=sub)
    for key, kind, sub, value in extra:
        w.add_key_value(key, value, kind, sub_type=sub)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path


def readers_values(path):
    """What gguf.GGUFReader makes of every pair, as plain Python values."""
    out = {}
    for name, field in gguf.GGUFReader(path).fields.items():
        if not name.startswith("GGUF."):
            value = field.contents()
            out[name] = value.tolist() if isinstance(value, np.ndarray) else value
    return out


@pytest.mark.parametrize("order", [gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG])
def test_every_value_type_reads_as_gguf_reader_reads_it(tmp_path, order):
    path = write_values(tmp_path / "v.gguf", order)
    meta = read_metadata(np.memmap(path, mode="r"))
    assert meta.header.order == ("<" if order == gguf.GGUFEndian.LITTLE else ">")
    assert meta.header.version == 3 and meta.header.tensor_count == 0
    assert dict(meta) == readers_values(path)
    assert list(meta) == ["general.architecture", *VALUES]  # the file's order
    for key, (kind, _, _, want) in VALUES.items():
        assert meta[key] == want and type(meta[key]) is type(want), key
        assert meta.value_type(key) == kind
    assert meta.end == path.stat().st_size  # the section ends where the (absent) descriptors begin


def test_long_arrays_stay_in_the_file_until_asked_for(tmp_path):
    meta = read_metadata(np.memmap(write_values(tmp_path / "v.gguf"), mode="r"))
    assert isinstance(meta._items["short"][1], list)  # decoded at open
    assert not isinstance(meta._items["tokens"][1], list)  # left in the file
    assert "tokens" in meta and "nope" not in meta
    first, again = meta["tokens"], meta["tokens"]
    assert first == again and first is not again  # decoded afresh: the caller keeps its list
    assert list(meta.iterate("tokens")) == first and list(meta.iterate("scores")) == meta["scores"]
    assert list(meta.iterate("short")) == ["a", "b c"]
    assert (meta.length("tokens"), meta.length("short"), meta.length("u8"), meta.length("nope")) == (
        LONG, 2, None, None)
    with pytest.raises(ValueError, match="u8 is a UINT8, not an array"):
        meta.iterate("u8")
    with pytest.raises(KeyError):
        meta["nope"]


def test_nested_arrays_are_nested_lists(tmp_path):
    nested = [[1, 2, 3], [4]] * 40  # 80 arrays: decoded when asked for
    path = write_values(tmp_path / "n.gguf", extra=[("nested", T.ARRAY, T.ARRAY, nested),
                                                    ("pair", T.ARRAY, T.ARRAY, [["x"], ["y", "z"]])])
    meta = read_metadata(np.memmap(path, mode="r"))
    assert meta["nested"] == nested and meta.length("nested") == 80
    assert list(meta.iterate("nested")) == nested and meta["pair"] == [["x"], ["y", "z"]]


def test_gguf_file_hands_the_pairs_to_gguf_metadata(tmp_path):
    path = write_tiny_gguf(tmp_path / "t.gguf")
    reader = gguf_file._Reader(path)  # the installed gguf calls the hook: no field per token
    assert reader.metadata is not None and reader.metadata.end > HEADER_BYTES
    assert set(reader.fields) == {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}
    assert [t.name for t in reader.tensors] == [t.name for t in gguf.GGUFReader(path).tensors]
    assert dict(GGUFFile(path).metadata) == readers_values(path)


def test_a_custom_alignment_reaches_the_reader(tmp_path):
    path = tmp_path / "a.gguf"
    rng = np.random.default_rng(5)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_custom_alignment(256)
    for name, rows in (("a", 3), ("b", 5)):
        w.add_tensor(name, rng.standard_normal((rows, 32)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f, plain = GGUFFile(path), gguf.GGUFReader(path)
    assert f.metadata["general.alignment"] == 256 and plain.data_offset % 256 == 0
    for t in plain.tensors:
        assert np.array_equal(f.read(t.name), t.data)


@pytest.mark.parametrize("how", ["reader's own parser", "hook not called"])
def test_without_the_hook_the_file_reads_the_same(tmp_path, monkeypatch, how):
    path = write_tiny_gguf(tmp_path / "t.gguf", metadata={"general.alignment": 64})
    want = dict(GGUFFile(path).metadata)
    if how == "hook not called":  # a gguf whose constructor never calls _build_fields
        monkeypatch.setattr(gguf_file._Reader, "_build_fields", gguf.GGUFReader._build_fields)
    else:  # a call that does not look like the one mpipar knows: GGUFReader parses the pairs
        monkeypatch.setattr(gguf_file, "HEADER_BYTES", 0)
    f = GGUFFile(path)
    assert dict(f.metadata) == want and f.metadata["general.alignment"] == 64
    assert np.array_equal(f.read("token_embd.weight"), GGUFFile(path).read("token_embd.weight"))


# --- corrupt files: one ValueError, naming the file -------------------------------------------

def raw_gguf(pairs, version=3, tensors=0, magic=b"GGUF"):
    """A GGUF header and ``pairs`` (key, type, payload bytes), packed by hand: what GGUFWriter
    would refuse to write."""
    out = magic + struct.pack("<IQQ", version, tensors, len(pairs))
    for key, kind, payload in pairs:
        out += string(key) + struct.pack("<I", kind) + payload
    return out


def string(text):
    data = text.encode("utf-8") if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def array(item_type, count, payload=b""):
    return struct.pack("<IQ", item_type, count) + payload


ARCH = ("general.architecture", T.STRING, string("llama"))


@pytest.mark.parametrize("data, message", [
    (raw_gguf([ARCH], magic=b"GGUL"), "no GGUF magic"),
    (raw_gguf([ARCH], version=1), "version 1"),
    (raw_gguf([ARCH], version=4), "version 4"),
    (raw_gguf([ARCH, ("x", 13, b"\0" * 8)]), "unknown value type 13"),
    (raw_gguf([ARCH, ("x", T.ARRAY, array(99, 1, b"\0" * 8))]), "unknown value type 99"),
    (raw_gguf([ARCH, ("x", T.STRING, struct.pack("<Q", 2**62) + b"abc")]), "truncated"),
    (raw_gguf([ARCH, ("x", T.ARRAY, array(T.STRING, 2**62, string("a")))]), "truncated"),
    (raw_gguf([ARCH, ("x", T.ARRAY, array(T.UINT8, 2**62, b"\1"))]), "truncated"),
    (raw_gguf([ARCH, ("x", T.ARRAY, array(T.ARRAY, 2**60))]), "truncated"),
    (raw_gguf([ARCH, ("x", T.ARRAY, array(T.STRING, 1, string(b"\xff\xfe")))]), "utf-8"),
    (raw_gguf([ARCH, ("x", T.UINT8, b"\1"), ("x", T.UINT8, b"\2")]), "'x' appears twice"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 2**20) + string("x") * 8, "fewer than 1048576 key-value"),
    (raw_gguf([ARCH, ("x", T.ARRAY, array(T.ARRAY, 1) * 12 + array(T.UINT8, 0))]),
     "nested deeper than 8"),
    (raw_gguf([ARCH, ("general.alignment", T.UINT32, struct.pack("<I", 0))]), "alignment is 0"),
    (raw_gguf([ARCH, ("general.alignment", T.UINT32, struct.pack("<I", 48))]), "alignment is 48"),
    (raw_gguf([ARCH, ("general.alignment", T.UINT64, struct.pack("<Q", 64))]), "UINT64"),
])
def test_a_corrupt_section_is_one_value_error_naming_the_file(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        read_metadata(data)
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(data)
    with pytest.raises(ValueError, match="not a readable GGUF file") as e:  # the header's
        GGUFFile(path)  # problems are GGUFReader's to find, in its words; the pairs' are these
    assert str(e.value).startswith(f"{path}: ")
    if "magic" not in message and "version" not in message:
        assert re.search(message, str(e.value)), str(e.value)


def test_a_well_formed_raw_file_reads(tmp_path):
    """The hand packing above is GGUF: the same bytes, uncorrupted, read (an empty array too)."""
    data = raw_gguf([ARCH, ("none", T.ARRAY, array(T.INT32, 0)),
                     ("deep", T.ARRAY, array(T.ARRAY, 1) * 6 + array(T.UINT8, 1, b"\7"))])
    meta = read_metadata(data)
    assert dict(meta) == {"general.architecture": "llama", "none": [], "deep": [[[[[[[7]]]]]]]}
    assert read_header(data).kv_count == 3 and meta.end == len(data)


def test_every_truncation_of_the_header_and_metadata_is_one_value_error(tmp_path):
    whole = write_tiny_gguf(tmp_path / "whole.gguf").read_bytes()
    end = read_metadata(whole).end
    cut = tmp_path / "cut.gguf"
    for n in [*range(0, 64), *range(64, end + 64, 7)]:
        cut.write_bytes(whole[:n])
        with pytest.raises(ValueError, match="cut.gguf.*(truncated|not a readable GGUF)"):
            GGUFFile(cut)


# --- SmolLM2-135M-Instruct's real file (installed by `make install`) ---------------------------

def traced(call):
    """What ``call()`` returns and the peak of the Python and NumPy memory it allocated."""
    tracemalloc.start()
    try:
        return call(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_smollm2_metadata_is_gguf_readers_at_a_fraction_of_its_memory():
    path = smollm2_path()  # a missing file fails here, saying how to install it
    f, peak = traced(lambda: GGUFFile(path))
    assert peak < 4 * 2**20, peak  # GGUFReader's fields alone: about 150 MiB
    assert f.metadata.length("tokenizer.ggml.tokens") == 49152
    assert f.metadata.length("tokenizer.ggml.merges") == 48900
    assert dict(f.metadata) == readers_values(path)
    tokenizer, peak = traced(lambda: Tokenizer.from_gguf(f))
    assert tokenizer.vocab_size == 49152
    assert peak < 16 * 2**20, peak  # the vocabulary, its dict and the merge pairs, once each
