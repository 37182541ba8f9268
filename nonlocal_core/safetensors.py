"""A pure-NumPy reader and writer of the safetensors format, for the canonical weights file.

A safetensors file (https://github.com/huggingface/safetensors) is an 8-byte little-endian
unsigned header length N, then N bytes of a UTF-8 JSON object, then the data: the raw bytes of
every tensor, little-endian and C-ordered. The JSON object maps each tensor's name to
``{"dtype": "F64", "shape": [2, 3], "data_offsets": [begin, end]}`` (a byte range of the data)
and may hold ``"__metadata__"``, an object of strings. Nothing in the file is code, and this
reader checks all of it before use: any fault raises `FileFormatError` (a ValueError) naming
the file and the fault; only the operating system's own errors (no such file, a directory)
stay `OSError`.

This module needs NumPy only (not the ``safetensors`` package); what every file format of
`nonlocal_core` shares (`FileFormatError`, atomic writes) is in `nonlocal_core.files`.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "t.safetensors"
    >>> write(path, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, {"note": "hi"})
    >>> arrays, metadata = read(path)
    >>> arrays["w"].tolist(), metadata
    ([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], {'note': 'hi'})
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from .files import FileFormatError, brief, write_atomically

METADATA_KEY = "__metadata__"
# The limit of the reference implementation: a longer header is refused before parsing.
MAX_HEADER_BYTES = 100_000_000
# NumPy's own limit on the number of axes; it also bounds the work a hostile shape can cause.
MAX_RANK = 64
# safetensors dtype -> NumPy dtype of the stored bytes. BF16, which NumPy lacks, is read as
# its raw 16 bits and widened to float32 (exactly) by `_decode`.
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in {
        "BOOL": "|b1",
        "U8": "|u1",
        "I8": "|i1",
        "U16": "<u2",
        "I16": "<i2",
        "F16": "<f2",
        "BF16": "<u2",
        "U32": "<u4",
        "I32": "<i4",
        "F32": "<f4",
        "U64": "<u8",
        "I64": "<i8",
        "F64": "<f8",
    }.items()
}
# NumPy (kind, itemsize) -> the safetensors dtype `write` stores it as.
_NAMES = {(dtype.kind, dtype.itemsize): name for name, dtype in DTYPES.items() if name != "BF16"}
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


class _Entry(NamedTuple):
    """One tensor's header entry, checked: its bytes are ``data[begin:end]``."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def write(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write `arrays` (name -> array) and `metadata` (str -> str) to `path` as safetensors.

    Tensors are stored in sorted name order, little-endian and C-ordered. Every array and
    name is checked before the file is touched, and the write is atomic (`write_atomically`).
    NumPy types without a safetensors equivalent (object, complex, text, float128, ...) raise
    ValueError, names or metadata that are not strings TypeError; both name the culprit.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "t.safetensors"
        >>> write(path, {"b": np.zeros(2, np.int8), "a": np.ones((), np.float16)})
        >>> sorted(read(path)[0].items())
        [('a', array(1., dtype=float16)), ('b', array([0, 0], dtype=int8))]
        >>> write(path, {"c": np.ones(2, complex)})
        Traceback (most recent call last):
        ...
        ValueError: tensor 'c' has dtype complex128, which safetensors cannot store: ...
    """
    data = to_bytes(arrays, metadata)
    write_atomically(path, lambda stream: stream.write(data))


def to_bytes(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """The bytes of the safetensors file `write` would write for `arrays` and `metadata`.

    The header is padded with spaces to a multiple of 8 bytes, so the data starts aligned.

    Example:
        >>> data = to_bytes({"x": np.array([1.0, 2.0])}, {"k": "v"})
        >>> size = int.from_bytes(data[:8], "little")
        >>> header = json.loads(data[8 : 8 + size])
        >>> size % 8, header["__metadata__"], header["x"]
        (0, {'k': 'v'}, {'dtype': 'F64', 'shape': [2], 'data_offsets': [0, 16]})
    """
    if not isinstance(arrays, Mapping):
        raise TypeError(f"arrays must be a mapping from name to array, got {type(arrays).__name__}")
    header: dict[str, Any] = {}
    if metadata is not None:
        header[METADATA_KEY] = _checked_metadata(metadata)
    chunks, offset = [], 0
    for name in sorted(_checked_names(arrays)):
        array = _as_array(name, arrays[name])
        chunk = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
        header[name] = {
            "dtype": _NAMES[array.dtype.kind, array.dtype.itemsize],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(chunk)],
        }
        chunks.append(chunk)
        offset += len(chunk)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def _checked_metadata(metadata: Any) -> dict[str, str]:
    if not isinstance(metadata, Mapping):
        raise TypeError(
            f"metadata must be a mapping from str to str, got {type(metadata).__name__}"
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                f"metadata {key!r}: {value!r} is not str -> str: safetensors metadata holds "
                "strings only (encode other values, e.g. as JSON)"
            )
    return dict(metadata)


def _checked_names(arrays: Mapping) -> list[str]:
    for name in arrays:
        if not isinstance(name, str):
            raise TypeError(f"tensor name {name!r} is a {type(name).__name__}: expected a str")
        if name == METADATA_KEY:
            raise ValueError(f"a tensor cannot be named {METADATA_KEY!r}: the metadata's key")
    return list(arrays)


def _as_array(name: str, value: Any) -> np.ndarray:
    """`value` as an array of a dtype safetensors can store, or an error naming tensor `name`."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged nested lists, odd objects
        raise ValueError(f"tensor {name!r} cannot be read as an array: {exc}") from exc
    if (array.dtype.kind, array.dtype.itemsize) not in _NAMES:
        raise ValueError(
            f"tensor {name!r} has dtype {array.dtype}, which safetensors cannot store: expected "
            "bool, an integer or float16/32/64"
        )
    return array


# Reading ----------------------------------------------------------------------------------


def read(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors (name -> array, sorted by name) and the metadata of the safetensors file
    at `path`, everything validated first (see `read_bytes`).

    Raises `FileFormatError` (a ValueError) naming the file and the fault when it is not a
    valid safetensors file, and `FileNotFoundError` etc. when it cannot be opened at all.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "t.safetensors"
        >>> write(path, {"w": np.eye(2)}, {"format": "demo"})
        >>> arrays, metadata = read(path)
        >>> arrays["w"].dtype, metadata
        (dtype('float64'), {'format': 'demo'})
        >>> _ = path.write_bytes(path.read_bytes()[:-1])  # cut short
        >>> read(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        nonlocal_core.files.FileFormatError: '...t.safetensors': the tensors end at byte 32 of the data, which holds 31 bytes ...
    """  # noqa: E501
    with open(path, "rb") as stream:
        return read_bytes(stream.read(), repr(os.fspath(path)))


def read_bytes(data: bytes, name: str = "<bytes>") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """`read` for the bytes of a file; `name` stands for the file in error messages.

    Checks all of it before returning anything: the header length (at most what follows it,
    and at most `MAX_HEADER_BYTES`); that the header is a UTF-8 JSON object without repeated
    keys; the metadata (strings only); every tensor's dtype, shape (at most `MAX_RANK`
    integers >= 0) and data_offsets (integers, begin <= end, spanning exactly its bytes); that
    the tensors tile the data exactly, without gaps or overlaps; and that BOOL bytes are 0 or
    1. BF16 is widened to float32 exactly; every array returned is a writable, native-endian
    copy.

    Example:
        >>> arrays, metadata = read_bytes(to_bytes({"x": np.arange(3)}))
        >>> arrays["x"].tolist(), metadata
        ([0, 1, 2], {})
        >>> read_bytes(b"\\x02\\x00\\x00\\x00\\x00\\x00\\x00\\x00[]", "'x.st'")
        Traceback (most recent call last):
        ...
        nonlocal_core.files.FileFormatError: 'x.st': the header holds []: expected a JSON object of tensors
    """  # noqa: E501
    header, buffer = _split(data, name)
    metadata = _metadata(header.pop(METADATA_KEY, {}), name)
    entries = {tensor: _entry(tensor, entry, name) for tensor, entry in header.items()}
    _check_tiling(entries, len(buffer), name)
    arrays = {tensor: _decode(tensor, entries[tensor], buffer, name) for tensor in sorted(entries)}
    return arrays, metadata


class _RepeatedKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict; a key given twice (which json would let win silently, so the
    file could say two things about one tensor) raises `_RepeatedKey`."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _RepeatedKey(repr(key))
        out[key] = value
    return out


def _split(data: bytes, name: str) -> tuple[dict[str, Any], memoryview]:
    """The parsed header and the data buffer of a file's bytes."""
    if len(data) < 8:
        raise FileFormatError(
            f"{name} is not a safetensors file: {len(data)} bytes, too short for the 8-byte "
            "header length (truncated or another format)"
        )
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise FileFormatError(
            f"{name} is not a safetensors file: its header length field says {size} bytes but "
            f"only {len(data) - 8} follow (truncated or another format)"
        )
    if size > MAX_HEADER_BYTES:
        raise FileFormatError(
            f"{name}: the safetensors header length {size} is over the limit of "
            f"{MAX_HEADER_BYTES} bytes"
        )
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"), object_pairs_hook=_unique_keys)
    except _RepeatedKey as exc:
        raise FileFormatError(f"{name}: the header has the key {exc} twice") from exc
    # ValueError covers bad UTF-8, bad JSON and integers of too many digits; RecursionError
    # deeply nested arrays.
    except (ValueError, RecursionError) as exc:
        raise FileFormatError(f"{name}: the safetensors header is not UTF-8 JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise FileFormatError(
            f"{name}: the header holds {brief(header)}: expected a JSON object of tensors"
        )
    return header, memoryview(data)[8 + size :]


def _metadata(metadata: Any, name: str) -> dict[str, str]:
    if not isinstance(metadata, dict):
        raise FileFormatError(
            f"{name}: the header's {METADATA_KEY!r} is {brief(metadata)}: expected an object "
            "of strings"
        )
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise FileFormatError(f"{name}: metadata {key!r} is {brief(value)}: expected a string")
    return metadata


def _is_count(value: Any) -> bool:
    # type() rather than isinstance: JSON true and false are bools, an int subclass.
    return type(value) is int and value >= 0


def _entry(tensor: str, entry: Any, name: str) -> _Entry:
    """Tensor `tensor`'s header entry, each field checked, and against the others."""
    where = f"{name}: tensor {tensor!r}"
    if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
        raise FileFormatError(
            f"{where} is {brief(entry)}: expected an object with exactly the keys 'dtype', "
            "'shape' and 'data_offsets'"
        )
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise FileFormatError(
            f"{where} has dtype {brief(dtype)}: expected one of {', '.join(DTYPES)}"
        )
    if not (isinstance(shape, list) and len(shape) <= MAX_RANK and all(map(_is_count, shape))):
        raise FileFormatError(
            f"{where} has shape {brief(shape)}: expected a list of at most {MAX_RANK} integers >= 0"
        )
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(map(_is_count, offsets))
        and offsets[0] <= offsets[1]
    ):
        raise FileFormatError(
            f"{where} has data_offsets {brief(offsets)}: expected [begin, end], integers with "
            "0 <= begin <= end"
        )
    begin, end = offsets
    needed = math.prod(shape) * DTYPES[dtype].itemsize
    if end - begin != needed:
        raise FileFormatError(
            f"{where} of dtype {dtype} and shape {shape} takes {needed} bytes, but its "
            f"data_offsets {offsets} span {end - begin}"
        )
    return _Entry(dtype, tuple(shape), begin, end)


def _check_tiling(entries: Mapping[str, _Entry], length: int, name: str) -> None:
    """Raise unless the tensors' byte ranges cover the data buffer exactly once: a gap would
    hide bytes no tensor accounts for, an overlap would let two tensors share bytes."""
    position = 0
    by_offset = sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end))
    for tensor, (_, _, begin, end) in by_offset:
        if begin != position:
            fault = "a gap" if begin > position else "an overlap"
            raise FileFormatError(
                f"{name}: tensor {tensor!r} starts at byte {begin} of the data, but the tensors "
                f"before it end at byte {position}: {fault} (the tensors must tile the data)"
            )
        position = end
    if position != length:
        raise FileFormatError(
            f"{name}: the tensors end at byte {position} of the data, which holds {length} "
            "bytes (truncated, or junk appended)"
        )


def _decode(tensor: str, entry: _Entry, buffer: memoryview, name: str) -> np.ndarray:
    """Tensor `tensor`'s bytes as a writable, native-endian array of its shape."""
    dtype, shape, begin, end = entry
    stored = DTYPES[dtype]
    raw = np.frombuffer(buffer, stored, count=(end - begin) // stored.itemsize, offset=begin)
    if dtype == "BF16":
        # bfloat16 is the top half of a float32: shifting the bits back up is exact.
        array = (raw.astype(np.uint32) << 16).view(np.float32)
    elif dtype == "BOOL":
        # A byte other than 0 or 1 is no bool; NumPy would keep it as an odd "true".
        codes = raw.view(np.uint8)
        if np.any(codes > 1):
            raise FileFormatError(f"{name}: tensor {tensor!r} (BOOL) holds bytes other than 0/1")
        array = codes.astype(np.bool_)
    else:
        array = raw.astype(stored.newbyteorder("="))
    try:
        return array.reshape(shape)
    except ValueError as exc:  # an empty tensor with an absurd extent, or too many axes
        raise FileFormatError(
            f"{name}: tensor {tensor!r} has shape {list(shape)}, which NumPy cannot hold: {exc}"
        ) from exc
