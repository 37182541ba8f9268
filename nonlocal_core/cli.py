"""Argument checks shared by the project's command-line tools (``python -m ...``).

Each is an ``argparse`` ``type=`` function: a bad value becomes a usage error (exit status 2)
naming the option, the value and what is expected, before the tool does any work.
"""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Callable
from pathlib import Path


def output_folder(purpose: str) -> Callable[[str], Path]:
    """An ``argparse`` type for an output folder: one that exists or can be created, with no
    file, broken link or unwritable folder in the way. `purpose` ends the error message.

    Example:
        >>> import tempfile
        >>> check = output_folder("a folder for the results (created if missing)")
        >>> check(tempfile.mkdtemp()).is_dir()
        True
        >>> check(__file__)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: '...cli.py' exists and is not a folder: expected a folder ...
    """
    expected = f"expected {purpose}"

    def check(text: str) -> Path:
        if not text or "\x00" in text:
            what = "is an empty path" if not text else "has a NUL character"
            raise argparse.ArgumentTypeError(f"{text!r} {what}: {expected}")
        path = Path(text).absolute()
        is_dir = False
        for existing in (path, *path.parents):  # the nearest one that exists must be a folder
            try:
                is_dir = stat.S_ISDIR(os.stat(existing).st_mode)
            except (FileNotFoundError, NotADirectoryError):
                if os.path.islink(existing):
                    raise argparse.ArgumentTypeError(
                        f"{text!r}: {existing} is a broken symbolic link: {expected}"
                    ) from None
                continue
            except OSError as exc:  # a name too long, a folder without access, ...
                raise argparse.ArgumentTypeError(
                    f"{text!r} cannot be used ({exc}): {expected}"
                ) from None
            break
        if not is_dir:
            where = "exists and is not a folder" if existing == path else f"is under {existing}"
            raise argparse.ArgumentTypeError(f"{text!r} {where}: {expected}")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"{text!r}: {existing} is not writable: {expected}")
        return Path(text)

    return check
