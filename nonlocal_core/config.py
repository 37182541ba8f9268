"""`NonLocalConfig`: every parameter of the non-local block, validated once.

The spec (`spec/nonlocal.md`, section "Parameters") is the normative text; this module is
its executable form and `tests/test_spec_twin.py` keeps the two in step.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SPEC_VERSION = "1.0"

INSTANTIATIONS = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")
SOFTMAX_INSTANTIATIONS = ("gaussian", "embedded_gaussian")
DATA_FORMATS = ("channels_first", "channels_last")
POOL_POSITIONS = ("after_projection", "before_projection")
NORMS = ("batch", None)

# The window `subsample=True` stands for, by spatial rank: the paper pools space, never time.
DEFAULT_WINDOWS = {1: (2,), 2: (2, 2), 3: (1, 2, 2)}


class ConfigError(ValueError):
    """A `NonLocalConfig` field has a value the spec does not allow."""


def _fail(field: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"NonLocalConfig.{field}={value!r} is invalid: expected {expected}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


SPEC_MAJOR = SPEC_VERSION.split(".")[0]


def is_compatible_version(version: Any) -> bool:
    """Whether a file's ``spec_version`` is a string of this spec's MAJOR version (the
    semantics of a block only change with the MAJOR version).

    Example:
        >>> is_compatible_version("1.3"), is_compatible_version("2.0"), is_compatible_version(1)
        (True, False, False)
    """
    return isinstance(version, str) and version.split(".")[0] == SPEC_MAJOR


def require_config(config: Any, name: str = "config") -> None:
    """Raise TypeError unless `config` is a `NonLocalConfig` (a dict or kwargs are not).

    Example:
        >>> require_config({"in_channels": 4})
        Traceback (most recent call last):
        ...
        TypeError: config must be a NonLocalConfig, got dict: build one with NonLocalConfig(...)
    """
    if not isinstance(config, NonLocalConfig):
        raise TypeError(
            f"{name} must be a NonLocalConfig, got {type(config).__name__}: build one with "
            "NonLocalConfig(...)"
        )


def require_flag(value: Any, name: str) -> bool:
    """`value` as a Python bool, or TypeError naming `name` (a string like "no" is truthy, so
    anything but a bool would silently mean True).

    Example:
        >>> require_flag(True, "training")
        True
        >>> require_flag("no", "training")
        Traceback (most recent call last):
        ...
        TypeError: training='no' is invalid: expected True or False
    """
    # numpy.bool_ is not a bool subclass but is a flag all the same.
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise TypeError(f"{name}={value!r} is invalid: expected True or False")


@dataclasses.dataclass(frozen=True)
class NonLocalConfig:
    """Every parameter of a non-local block, validated and normalised on construction.

    Fields that accept shorthands are stored normalised: ``inter_channels`` and
    ``context_channels`` become integers, ``subsample`` becomes ``None`` (off) or a tuple of
    windows, ``logit_scale`` becomes ``None`` (the default 1/sqrt(d), or no scale at all
    without a softmax) or a positive float. Derived defaults are resolved at construction, so
    `replace(in_channels=...)` keeps the old ``inter_channels``.

    Example:
        >>> cfg = NonLocalConfig(in_channels=64, spatial_dims=3, subsample=True)
        >>> cfg.inter_channels, cfg.subsample, cfg.scale
        (32, (1, 2, 2), 0.17677669529663687)
        >>> NonLocalConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    in_channels: int
    spatial_dims: int = 2
    instantiation: str = "embedded_gaussian"
    inter_channels: int | None = None
    context_channels: int | None = None
    logit_scale: Any = None
    subsample: Any = False
    pool_position: str = "after_projection"
    norm: str | None = "batch"
    norm_eps: float = 1e-5
    residual: bool = True
    data_format: str = "channels_first"

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        if not _is_int(self.in_channels) or self.in_channels < 1:
            raise _fail("in_channels", self.in_channels, "an integer >= 1")
        set_("in_channels", int(self.in_channels))
        if not _is_int(self.spatial_dims) or self.spatial_dims not in (1, 2, 3):
            raise _fail("spatial_dims", self.spatial_dims, "1, 2 or 3")
        set_("spatial_dims", int(self.spatial_dims))
        if self.instantiation not in INSTANTIATIONS:
            raise _fail("instantiation", self.instantiation, f"one of {INSTANTIATIONS}")

        if self.inter_channels is None:
            set_("inter_channels", max(self.in_channels // 2, 1))
        elif not _is_int(self.inter_channels) or self.inter_channels < 1:
            raise _fail("inter_channels", self.inter_channels, "None or an integer >= 1")
        else:
            set_("inter_channels", int(self.inter_channels))

        if self.context_channels is None:
            set_("context_channels", self.in_channels)
        elif not _is_int(self.context_channels) or self.context_channels < 1:
            raise _fail("context_channels", self.context_channels, "None or an integer >= 1")
        else:
            set_("context_channels", int(self.context_channels))
        if self.instantiation == "gaussian" and self.context_channels != self.in_channels:
            raise _fail(
                "context_channels",
                self.context_channels,
                f"{self.in_channels} (= in_channels): the Gaussian instantiation dots raw "
                "features, so the context must have as many channels as x",
            )

        set_("logit_scale", self._normalise_scale(self.logit_scale))
        set_("subsample", self._normalise_subsample(self.subsample))

        if self.pool_position not in POOL_POSITIONS:
            raise _fail("pool_position", self.pool_position, f"one of {POOL_POSITIONS}")
        if self.norm not in NORMS:
            raise _fail("norm", self.norm, "'batch' or None")
        if not _is_real(self.norm_eps) or not math.isfinite(self.norm_eps) or self.norm_eps <= 0:
            raise _fail("norm_eps", self.norm_eps, "a finite float > 0")
        set_("norm_eps", float(self.norm_eps))
        if not isinstance(self.residual, bool):
            raise _fail("residual", self.residual, "True or False")
        if self.data_format not in DATA_FORMATS:
            raise _fail("data_format", self.data_format, f"one of {DATA_FORMATS}")

    def _normalise_scale(self, value: Any) -> float | None:
        softmax = self.instantiation in SOFTMAX_INSTANTIATIONS
        if not softmax:
            if value is None:
                return None
            raise _fail(
                "logit_scale",
                value,
                f"None: {self.instantiation} has no softmax, so a logit scale has no meaning",
            )
        if value is None or value is True or value == "auto":
            return None
        if value is False:
            return 1.0
        if _is_real(value) and math.isfinite(value) and value > 0:
            return float(value)
        raise _fail("logit_scale", value, "None/'auto' (1/sqrt(d)), False (1.0) or a float > 0")

    def _normalise_subsample(self, value: Any) -> tuple[int, ...] | None:
        if value is None or value is False:
            return None
        if value is True:
            return DEFAULT_WINDOWS[self.spatial_dims]
        windows = (value,) * self.spatial_dims if _is_int(value) else value
        if (
            isinstance(windows, Sequence)
            and not isinstance(windows, str)
            and len(windows) == self.spatial_dims
            and all(_is_int(w) and w >= 1 for w in windows)
        ):
            return tuple(int(w) for w in windows)
        raise _fail(
            "subsample",
            value,
            f"False, True, an integer >= 1, or {self.spatial_dims} integers >= 1 "
            "(one window per spatial axis)",
        )

    # Derived quantities -------------------------------------------------------------------

    @property
    def is_softmax(self) -> bool:
        """True for the instantiations normalised by a softmax over keys."""
        return self.instantiation in SOFTMAX_INSTANTIATIONS

    @property
    def embed_dim(self) -> int:
        """d: the width of the vectors dotted in f (C for Gaussian, C' otherwise)."""
        return self.in_channels if self.instantiation == "gaussian" else self.inter_channels

    @property
    def scale(self) -> float | None:
        """The factor applied to theta_i . phi_j before the softmax; None without a softmax."""
        if not self.is_softmax:
            return None
        if self.logit_scale is None:
            return 1.0 / math.sqrt(self.embed_dim)
        return self.logit_scale

    def pooled_extent(self, extent: Sequence[int]) -> tuple[int, ...]:
        """The key grid of a context with spatial `extent`, after subsampling.

        Example:
            >>> NonLocalConfig(8, spatial_dims=3, subsample=True).pooled_extent((4, 7, 6))
            (4, 3, 3)
        """
        if self.subsample is None:
            return tuple(int(e) for e in extent)
        return tuple(int(e) // w for e, w in zip(extent, self.subsample, strict=True))

    # Serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of every field (normalised values).

        Example:
            >>> NonLocalConfig(4, spatial_dims=1).to_dict()["inter_channels"]
            2
        """
        out = dataclasses.asdict(self)
        out["subsample"] = list(self.subsample) if self.subsample is not None else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NonLocalConfig:
        """Build a config from `to_dict()` output; unknown keys are an error.

        Example:
            >>> NonLocalConfig.from_dict({"in_channels": 6, "instantiation": "dot_product"})
            ... # doctest: +ELLIPSIS
            NonLocalConfig(in_channels=6, spatial_dims=2, instantiation='dot_product', ...)
        """
        if not isinstance(data, Mapping):
            raise TypeError(
                f"NonLocalConfig.from_dict needs a mapping of fields, got {type(data).__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"NonLocalConfig.from_dict got unknown field(s) {unknown}: "
                f"expected a subset of {sorted(known)}"
            )
        if "in_channels" not in data:
            raise ConfigError(
                f"NonLocalConfig.from_dict got no 'in_channels' among {sorted(data)}: "
                "it is required"
            )
        return cls(**dict(data))

    def replace(self, **changes: Any) -> NonLocalConfig:
        """A copy with some fields changed (and re-validated).

        Example:
            >>> NonLocalConfig(8).replace(norm=None).norm is None
            True
        """
        return dataclasses.replace(self, **changes)
