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
    DEFAULT_WINDOWS,
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
# The rules a config's logit scale, inter_channels and subsample window follow (see
# `config_rules`), and which declared rule admits which: "any" admits every value.
LOGIT_SCALE_RULES = ("default", "one", "any")
INTER_CHANNELS_RULES = ("default", "divisor", "any")
WINDOW_RULES = ("none", "default", "any")
_ADMITS = {
    "logit_scales": {"default": {"default"}, "one": {"one"}, "any": {"default", "one", "any"}},
    "inter_channels": {
        "default": {"default"},
        "divisor": {"default", "divisor"},
        "any": {"default", "divisor", "any"},
    },
    "windows": {"none": {"none"}, "default": {"default"}, "any": {"default", "any"}},
}


class Unsupported(Exception):
    """Raised by an adapter's `build`, `forward`, `gradients` or `export_weights`: the
    implementation cannot build or run this config, these weights or this feature, and the
    message says why. The suite counts the draw as *declined* (with the reason, in the
    report) and draws another; a check whose every draw was declined is skipped.

    Declare what you can in `Capabilities` (the suite then never draws the rest); raise
    `Unsupported` for the finer restrictions no field expresses.

    Example:
        >>> raise Unsupported("mmcv: inter_channels=3 is not max(C // reduction, 1)")
        Traceback (most recent call last):
        ...
        nonlocal_conformance.adapter.Unsupported: mmcv: inter_channels=3 is not ...
    """


def config_rules(config: NonLocalConfig) -> dict[str, str | None]:
    """The rule each restrictable choice of `config` follows, in the vocabulary of the
    `Capabilities` fields ``logit_scales``, ``inter_channels`` and ``windows``.

    - logit scale: ``"default"`` (1/sqrt(d)), ``"one"`` (s = 1) or ``"any"`` (another
      float); None for dot product and concatenation, which have no scale (any declared
      ``logit_scales`` admits them);
    - inter_channels: ``"default"`` (C' = max(C // 2, 1)), ``"divisor"`` (C' = max(C // r, 1)
      for some integer r, mmcv's ``reduction``) or ``"any"``;
    - windows: ``"none"`` (no subsampling), ``"default"`` (the window ``subsample=True``
      means) or ``"any"``.

    Example:
        >>> config_rules(NonLocalConfig(8, inter_channels=2, logit_scale=False, subsample=True))
        {'logit_scales': 'one', 'inter_channels': 'divisor', 'windows': 'default'}
        >>> config_rules(NonLocalConfig(8, instantiation="dot_product"))["logit_scales"] is None
        True
    """
    scale = config.logit_scale
    if not config.is_softmax:
        scale_rule = None
    elif scale is None:
        scale_rule = "default"
    else:
        scale_rule = "one" if scale == 1.0 else "any"
    c, ci = config.in_channels, config.inter_channels
    if ci == max(c // 2, 1):
        inter_rule = "default"
    elif any(max(c // r, 1) == ci for r in range(1, c + 1)):
        inter_rule = "divisor"
    else:
        inter_rule = "any"
    if config.subsample is None:
        window_rule = "none"
    elif config.subsample == DEFAULT_WINDOWS[config.spatial_dims]:
        window_rule = "default"
    else:
        window_rule = "any"
    return {"logit_scales": scale_rule, "inter_channels": inter_rule, "windows": window_rule}


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What an adapter's implementation supports. The suite draws only inside it; what a
    field cannot express, the adapter declines by raising `Unsupported`. Anything not
    supported is reported as a skip or a declined draw, with the reason, never as a pass.

    Attributes:
        instantiations, spatial_dims, data_formats, pool_positions, norms: the config values
            the implementation accepts.
        dtypes: dtype names from ``ALL_DTYPES``; devices: e.g. ``{"cpu", "cuda"}``.
        logit_scales: rules from ``LOGIT_SCALE_RULES`` (see `config_rules`): ``"default"``
            1/sqrt(d), ``"one"`` s = 1, ``"any"`` every positive float.
        inter_channels: rules from ``INTER_CHANNELS_RULES``: ``"default"`` C' = max(C // 2, 1),
            ``"divisor"`` C' = max(C // r, 1) for an integer r, ``"any"``.
        windows: rules from ``WINDOW_RULES``: ``"none"`` no subsampling, ``"default"`` the
            window of ``subsample=True``, ``"any"`` every window.
        residual: the accepted values of ``residual``.
        norm_eps: the BN epsilons accepted, or None for any.
        out_bias_with_norm: a nonzero W_z bias b_z is kept when a norm follows (False: the
            implementation has no such bias, like mmcv; the suite then draws b_z = 0 there).
        context, key_mask, training, attention: optional forward features.
        gradients: `Adapter.gradients` is implemented.
        input_errors: invalid forward inputs raise ``ValueError``/``TypeError`` naming them.
        weight_errors: `Adapter.build` rejects weights that do not match the config.
        per_instantiation: overrides of any of these fields for one instantiation, e.g.
            ``{"gaussian": {"logit_scales": frozenset({"one"})}}`` or
            ``{"concatenation": {"gradients": False}}``.

    Example:
        >>> caps = Capabilities(logit_scales=frozenset({"default"}),
        ...                     per_instantiation={"gaussian": {"attention": False}})
        >>> caps.missing(NonLocalConfig(4, instantiation="gaussian", logit_scale=False))
        ['logit_scale=1.0 (rule one) not supported']
        >>> caps.supports(instantiation="gaussian", attention=True)
        False
    """

    instantiations: frozenset[str] = frozenset(INSTANTIATIONS)
    spatial_dims: frozenset[int] = frozenset({1, 2, 3})
    data_formats: frozenset[str] = frozenset(DATA_FORMATS)
    pool_positions: frozenset[str] = frozenset(POOL_POSITIONS)
    norms: frozenset[str | None] = frozenset(NORMS)
    dtypes: frozenset[str] = frozenset({"float32"})
    devices: frozenset[str] = frozenset({"cpu"})
    logit_scales: frozenset[str] = frozenset({"any"})
    inter_channels: frozenset[str] = frozenset({"any"})
    windows: frozenset[str] = frozenset({"none", "any"})
    residual: frozenset[bool] = frozenset({True, False})
    norm_eps: frozenset[float] | None = None
    out_bias_with_norm: bool = True
    context: bool = True
    key_mask: bool = True
    training: bool = True
    attention: bool = True
    gradients: bool = False
    input_errors: bool = True
    weight_errors: bool = True
    per_instantiation: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        vocabularies = {
            "logit_scales": LOGIT_SCALE_RULES,
            "inter_channels": INTER_CHANNELS_RULES,
            "windows": WINDOW_RULES,
            "dtypes": ALL_DTYPES,
        }
        for name, allowed in vocabularies.items():
            unknown = sorted(set(getattr(self, name)) - set(allowed))
            if unknown:
                raise ValueError(
                    f"Capabilities.{name}: unknown value(s) {unknown}; expected a subset of "
                    f"{list(allowed)}"
                )
        fields = {f.name for f in dataclasses.fields(self)} - {"per_instantiation"}
        for inst, overrides in self.per_instantiation.items():
            if inst not in INSTANTIATIONS:
                raise ValueError(
                    f"Capabilities.per_instantiation: unknown instantiation {inst!r}; expected "
                    f"one of {list(INSTANTIATIONS)}"
                )
            unknown = sorted(set(overrides) - fields)
            if unknown:
                raise ValueError(
                    f"Capabilities.per_instantiation[{inst!r}]: unknown field(s) {unknown}"
                )

    def for_instantiation(self, instantiation: str | None) -> Capabilities:
        """These capabilities with the overrides of `instantiation` applied.

        Example:
            >>> caps = Capabilities(per_instantiation={"concatenation": {"gradients": False}},
            ...                     gradients=True)
            >>> caps.for_instantiation("concatenation").gradients
            False
        """
        overrides = self.per_instantiation.get(instantiation or "", {})
        if not overrides:
            return self
        return dataclasses.replace(self, per_instantiation={}, **overrides)

    def missing(self, config: NonLocalConfig | None = None, **features: Any) -> list[str]:
        """The reasons `config` and the named features are unsupported (empty: supported).

        Features: ``dtype``, ``device``, ``instantiation``, ``spatial_dims``,
        ``data_format``, ``pool_position``, ``norm`` (values), and booleans ``context``,
        ``key_mask``, ``training``, ``attention``, ``gradients``, ``input_errors``,
        ``weight_errors``. The overrides of the config's (or the named) instantiation apply.
        """
        inst = config.instantiation if config is not None else features.get("instantiation")
        caps = self.for_instantiation(inst)
        reasons: list[str] = []
        if config is not None:
            reasons += caps._config_reasons(config)
        for name, value in features.items():
            if name in _VALUED_FEATURES:
                allowed = getattr(caps, _VALUED_FEATURES[name])
                if value not in allowed:
                    reasons.append(f"{name}={value!r} not supported")
            elif value and not getattr(caps, name):
                reasons.append(f"{name} not supported")
        return reasons

    def _config_reasons(self, config: NonLocalConfig) -> list[str]:
        reasons = []
        checks = (
            ("instantiation", config.instantiation, self.instantiations),
            ("spatial_dims", config.spatial_dims, self.spatial_dims),
            ("data_format", config.data_format, self.data_formats),
            ("pool_position", config.pool_position, self.pool_positions),
            ("norm", config.norm, self.norms),
            ("residual", config.residual, self.residual),
        )
        for field, value, allowed in checks:
            if value not in allowed:
                reasons.append(f"{field}={value!r} not supported")
        if self.norm_eps is not None and config.norm is not None:
            if config.norm_eps not in self.norm_eps:
                reasons.append(f"norm_eps={config.norm_eps!r} not supported")
        shown = {
            "logit_scales": ("logit_scale", config.logit_scale),
            "inter_channels": ("inter_channels", config.inter_channels),
            "windows": ("subsample", config.subsample),
        }
        for field, rule in config_rules(config).items():
            if rule is None:
                continue
            if not any(rule in _ADMITS[field][d] for d in getattr(self, field)):
                name, value = shown[field]
                reasons.append(f"{name}={value!r} (rule {rule}) not supported")
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
            if field.name == "per_instantiation":
                value = {inst: {k: _plain(v) for k, v in o.items()} for inst, o in value.items()}
            out[field.name] = _plain(value)
        return out

    def supports(self, config: NonLocalConfig | None = None, **features: Any) -> bool:
        """True when nothing in `missing` applies."""
        return not self.missing(config, **features)


def _plain(value: Any) -> Any:
    """Sets as sorted lists (None last), for JSON."""
    if isinstance(value, (frozenset, set)):
        return sorted(value, key=lambda v: (v is None, str(v)))
    return value


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
