"""Reading the golden vectors of ``spec/vectors`` (written by ``python -m nonlocal_core.vectors``).

A directory holds ``index.json`` (``{"spec_version", "cases": [{"name", "file", ...}]}``) and
one JSON per case; tensors are ``{"shape", "dtype", "data"}`` with data flat, row-major.

Parsing and validation are `nonlocal_core.vector_files`'s; this module turns a case into the
suite's `Case` at the dtype under test.

Example:
    >>> from nonlocal_core.vectors import DEFAULT_DIR
    >>> case = load_case(DEFAULT_DIR / load_index(DEFAULT_DIR)[0])
    >>> case, case.as_case("float32").x.dtype
    (VectorCase('embedded_2d'), dtype('float32'))
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from nonlocal_core import NonLocalConfig, vector_files
from nonlocal_core.vector_files import load_index

from .dtypes import cast
from .strategies import Case

__all__ = ["VectorCase", "load_case", "load_index"]


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


def load_case(path: Path) -> VectorCase:
    """One case file as a `VectorCase`; a damaged file raises
    `nonlocal_core.vector_files.VectorFileError` (a ValueError) naming it."""
    data = vector_files.load_case(path)
    inputs, expected = data["inputs"], data["expected"]
    return VectorCase(
        name=data["name"],
        description=data["description"],
        config=data["config"],
        training=data["training"],
        x=inputs["x"],
        context=inputs["context"],
        key_mask=inputs["key_mask"],
        weights=data["weights"],
        expected_z=expected["z"],
        expected_attention=expected["attention"],
    )
