"""What every file format of `nonlocal_core` shares: the error for an unreadable file, the
way file contents are quoted in messages, and atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO


class FileFormatError(ValueError):
    """A file is not a readable saved block: corrupted, truncated, foreign or inconsistent."""


def brief(value: Any, limit: int = 80) -> str:
    """`value` as JSON text cut to `limit` characters, for error messages about file contents.

    Example:
        >>> brief({"config": list(range(40))}, limit=20)
        '{"config": [0, 1,...'
    """
    text = json.dumps(value, default=repr)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_atomically(path: str | os.PathLike, fill: Callable[[BinaryIO], object]) -> None:
    """Create or replace the file at `path` with what `fill` writes to the binary stream it is
    given - all or nothing.

    `fill` writes to a temporary file beside `path`, which is flushed to disk and only then
    renamed over `path`; if `fill` or anything after it fails (or is interrupted), the
    temporary file is removed and any previous file at `path` stays as it was.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "f.bin"
        >>> write_atomically(path, lambda stream: stream.write(b"new"))
        >>> def half_then_fail(stream):
        ...     stream.write(b"ha")
        ...     raise OSError("disk full")
        >>> write_atomically(path, half_then_fail)
        Traceback (most recent call last):
        ...
        OSError: disk full
        >>> path.read_bytes(), sorted(p.name for p in path.parent.iterdir())
        (b'new', ['f.bin'])
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    # Same folder as the target, so that os.replace is a rename on one file system.
    handle, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder
    )
    try:
        with os.fdopen(handle, "wb") as stream:
            fill(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


# Writing ----------------------------------------------------------------------------------
