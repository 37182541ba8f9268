"""Save and load a config plus its canonical weights as one ``.npz`` file.

The file is a plain NumPy zip archive readable without Python pickles: one ``.npy`` entry per
canonical weight under its canonical name, and ``__config__``, the UTF-8 bytes of a JSON object
``{"spec_version": "1.0", "config": {...}}`` stored as a uint8 array.

Reading never trusts the file: a truncated, corrupted or foreign file raises `FileFormatError`
(a ValueError) naming the file and what is wrong with it; only the operating system's own
errors (no such file, a directory, no permission) stay `OSError`. Writing is atomic: the
archive goes to a temporary file beside the target, which replaces the target only once
complete, so an interrupted or failed save leaves any previous file as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from .config import SPEC_MAJOR, SPEC_VERSION, NonLocalConfig, is_compatible_version, require_config
from .weights import Weights, check_weights

CONFIG_KEY = "__config__"


class FileFormatError(ValueError):
    """A file is not a readable saved block: corrupted, truncated, foreign or inconsistent."""


def save(path: str | os.PathLike, config: NonLocalConfig, weights: Mapping[str, np.ndarray]):
    """Write `config` and `weights` (checked against it) to `path` (an ``.npz`` file).

    Atomic: nothing is written when the weights do not fit the config, and an existing file
    at `path` is replaced only by a complete new one.

    Example:
        >>> import tempfile, pathlib
        >>> from nonlocal_core import NonLocalConfig, init_weights
        >>> cfg = NonLocalConfig(4)
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "block.npz"
        >>> save(path, cfg, init_weights(cfg))
        >>> load(path)[0] == cfg
        True
    """
    require_config(config)
    check_weights(weights, config)
    path = os.fspath(path)
    header = json.dumps({"spec_version": SPEC_VERSION, "config": config.to_dict()})
    arrays = {name: np.asarray(value) for name, value in weights.items()}
    arrays[CONFIG_KEY] = np.frombuffer(header.encode("utf-8"), dtype=np.uint8)
    folder = os.path.dirname(os.path.abspath(path))
    # Same folder as the target, so that os.replace is a rename on one file system.
    handle, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder
    )
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def load(path: str | os.PathLike) -> tuple[NonLocalConfig, Weights]:
    """Read a file written by `save`: returns ``(config, weights)``, weights checked.

    Raises `FileFormatError` (a ValueError) naming the file when it is not a saved block of
    this spec's major version, and `FileNotFoundError` etc. when it cannot be opened at all.

    Example:
        >>> import tempfile, pathlib
        >>> from nonlocal_core import NonLocalConfig, init_weights
        >>> cfg = NonLocalConfig(4, instantiation="dot_product")
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "block.npz"
        >>> save(path, cfg, init_weights(cfg))
        >>> sorted(load(path)[1])[:2]
        ['g.bias', 'g.weight']
        >>> _ = path.write_bytes(b"not a zip archive")
        >>> load(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        nonlocal_core.io.FileFormatError: '...block.npz' is not a saved block: not a zip archive ...
    """
    name = repr(os.fspath(path))
    header, weights = _read_archive(path, name)
    config = _parse_header(header, name)
    try:
        check_weights(weights, config)
    except ValueError as exc:
        raise FileFormatError(f"{name} does not hold the weights its config needs: {exc}") from exc
    return config, weights


def _read_archive(path: str | os.PathLike, name: str) -> tuple[np.ndarray, Weights]:
    """The header array and every weight array of the archive, read in full."""
    # Opened here so that OSError (missing file, a directory) reaches the caller unchanged.
    with open(path, "rb") as stream:
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
    return entries.pop(CONFIG_KEY), entries


def _parse_header(header: np.ndarray, name: str) -> NonLocalConfig:
    """The config in the ``__config__`` entry, every step validated before it is used."""
    if header.dtype != np.uint8 or header.ndim != 1:
        raise FileFormatError(
            f"{name}: entry {CONFIG_KEY!r} has dtype {header.dtype} and shape {header.shape}: "
            "expected a 1-D uint8 array of UTF-8 JSON"
        )
    try:
        document: Any = json.loads(header.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{name}: entry {CONFIG_KEY!r} is not UTF-8 JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict):
        raise FileFormatError(
            f"{name}: entry {CONFIG_KEY!r} holds {brief(document)}: expected a JSON object "
            '{"spec_version": "1.0", "config": {...}}'
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


def brief(value: Any, limit: int = 80) -> str:
    """`value` as JSON text cut to `limit` characters, for error messages about file contents.

    Example:
        >>> brief({"config": list(range(40))}, limit=20)
        '{"config": [0, 1,...'
    """
    text = json.dumps(value, default=repr)
    return text if len(text) <= limit else text[: limit - 3] + "..."
