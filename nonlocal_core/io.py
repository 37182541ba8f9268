"""Save and load a config plus its canonical weights as one ``.npz`` file.

The file is a plain NumPy zip archive readable without Python pickles: one ``.npy`` entry per
canonical weight under its canonical name, and ``__config__``, the UTF-8 bytes of a JSON object
``{"spec_version": "1.0", "config": {...}}`` stored as a uint8 array.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from .config import SPEC_VERSION, NonLocalConfig
from .weights import Weights, check_weights

CONFIG_KEY = "__config__"


def save(path: str | os.PathLike, config: NonLocalConfig, weights: Mapping[str, np.ndarray]):
    """Write `config` and `weights` (checked against it) to `path` (an ``.npz`` file).

    Example:
        >>> import tempfile, pathlib
        >>> from nonlocal_core import NonLocalConfig, init_weights
        >>> cfg = NonLocalConfig(4)
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "block.npz"
        >>> save(path, cfg, init_weights(cfg))
        >>> load(path)[0] == cfg
        True
    """
    check_weights(weights, config)
    header = json.dumps({"spec_version": SPEC_VERSION, "config": config.to_dict()})
    arrays = {name: np.asarray(value) for name, value in weights.items()}
    arrays[CONFIG_KEY] = np.frombuffer(header.encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def load(path: str | os.PathLike) -> tuple[NonLocalConfig, Weights]:
    """Read a file written by `save`: returns ``(config, weights)``, weights checked.

    Example:
        >>> import tempfile, pathlib
        >>> from nonlocal_core import NonLocalConfig, init_weights
        >>> cfg = NonLocalConfig(4, instantiation="dot_product")
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "block.npz"
        >>> save(path, cfg, init_weights(cfg))
        >>> sorted(load(path)[1])[:2]
        ['g.bias', 'g.weight']
    """
    with np.load(path, allow_pickle=False) as archive:
        if CONFIG_KEY not in archive.files:
            raise ValueError(f"{os.fspath(path)!r} has no {CONFIG_KEY!r} entry: not a saved block")
        header = json.loads(archive[CONFIG_KEY].tobytes().decode("utf-8"))
        weights = {name: archive[name] for name in archive.files if name != CONFIG_KEY}
    major = str(header.get("spec_version", "?")).split(".")[0]
    if major != SPEC_VERSION.split(".")[0]:
        raise ValueError(
            f"{os.fspath(path)!r} was written for spec {header.get('spec_version')!r}: "
            f"expected a {SPEC_VERSION.split('.')[0]}.x file"
        )
    config = NonLocalConfig.from_dict(header["config"])
    check_weights(weights, config)
    return config, weights
