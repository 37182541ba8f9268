"""Save and load a config plus its canonical weights as one file, ``block.safetensors``.

The canonical file is safetensors (see `nonlocal_core.safetensors`), which any safetensors
reader opens and whose reading runs no code: one tensor per canonical weight under its
canonical name, in the weights' own dtype, and in the header's ``__metadata__`` three strings,
``format`` (``"nonlocal_block"``), ``spec_version`` (``"1.0"``) and ``config`` (the JSON of
`NonLocalConfig.to_dict`).

A path ending in ``.npz`` gets the legacy layout instead, kept for compatibility: a plain NumPy
zip archive with one ``.npy`` entry per canonical weight and ``__config__``, the UTF-8 bytes
of a JSON object ``{"spec_version": "1.0", "config": {...}}`` stored as a uint8 array. `load`
reads both, telling them apart by their content, not their name.

Reading never trusts the file: a truncated, corrupted or foreign file raises `FileFormatError`
(a ValueError) naming the file and what is wrong with it; only the operating system's own
errors (no such file, a directory, no permission) stay `OSError`. Writing is atomic: the
file goes to a temporary file beside the target, which replaces the target only once
complete, so an interrupted or failed save leaves any previous file as it was.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np

from . import safetensors
from .config import SPEC_MAJOR, SPEC_VERSION, NonLocalConfig, is_compatible_version, require_config
from .files import FileFormatError, brief, write_atomically
from .weights import Weights, check_weights

__all__ = ["CONFIG_KEY", "FORMAT", "FileFormatError", "brief", "load", "save"]

CONFIG_KEY = "__config__"
FORMAT = "nonlocal_block"
# What each layout's header looks like, for the error raised when a file's is something else.
_NPZ_HEADER = '{"spec_version": "1.0", "config": {...}}'
_METADATA = '{"format": "nonlocal_block", "spec_version": "1.0", "config": "<a JSON object>"}'
# How NumPy recognises a zip archive (a non-empty one, an empty one). A safetensors file
# starts with its header length instead, which would need to be over 67 MB to match.
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def save(path: str | os.PathLike, config: NonLocalConfig, weights: Mapping[str, np.ndarray]):
    """Write `config` and `weights` (checked against it) to `path`: a safetensors file, or the
    legacy ``.npz`` archive when `path` ends in ``.npz`` (in any case).

    Atomic: nothing is written when the weights do not fit the config, and an existing file
    at `path` is replaced only by a complete new one.

    Example:
        >>> import tempfile, pathlib
        >>> from nonlocal_core import NonLocalConfig, init_weights
        >>> cfg = NonLocalConfig(4)
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> save(folder / "block.safetensors", cfg, init_weights(cfg))
        >>> load(folder / "block.safetensors")[0] == cfg
        True
        >>> save(folder / "legacy.npz", cfg, init_weights(cfg))
        >>> load(folder / "legacy.npz")[0] == cfg
        True
    """
    require_config(config)
    check_weights(weights, config)
    arrays = {name: np.asarray(value) for name, value in weights.items()}
    if os.fsdecode(path).lower().endswith(".npz"):
        header = json.dumps({"spec_version": SPEC_VERSION, "config": config.to_dict()})
        arrays[CONFIG_KEY] = np.frombuffer(header.encode("utf-8"), dtype=np.uint8)
        write_atomically(path, lambda stream: np.savez(stream, **arrays))
    else:
        metadata = {
            "format": FORMAT,
            "spec_version": SPEC_VERSION,
            "config": json.dumps(config.to_dict()),
        }
        safetensors.write(path, arrays, metadata)


def load(path: str | os.PathLike) -> tuple[NonLocalConfig, Weights]:
    """Read a file written by `save` (either layout): returns ``(config, weights)``, weights
    checked.

    Raises `FileFormatError` (a ValueError) naming the file when it is not a saved block of
    this spec's major version, and `FileNotFoundError` etc. when it cannot be opened at all.

    Example:
        >>> import tempfile, pathlib
        >>> from nonlocal_core import NonLocalConfig, init_weights
        >>> cfg = NonLocalConfig(4, instantiation="dot_product")
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "block.safetensors"
        >>> save(path, cfg, init_weights(cfg))
        >>> sorted(load(path)[1])[:2]
        ['g.bias', 'g.weight']
        >>> _ = path.write_bytes(b"not a weights file")
        >>> load(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        nonlocal_core.files.FileFormatError: '...block.safetensors' is not a safetensors file: its header length field says ... bytes but only 10 follow (truncated or another format)
    """  # noqa: E501
    name = repr(os.fspath(path))
    # Opened here so that OSError (missing file, a directory) reaches the caller unchanged.
    with open(path, "rb") as stream:
        is_zip = stream.read(4) in _ZIP_MAGIC
        stream.seek(0)
        config, weights = _read_npz(stream, name) if is_zip else _read_safetensors(stream, name)
    try:
        check_weights(weights, config)
    except ValueError as exc:
        raise FileFormatError(f"{name} does not hold the weights its config needs: {exc}") from exc
    return config, weights


def _read_safetensors(stream: BinaryIO, name: str) -> tuple[NonLocalConfig, Weights]:
    """The config in the metadata of a safetensors file, and its tensors."""
    weights, metadata = safetensors.read_bytes(stream.read(), name)
    if metadata.get("format") != FORMAT:
        raise FileFormatError(
            f"{name} is not a saved block: its safetensors metadata has the format "
            f"{brief(metadata.get('format'))}, expected {FORMAT!r}"
        )
    document: dict[str, Any] = dict(metadata)
    if "config" in document:
        document["config"] = _parse_json(document["config"], name, "metadata 'config'")
    return _parse_header(document, name, "its metadata", _METADATA), weights


def _read_npz(stream: BinaryIO, name: str) -> tuple[NonLocalConfig, Weights]:
    """The config in the ``__config__`` entry of a legacy ``.npz`` archive, and its weights."""
    if not zipfile.is_zipfile(stream):
        raise FileFormatError(
            f"{name} is not a saved block: not a zip archive (truncated, corrupted or "
            "another format); expected the .npz written by nonlocal_core.save"
        )
    stream.seek(0)
    try:
        with np.load(stream, allow_pickle=False) as archive:
            if CONFIG_KEY not in archive.files:
                raise FileFormatError(
                    f"{name} has no {CONFIG_KEY!r} entry: not a saved block (entries: "
                    f"{sorted(archive.files)[:8]})"
                )
            entries = {key: archive[key] for key in archive.files}
    except FileFormatError:
        raise
    # What a damaged archive raises from zipfile (NotImplementedError and RuntimeError
    # for flag bits claiming encryption or unsupported versions), zlib and NumPy's .npy
    # parser (pickled entries are refused by allow_pickle=False with a ValueError;
    # MemoryError when a header claims an absurd shape).
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        ValueError,
        KeyError,
        OSError,
        NotImplementedError,
        RuntimeError,
        MemoryError,
    ) as exc:
        raise FileFormatError(
            f"{name} is corrupted or not a saved block: {type(exc).__name__}: {exc}"
        ) from exc
    header = entries.pop(CONFIG_KEY)
    if header.dtype != np.uint8 or header.ndim != 1:
        raise FileFormatError(
            f"{name}: entry {CONFIG_KEY!r} has dtype {header.dtype} and shape {header.shape}: "
            "expected a 1-D uint8 array of UTF-8 JSON"
        )
    document = _parse_json(header.tobytes(), name, f"entry {CONFIG_KEY!r}")
    return _parse_header(document, name, f"entry {CONFIG_KEY!r}", _NPZ_HEADER), entries


def _parse_json(text: bytes | str, name: str, where: str) -> Any:
    """`text` (UTF-8 bytes or a str) parsed as JSON, or `FileFormatError` naming `where`."""
    try:
        return json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    # ValueError covers bad UTF-8, bad JSON and integers of too many digits; RecursionError
    # deeply nested arrays.
    except (ValueError, RecursionError) as exc:
        raise FileFormatError(f"{name}: {where} is not UTF-8 JSON: {exc}") from exc


def _parse_header(document: Any, name: str, where: str, layout: str) -> NonLocalConfig:
    """The config of a file's parsed header (`where` in the file, expected to look like
    `layout`), every step validated before it is used."""
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict):
        raise FileFormatError(
            f"{name}: {where} holds {brief(document)}: expected a JSON object {layout}"
        )
    version = document.get("spec_version")
    if not is_compatible_version(version):
        raise FileFormatError(
            f"{name} was written for spec {version!r}: expected a {SPEC_MAJOR}.x file"
        )
    try:
        return NonLocalConfig.from_dict(document["config"])
    except (TypeError, ValueError) as exc:
        raise FileFormatError(f"{name} holds an invalid config: {exc}") from exc
