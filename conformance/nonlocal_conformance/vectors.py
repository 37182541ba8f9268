"""Reading the golden vectors of ``spec/vectors`` (written by ``python -m nonlocal_core.vectors``).

A directory holds ``index.json`` (``{"spec_version", "cases": [{"name", "file", ...}]}``) and
one JSON per case; tensors are ``{"shape", "dtype", "data"}`` with data flat, row-major.

Example:
    >>> decode({"shape": [2, 2], "dtype": "float64", "data": [1, 2, 3, 4]}).tolist()
    [[1.0, 2.0], [3.0, 4.0]]
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from nonlocal_core import SPEC_VERSION, NonLocalConfig

from .dtypes import cast
from .strategies import Case


class VectorError(ValueError):
    """A golden-vector file is malformed or written for another major spec version."""


def decode(tensor: dict[str, Any] | None) -> np.ndarray | None:
    """A tensor record as a NumPy array (None stays None)."""
    if tensor is None:
        return None
    dtype = {"float64": np.float64, "bool": np.bool_}.get(tensor["dtype"])
    if dtype is None:
        raise VectorError(f"tensor dtype {tensor['dtype']!r}: expected 'float64' or 'bool'")
    return np.asarray(tensor["data"], dtype=dtype).reshape(tensor["shape"])


@dataclasses.dataclass
class VectorCase:
    """One golden vector: config, float64 inputs and weights, and the expected outputs."""

    name: str
    description: str
    config: NonLocalConfig
    training: bool
    x: np.ndarray
    context: np.ndarray | None
    key_mask: np.ndarray | None
    weights: dict[str, np.ndarray]
    expected_z: np.ndarray
    expected_attention: np.ndarray | None

    def as_case(self, dtype: str) -> Case:
        """The vector's inputs and weights rounded to `dtype`."""
        return Case(
            config=self.config,
            dtype=dtype,
            x=cast(self.x, dtype),
            weights={k: cast(v, dtype) for k, v in self.weights.items()},
            context=None if self.context is None else cast(self.context, dtype),
            key_mask=self.key_mask,
            training=self.training,
        )

    def __repr__(self) -> str:
        return f"VectorCase({self.name!r})"


def _check_version(version: Any, where: str) -> None:
    if str(version).split(".")[0] != SPEC_VERSION.split(".")[0]:
        raise VectorError(f"{where} is for spec {version!r}: expected {SPEC_VERSION} (major)")


def load_index(directory: Path) -> list[str]:
    """The case file names listed in ``directory/index.json``."""
    index = json.loads((directory / "index.json").read_text(encoding="utf-8"))
    _check_version(index.get("spec_version"), str(directory / "index.json"))
    return [entry["file"] for entry in index["cases"]]


def load_case(path: Path) -> VectorCase:
    """One case file as a `VectorCase`."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    _check_version(data.get("spec_version"), str(path))
    inputs, expected = data["inputs"], data["expected"]
    return VectorCase(
        name=data["name"],
        description=data.get("description", ""),
        config=NonLocalConfig.from_dict(data["config"]),
        training=bool(data["training"]),
        x=decode(inputs["x"]),
        context=decode(inputs.get("context")),
        key_mask=decode(inputs.get("key_mask")),
        weights={k: decode(v) for k, v in data["weights"].items()},
        expected_z=decode(expected["z"]),
        expected_attention=decode(expected.get("attention")),
    )
