"""The adapter protocol: how the conformance suite drives an implementation under test.

An adapter wraps one implementation (ours or a third party's) behind five methods that speak
NumPy, so the suite never imports a framework itself. Arrays handed to an adapter hold values
already representable in the dtype under test (the suite rounds them first); the adapter
converts them to its own tensors of that dtype, which is therefore exact.

Example:
    >>> from nonlocal_conformance.adapter import Capabilities
    >>> caps = Capabilities(dtypes=frozenset({"float32", "float64"}))
    >>> caps.supports(instantiation="gaussian", dtype="float64")
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from nonlocal_core import (
    DATA_FORMATS,
    INSTANTIATIONS,
    NORMS,
    POOL_POSITIONS,
    NonLocalConfig,
)

ALL_DTYPES = ("float64", "float32", "bfloat16", "float16")

# Features named by a value, and the capability field listing the allowed values.
_VALUED_FEATURES = {
    "dtype": "dtypes",
    "device": "devices",
    "instantiation": "instantiations",
    "spatial_dims": "spatial_dims",
    "data_format": "data_formats",
    "pool_position": "pool_positions",
    "norm": "norms",
}


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What an adapter's implementation supports; anything else is skipped, with a reason.

    Attributes:
        instantiations, spatial_dims, data_formats, pool_positions, norms: the config values
            the implementation accepts.
        dtypes: dtype names from ``ALL_DTYPES``; devices: e.g. ``{"cpu", "cuda"}``.
        context, key_mask, training, attention: optional forward features.
        gradients: `Adapter.gradients` is implemented.
        input_errors: invalid inputs raise ``ValueError``/``TypeError`` with a message.
    """

    instantiations: frozenset[str] = frozenset(INSTANTIATIONS)
    spatial_dims: frozenset[int] = frozenset({1, 2, 3})
    data_formats: frozenset[str] = frozenset(DATA_FORMATS)
    pool_positions: frozenset[str] = frozenset(POOL_POSITIONS)
    norms: frozenset[str | None] = frozenset(NORMS)
    dtypes: frozenset[str] = frozenset({"float32"})
    devices: frozenset[str] = frozenset({"cpu"})
    context: bool = True
    key_mask: bool = True
    training: bool = True
    attention: bool = True
    gradients: bool = False
    input_errors: bool = True

    def missing(self, config: NonLocalConfig | None = None, **features: Any) -> list[str]:
        """The reasons `config` and the named features are unsupported (empty: supported).

        Features: ``dtype``, ``device``, ``instantiation``, ``spatial_dims``,
        ``data_format``, ``pool_position``, ``norm`` (values), and booleans ``context``,
        ``key_mask``, ``training``, ``attention``, ``gradients``, ``input_errors``.
        """
        reasons: list[str] = []
        if config is not None:
            checks = (
                ("instantiation", config.instantiation, self.instantiations),
                ("spatial_dims", config.spatial_dims, self.spatial_dims),
                ("data_format", config.data_format, self.data_formats),
                ("pool_position", config.pool_position, self.pool_positions),
                ("norm", config.norm, self.norms),
            )
            for field, value, allowed in checks:
                if value not in allowed:
                    reasons.append(f"{field}={value!r} not supported")
        for name, value in features.items():
            if name in _VALUED_FEATURES:
                allowed = getattr(self, _VALUED_FEATURES[name])
                if value not in allowed:
                    reasons.append(f"{name}={value!r} not supported")
            elif value and not getattr(self, name):
                reasons.append(f"{name} not supported")
        return reasons

    def as_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of the declared capabilities (sorted lists), for reports.

        Example:
            >>> Capabilities(devices=frozenset({"cpu"})).as_dict()["devices"]
            ['cpu']
        """
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, frozenset):
                value = sorted(value, key=lambda v: (v is None, str(v)))
            out[field.name] = value
        return out

    def supports(self, config: NonLocalConfig | None = None, **features: Any) -> bool:
        """True when nothing in `missing` applies."""
        return not self.missing(config, **features)


@dataclasses.dataclass
class Output:
    """What a forward pass returned, as NumPy.

    Attributes:
        z: the block's output (any float dtype; the suite compares in float64).
        dtype: the dtype name the implementation returned z in, e.g. ``"bfloat16"``.
        attention: the (B, N, N') matrix f / C when it was asked for.
    """

    z: np.ndarray
    dtype: str
    attention: np.ndarray | None = None


@runtime_checkable
class Adapter(Protocol):
    """The protocol an implementation under test provides (see spec/conformance.md).

    The constructor takes no arguments. ``build`` returns an opaque block handle the other
    methods receive back.

    Optional: ``precision(dtype, device) -> dict`` with keys ``storage``, ``matmul_inputs``
    and ``accumulation`` (dtype names, ``"tfloat32"`` allowed) describing how the
    implementation rounds; without it the suite assumes everything happens in `dtype`.
    """

    name: str
    capabilities: Capabilities

    def versions(self) -> dict[str, str]:
        """Library versions for the report header, e.g. ``{"torch": "2.13.0"}``."""
        ...

    def build(
        self, config: NonLocalConfig, weights: Mapping[str, np.ndarray], *, dtype: str, device: str
    ) -> Any:
        """A block with exactly these canonical weights, in `dtype` on `device`.

        Mismatched weights (missing, extra, mis-shaped) must raise ``ValueError``.
        """
        ...

    def forward(
        self,
        block: Any,
        x: np.ndarray,
        *,
        context: np.ndarray | None = None,
        key_mask: np.ndarray | None = None,
        training: bool = False,
        return_attention: bool = False,
    ) -> Output:
        """Run the block; invalid inputs raise ``ValueError`` or ``TypeError``."""
        ...

    def export_weights(self, block: Any) -> dict[str, np.ndarray]:
        """The block's weights in the canonical layout (names and shapes of the spec)."""
        ...

    def gradients(
        self,
        block: Any,
        x: np.ndarray,
        cotangent: np.ndarray,
        *,
        context: np.ndarray | None = None,
        key_mask: np.ndarray | None = None,
        training: bool = False,
    ) -> dict[str, np.ndarray]:
        """Gradients of ``sum(z * cotangent)``: keys ``"x"``, ``"context"`` (when given) and
        every canonical weight name except ``norm.running_mean`` / ``norm.running_var``."""
        ...
