"""Fuzzing the saved-block reader and writer: damaged files fail cleanly, saves are atomic.

`nonlocal_core.load` on a damaged or foreign file, safetensors or legacy ``.npz``, raises
`FileFormatError` (a ValueError) whose message names the file - or, where the damage left a
valid file (a zip timestamp, a flipped bit inside a safetensors tensor, which has no
checksum), returns exactly what the file holds: never a different number, never another
exception.
"""

from __future__ import annotations

import functools
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonlocal_core import FileFormatError, NonLocalConfig, load, random_weights, save
from nonlocal_core import io as core_io
from nonlocal_core import safetensors as core_st
from tests.hostile import Hostile, fuzz_settings, junk

CONFIG = NonLocalConfig(4, spatial_dims=2, instantiation="concatenation", subsample=True)
WEIGHTS = random_weights(CONFIG, seed=5)


@functools.cache
def _saved() -> bytes:
    """The bytes `save` writes for CONFIG and WEIGHTS (a function, not a fixture: Hypothesis
    would print a fixture's value - 4 KiB of bytes - with every failing example)."""
    path = Path(tempfile.mkdtemp()) / "block.npz"
    save(path, CONFIG, WEIGHTS)
    return path.read_bytes()


@pytest.fixture
def saved() -> bytes:
    return _saved()


def _entries(replace: dict) -> bytes:
    """A saved block's archive with some entries replaced (None drops one)."""
    header = json.dumps({"spec_version": "1.0", "config": CONFIG.to_dict()}).encode()
    arrays = {**WEIGHTS, "__config__": np.frombuffer(header, np.uint8)}
    for name, value in replace.items():
        if value is None:
            arrays.pop(name)
        else:
            arrays[name] = value
    buffer = io.BytesIO()
    # allow_pickle is a reader option; savez writes object arrays as pickles, as a hostile
    # file would contain them.
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _header(document) -> np.ndarray:
    # default=repr: junk (bytes, complex numbers, objects) becomes strings, as in a real file.
    return np.frombuffer(json.dumps(document, default=repr).encode(), np.uint8)


BYTE_DAMAGE = ("truncate", "flip", "append")


def _damage_bytes(draw, kind: str, good: bytes) -> Hostile:
    """`good` truncated, with a few bytes flipped, or with junk appended (any file format)."""
    if kind == "truncate":
        end = draw(st.integers(0, len(good) - 1))
        return Hostile(f"truncated to {end} bytes", good[:end])
    if kind == "flip":
        data = bytearray(good)
        positions = draw(st.lists(st.integers(0, len(good) - 1), min_size=1, max_size=4))
        for p in positions:
            data[p] ^= draw(st.integers(1, 255))
        return Hostile(f"bytes flipped at {positions}", bytes(data))
    return Hostile("junk appended", good + draw(st.binary(min_size=1, max_size=64)))


@st.composite
def damaged(draw) -> Hostile:
    """A description and the bytes of a damaged or foreign saved block."""
    good = _saved()
    kind = draw(st.sampled_from(["truncate", "flip", "random", "append", "entries"]))
    if kind in BYTE_DAMAGE:
        return _damage_bytes(draw, kind, good)
    if kind == "random":
        return Hostile("random bytes", draw(st.binary(max_size=600)))
    edits = {
        "header junk": lambda: _entries({"__config__": _header(draw(junk()))}),
        "header bytes": lambda: _entries(
            {"__config__": np.frombuffer(draw(st.binary(max_size=40)), np.uint8)}
        ),
        "header config junk": lambda: _entries(
            {
                "__config__": _header(
                    {"spec_version": "1.0", "config": {"in_channels": draw(junk())}}
                )
            }
        ),
        "header of floats": lambda: _entries({"__config__": np.zeros(8)}),
        "no header": lambda: _entries({"__config__": None}),
        "weight missing": lambda: _entries({"g.weight": None}),
        "weight extra": lambda: _entries({"theta.extra": np.zeros(2)}),
        "weight reshaped": lambda: _entries({"g.weight": np.zeros((3, 3))}),
        "weight complex": lambda: _entries({"g.weight": WEIGHTS["g.weight"] + 1j}),
        "weight text": lambda: _entries({"g.weight": WEIGHTS["g.weight"].astype(str)}),
        "weight pickled": lambda: _entries({"g.weight": WEIGHTS["g.weight"].astype(object)}),
        "negative variance": lambda: _entries({"norm.running_var": -np.ones(4)}),
    }
    name = draw(st.sampled_from(sorted(edits)))
    return Hostile(name, edits[name]())


def _load_damaged(tmp_path_factory, damage: Hostile, name: str):
    """``load`` of the damaged file: its (config, weights), or None when it raised a
    `FileFormatError` naming the file (anything else fails the test)."""
    path = tmp_path_factory.mktemp("damaged") / name
    path.write_bytes(damage.value)
    try:
        return load(path)
    except FileFormatError as exc:
        assert repr(str(path)) in str(exc), f"{damage.what}: the error does not name the file"
        return None


@fuzz_settings(200)
@given(st.data())
def test_a_damaged_file_fails_naming_the_file_or_loads_unchanged(tmp_path_factory, data):
    # spec: W-3
    damage = data.draw(damaged(), label="damage")
    what = damage.what
    loaded = _load_damaged(tmp_path_factory, damage, "block.npz")
    if loaded is None:
        return
    config, weights = loaded
    # Only harmless damage (zip metadata NumPy ignores) may load, and then exactly.
    assert config == CONFIG, what
    assert sorted(weights) == sorted(WEIGHTS), what
    for name, value in WEIGHTS.items():
        assert weights[name].dtype == value.dtype and np.array_equal(weights[name], value), what


def test_the_examples_of_the_issue_fail_cleanly(tmp_path, saved):
    path = tmp_path / "block.npz"
    cases = {
        "truncated": (saved[: len(saved) // 2], "not a zip archive"),
        "header []": (_entries({"__config__": _header([])}), "expected a JSON object"),
        "header without config": (
            _entries({"__config__": _header({"spec_version": "1.0"})}),
            "expected a JSON object",
        ),
        "pickled weight": (
            _entries({"g.weight": WEIGHTS["g.weight"].astype(object)}),
            "Object arrays cannot be loaded",
        ),
        "spec 2": (
            _entries({"__config__": _header({"spec_version": "2.0", "config": {}})}),
            "spec",
        ),
        # json.loads raises RecursionError for these, and plain ValueError for the next.
        "header nested deeply": (
            _entries({"__config__": np.frombuffer(b"[" * 100_000, np.uint8)}),
            "not UTF-8 JSON",
        ),
        "header of 5000 digits": (
            _entries({"__config__": np.frombuffer(b"9" * 5000, np.uint8)}),
            "not UTF-8 JSON",
        ),
    }
    for what, (content, message) in cases.items():
        path.write_bytes(content)
        with pytest.raises(FileFormatError) as info:
            load(path)
        assert repr(str(path)) in str(info.value) and message in str(info.value), what


def test_os_errors_stay_os_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError):
        core_st.read(tmp_path / "missing.safetensors")
    with pytest.raises(IsADirectoryError):
        load(tmp_path)
    with pytest.raises(IsADirectoryError):
        core_st.read(tmp_path)


# Safetensors files -------------------------------------------------------------------------


@functools.cache
def _saved_st() -> bytes:
    """The bytes `save` writes for CONFIG and WEIGHTS as ``block.safetensors``."""
    path = Path(tempfile.mkdtemp()) / "block.safetensors"
    save(path, CONFIG, WEIGHTS)
    return path.read_bytes()


def _parts() -> tuple[dict, bytes]:
    """The saved file's header (a fresh copy, to edit) and its data."""
    good = _saved_st()
    size = int.from_bytes(good[:8], "little")
    return json.loads(good[8 : 8 + size]), good[8 + size :]


METADATA = _parts()[0]["__metadata__"]
TENSORS = sorted(WEIGHTS)
SAME_SIZE = [
    (a, b) for a in TENSORS for b in TENSORS if a != b and WEIGHTS[a].nbytes == WEIGHTS[b].nbytes
]


def _st(header: Any, data: bytes, size: int | None = None) -> bytes:
    """A safetensors file of `header` (JSON-encoded, unless bytes already) and `data`; `size`
    replaces the true header length."""
    raw = header if isinstance(header, bytes) else json.dumps(header, default=repr).encode()
    return (len(raw) if size is None else size).to_bytes(8, "little") + raw + data


def _repeated(key: str) -> bytes:
    """The saved file with `key` (a tensor, or a metadata key) given twice in its header."""
    header, data = _parts()
    where = header["__metadata__"] if key in METADATA else header
    pairs = [json.dumps(k) + ":" + json.dumps(v) for k, v in [*where.items(), (key, where[key])]]
    text = "{" + ",".join(pairs) + "}"
    if where is header:
        return _st(text.encode(), data)
    rest = json.dumps({k: v for k, v in header.items() if k != "__metadata__"})
    return _st(('{"__metadata__":' + text + "," + rest[1:]).encode(), data)


def _edited(tensor: str | None = None, **fields) -> bytes:
    """The saved file with fields of `tensor`'s entry (or of the metadata) replaced; a field
    set to None is removed."""
    header, data = _parts()
    entry = header[tensor] if tensor else header["__metadata__"]
    for key, value in fields.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    return _st(header, data)


def _moved(tensor: str, by: int, insert: bytes = b"") -> bytes:
    """The saved file with `tensor`'s byte range moved `by` bytes (an overlap or a gap), or
    with `insert` put after it and every later range moved along (a gap between tensors)."""
    header, data = _parts()
    end = header[tensor]["data_offsets"][1]
    for name in TENSORS:
        offsets = header[name]["data_offsets"]
        if name == tensor and by:
            header[name]["data_offsets"] = [offsets[0] + by, offsets[1] + by]
        elif offsets[0] >= end and insert:
            header[name]["data_offsets"] = [o + len(insert) for o in offsets]
    return _st(header, data[:end] + insert + data[end:])


def _shared(tensor: str, other: str) -> bytes:
    """The saved file with `other` pointing at the bytes of `tensor` (of the same size) and
    its own bytes gone: the byte ranges add up to the data, yet two of them are one."""
    header, data = _parts()
    kept, offset = [], 0
    for name in TENSORS:  # the order they are stored in
        if name != other:
            begin, end = header[name]["data_offsets"]
            kept.append(data[begin:end])
            header[name]["data_offsets"] = [offset, offset + end - begin]
            offset += end - begin
    header[other]["data_offsets"] = header[tensor]["data_offsets"]
    return _st(header, b"".join(kept))


def _written(replace: dict, metadata: dict | None = None) -> bytes:
    """A valid safetensors file of WEIGHTS with some tensors replaced (None drops one)."""
    arrays = {k: v for k, v in {**WEIGHTS, **replace}.items() if v is not None}
    return core_st.to_bytes(arrays, METADATA if metadata is None else metadata)


@st.composite
def damaged_safetensors(draw) -> Hostile:
    """A description and the bytes of a damaged or foreign safetensors block file."""
    good = _saved_st()
    # Half the examples edit the header, which has the most ways to go wrong.
    kind = draw(st.sampled_from(["truncate", "flip", "random", "append", "length", *["edit"] * 5]))
    if kind in BYTE_DAMAGE:
        return _damage_bytes(draw, kind, good)
    if kind == "random":
        size = draw(st.integers(0, 2**64 - 1) | st.integers(0, 600))
        return Hostile("random bytes", size.to_bytes(8, "little") + draw(st.binary(max_size=600)))
    header, data = _parts()
    true_size = len(good) - len(data) - 8
    if kind == "length":
        size = draw(
            (
                st.integers(0, 2**64 - 1)
                | st.integers(true_size - 16, true_size + 16)
                | st.sampled_from([len(good) - 8, core_st.MAX_HEADER_BYTES + 1, 2**64 - 1])
            ).filter(lambda n: n >= 0 and n != true_size)
        )
        return Hostile(f"header length {size}", size.to_bytes(8, "little") + good[8:])
    tensor = draw(st.sampled_from(TENSORS))
    later = draw(st.sampled_from(TENSORS[1:]))
    present = junk().filter(lambda value: value is not None)  # None: `_edited` removes a key
    edits = {
        "header junk": lambda: _st(draw(junk()), data),
        "header bytes": lambda: _st(draw(st.binary(max_size=60)), data),
        "repeated tensor": lambda: _repeated(tensor),
        "repeated metadata key": lambda: _repeated(draw(st.sampled_from(sorted(METADATA)))),
        "metadata junk": lambda: _st({**header, "__metadata__": draw(junk())}, data),
        "metadata absent": lambda: _st({k: v for k, v in header.items() if k in TENSORS}, data),
        "metadata value junk": lambda: _edited(
            **{draw(st.sampled_from(sorted(METADATA))): draw(junk())}
        ),
        "metadata key dropped": lambda: _edited(**{draw(st.sampled_from(sorted(METADATA))): None}),
        "metadata key extra": lambda: _edited(extra=draw(present)),  # valid if a string
        "format": lambda: _edited(format=draw(st.sampled_from(["pt", "", "NONLOCAL_BLOCK"]))),
        "spec_version": lambda: _edited(
            spec_version=draw(st.sampled_from(["2.0", "0.9", "", "1"]))
        ),
        "config not JSON": lambda: _edited(config=draw(st.text(max_size=12))),
        "config junk": lambda: _edited(config=json.dumps(draw(junk()), default=repr)),
        "config field junk": lambda: _edited(
            config=json.dumps({**CONFIG.to_dict(), "in_channels": draw(junk())}, default=repr)
        ),
        "entry junk": lambda: _st({**header, tensor: draw(junk())}, data),
        "entry key dropped": lambda: _edited(
            tensor, **{draw(st.sampled_from(["dtype", "shape", "data_offsets"])): None}
        ),
        "entry key extra": lambda: _edited(tensor, extra=draw(present)),
        "dtype": lambda: _edited(
            tensor,
            dtype=draw(
                st.sampled_from(["f64", "F8_E4M3", "C64", "float64", "", "BF16", "F32", "I64"])
                | junk()
            ),
        ),
        "shape": lambda: _edited(
            tensor,
            shape=draw(
                st.lists(st.integers(-3, 2**65), max_size=4)
                | st.sampled_from([[True, 2], [2.0], [-2, -1], [0, 2**62, 2**62], [1] * 70])
                | junk()
            ),
        ),
        "data_offsets": lambda: _edited(
            tensor,
            data_offsets=draw(
                st.lists(st.integers(-9, 2**65) | st.integers(0, len(data)), min_size=0, max_size=3)
                | junk()
            ),
        ),
        "overlap": lambda: _moved(later, -draw(st.integers(1, 16))),
        "gap": lambda: _moved(tensor, 0, insert=draw(st.binary(min_size=1, max_size=16))),
        "gap before": lambda: _moved(tensor, draw(st.integers(1, 16))),
        "two tensors in the same bytes": lambda: _shared(*draw(st.sampled_from(SAME_SIZE))),
        "bool tensor": lambda: _edited(
            tensor, dtype="BOOL", shape=[int(np.prod(WEIGHTS[tensor].shape)) * 8]
        ),
        "weight missing": lambda: _written({tensor: None}),
        "weight extra": lambda: _written({"theta.extra": np.zeros(2)}),
        "weight reshaped": lambda: _written({tensor: WEIGHTS[tensor].reshape(-1, 1)}),
        "weight bool": lambda: _written({tensor: WEIGHTS[tensor] > 0}),
        "negative variance": lambda: _written({"norm.running_var": -np.ones(4)}),
        "foreign file": lambda: _written({}, {"format": "pt"}),
    }
    name = draw(st.sampled_from(sorted(edits)))
    return Hostile(f"{name} ({tensor}, {later})", edits[name]())


# Little-endian NumPy types of the safetensors dtypes a damaged block file may hold and load.
_ORACLE_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1",
}  # fmt: skip


def _holds(content: bytes) -> tuple[NonLocalConfig, dict[str, np.ndarray]]:
    """What a safetensors block file says, read naively - an oracle written independently of
    the reader, for files `load` accepted."""
    size = int.from_bytes(content[:8], "little")
    header = json.loads(content[8 : 8 + size])
    data = content[8 + size :]
    config = NonLocalConfig.from_dict(json.loads(header.pop("__metadata__")["config"]))
    weights = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        array = np.frombuffer(data[begin:end], _ORACLE_DTYPES[entry["dtype"]])
        weights[name] = array.astype(array.dtype.newbyteorder("=")).reshape(entry["shape"])
    return config, weights


@fuzz_settings(300)
@given(st.data())
def test_a_damaged_safetensors_file_fails_naming_the_file_or_loads_what_it_holds(
    tmp_path_factory, data
):
    # spec: W-3
    damage = data.draw(damaged_safetensors(), label="damage")
    what, content = damage.what, damage.value
    loaded = _load_damaged(tmp_path_factory, damage, "block.safetensors")
    if loaded is None:
        return
    config, weights = loaded
    # Safetensors has no checksum: a flipped bit inside a tensor, or a compatible
    # spec_version, leaves a valid file. It must load as exactly what the file says.
    expected_config, expected = _holds(content)
    assert config == expected_config, what
    assert sorted(weights) == sorted(expected), what
    for name, value in expected.items():
        got = weights[name]
        assert got.dtype == value.dtype and got.shape == value.shape, (what, name)
        assert got.tobytes() == value.tobytes(), (what, name)


ST_CASES = {
    "empty": (lambda: b"", "too short for the 8-byte header length"),
    "truncated": (lambda: _saved_st()[: len(_saved_st()) // 2], "truncated"),
    "cut in the data": (lambda: _saved_st()[:-1], "the tensors end at byte"),
    "junk appended": (lambda: _saved_st() + b"\0", "junk appended"),
    "header length 2**64 - 1": (
        lambda: (2**64 - 1).to_bytes(8, "little") + _saved_st()[8:],
        "header length field says 18446744073709551615 bytes",
    ),
    "header not JSON": (lambda: _st(b"{'a': 1}", b""), "header is not UTF-8 JSON"),
    "header not UTF-8": (lambda: _st(b'{"\xff": 1}', b""), "header is not UTF-8 JSON"),
    "header nested deeply": (lambda: _st(b"[" * 100_000, b""), "header is not UTF-8 JSON"),
    "header a list": (lambda: _st([], b""), "expected a JSON object of tensors"),
    "repeated tensor": (lambda: _repeated("g.bias"), "has the key 'g.bias' twice"),
    "repeated metadata key": (lambda: _repeated("config"), "has the key 'config' twice"),
    "metadata a list": (
        lambda: _st({**_parts()[0], "__metadata__": ["a"]}, _parts()[1]),
        "'__metadata__' is [\"a\"]: expected an object of strings",
    ),
    "metadata not a string": (
        lambda: _edited(spec_version=1.0),
        "metadata 'spec_version' is 1.0: expected a string",
    ),
    "metadata absent": (
        lambda: _st({k: v for k, v in _parts()[0].items() if k in TENSORS}, _parts()[1]),
        "is not a saved block: its safetensors metadata has the format null",
    ),
    "foreign format": (lambda: _written({}, {"format": "pt"}), 'the format "pt"'),
    "config absent": (lambda: _edited(config=None), "its metadata holds"),
    "config not JSON": (lambda: _edited(config="{in_channels: 4}"), "'config' is not UTF-8 JSON"),
    "config a list": (lambda: _edited(config="[4]"), "its metadata holds"),
    "config invalid": (lambda: _edited(config='{"in_channels": -4}'), "invalid config"),
    "spec 2": (lambda: _edited(spec_version="2.0"), "written for spec '2.0'"),
    "dtype unknown": (lambda: _edited("g.bias", dtype="F8_E4M3"), 'dtype "F8_E4M3": expected'),
    "dtype not a string": (lambda: _edited("g.bias", dtype=["F64"]), 'dtype ["F64"]: expected'),
    "entry a list": (lambda: _st({**_parts()[0], "g.bias": []}, _parts()[1]), "exactly the keys"),
    "entry key extra": (lambda: _edited("g.bias", extra=1), "exactly the keys"),
    "shape negative": (lambda: _edited("g.bias", shape=[-2]), "shape [-2]: expected"),
    "shape of bools": (lambda: _edited("g.bias", shape=[True, 2]), "shape [true, 2]: expected"),
    "shape of floats": (lambda: _edited("g.bias", shape=[2.0]), "shape [2.0]: expected"),
    "shape of 65 axes": (lambda: _edited("g.bias", shape=[1] * 65), "at most 64 integers"),
    "offsets reversed": (
        lambda: _edited("g.bias", data_offsets=[16, 0]),
        "expected [begin, end], integers with 0 <= begin <= end",
    ),
    "offsets lying": (
        lambda: _edited("g.bias", data_offsets=[0, 24]),
        "tensor 'g.bias' of dtype F64 and shape [2] takes 16 bytes, but its data_offsets",
    ),
    "gap": (lambda: _moved("g.bias", 0, insert=b"\0" * 8), "a gap"),
    "overlap": (lambda: _moved("g.weight", -8), "an overlap"),
    "two tensors in the same bytes": (lambda: _shared("g.bias", "phi.bias"), "an overlap"),
    "bytes that are no bools": (
        lambda: _edited("g.bias", dtype="BOOL", shape=[16]),
        "'g.bias' (BOOL) holds bytes other than 0/1",
    ),
    "an empty tensor too big for NumPy": (
        lambda: _st(
            {
                **_parts()[0],
                "z": {"dtype": "F64", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]},
            },
            _parts()[1],
        ),
        "tensor 'z' has shape [0, 4611686018427387904, 4611686018427387904], which NumPy",
    ),
    "weight missing": (lambda: _written({"g.bias": None}), "does not hold the weights"),
    "weight bool": (lambda: _written({"g.bias": np.ones(2, bool)}), "does not hold the weights"),
}


@pytest.mark.parametrize("case", sorted(ST_CASES))
def test_each_kind_of_damaged_safetensors_file_fails_saying_what_is_wrong(tmp_path, case):
    # spec: W-3
    make, message = ST_CASES[case]
    path = tmp_path / "block.safetensors"
    path.write_bytes(make())
    with pytest.raises(FileFormatError) as info:
        load(path)
    assert repr(str(path)) in str(info.value) and message in str(info.value), str(info.value)


def test_a_header_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    # A file over 100 MB would take too long to write here: lower the limit instead.
    path = tmp_path / "block.safetensors"
    path.write_bytes(_saved_st())
    size = int.from_bytes(_saved_st()[:8], "little")
    monkeypatch.setattr(core_st, "MAX_HEADER_BYTES", size - 1)
    with pytest.raises(FileFormatError, match=f"header length {size} is over the limit"):
        load(path)


# Atomic saves ----------------------------------------------------------------------------


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


FILENAMES = ["block.safetensors", "block.npz"]


@pytest.mark.parametrize("filename", FILENAMES)
def test_a_rejected_save_leaves_the_old_file_and_nothing_else(tmp_path, saved, filename):
    path = tmp_path / filename
    path.write_bytes(saved)
    broken = {k: v for k, v in WEIGHTS.items() if k != "g.bias"}
    with pytest.raises(ValueError, match=r"g\.bias"):
        save(path, CONFIG, broken)
    with pytest.raises(TypeError, match="config"):
        save(path, CONFIG.to_dict(), WEIGHTS)
    assert path.read_bytes() == saved
    assert _listing(tmp_path) == [filename]


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, OSError])
@pytest.mark.parametrize("filename", FILENAMES)
def test_an_interrupted_save_leaves_the_old_file_and_nothing_else(
    tmp_path, saved, monkeypatch, interruption, filename
):
    # spec: W-3 (atomic writes)
    path = tmp_path / filename
    path.write_bytes(saved)

    def savez_then_fail(stream, **arrays):
        stream.write(b"PK\x03\x04 half an archive")
        raise interruption("interrupted")

    def fsync_fails(descriptor):
        raise interruption("interrupted")

    # A .npz save fails half way through its archive; a safetensors save once its bytes are
    # written, before they are renamed into place.
    monkeypatch.setattr(core_io.np, "savez", savez_then_fail)
    monkeypatch.setattr(core_st.os, "fsync", fsync_fails)
    with pytest.raises(interruption):
        save(path, CONFIG, WEIGHTS)
    assert path.read_bytes() == saved
    assert _listing(tmp_path) == [filename]


@pytest.mark.parametrize("filename", FILENAMES)
def test_a_save_replaces_the_file_whole(tmp_path, filename):
    path = tmp_path / filename
    path.write_bytes(b"an older, unrelated file")
    save(path, CONFIG, WEIGHTS)
    config, weights = load(path)
    assert config == CONFIG and all(np.array_equal(weights[k], WEIGHTS[k]) for k in WEIGHTS)
    assert _listing(tmp_path) == [filename]
    assert zipfile.is_zipfile(path) == filename.endswith(".npz") and os.stat(path).st_size > 0


@pytest.mark.parametrize("filename", FILENAMES)
def test_a_save_into_a_missing_folder_creates_nothing(tmp_path, filename):
    with pytest.raises(FileNotFoundError):
        save(tmp_path / "missing" / filename, CONFIG, WEIGHTS)
    assert _listing(tmp_path) == []
