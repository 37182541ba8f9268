"""`profile`: each published non-local implementation's exact semantics as a `NonLocalConfig`.

A profile takes an implementation's *own* constructor arguments - its names, values and
defaults - and returns the config whose block computes the same function. Where a project
picks the variant by class or file (AlexHex7's four files, mmcv's NonLocal1d/2d/3d) the
profile takes ``instantiation=`` (spec names) and ``spatial_dims=`` as well. `source_kwargs`
goes the other way: the arguments that build a given config in that implementation, or an
error saying why the implementation cannot express it.

Arguments that only affect initialisation or training dynamics (init standard deviations,
zero-init flags, BN momentum) are accepted and do not change the config: weights come from
the checkpoint. Arguments with no spec equivalent (a GroupNorm, an affine layer without
statistics, projections without biases) are errors that say so.

Example:
    >>> cfg = profile("slowfast", dim=1024, dim_inner=512, pool_size=[1, 2, 2])
    >>> cfg.instantiation, cfg.subsample, cfg.pool_position, cfg.logit_scale  # None: 1/sqrt(C')
    ('embedded_gaussian', (1, 2, 2), 'before_projection', None)
    >>> source_kwargs("slowfast", cfg)["pool_size"]
    [1, 2, 2]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .config import INSTANTIATIONS, ConfigError, NonLocalConfig, require_config

SOURCES = ("paper", "caffe2", "alexhex7", "mmcv", "slowfast", "pytorchvideo", "timm")

# video-nonlocal-net's cfg.NONLOCAL.BN_EPSILON (Caffe2 needs eps > 1e-5 strictly).
CAFFE2_BN_EPSILON = 1.0000001e-5
_BN_EPS = 1e-5
# mmcv norm_cfg types that build a BatchNorm (SyncBN is BatchNorm in evaluation and on one
# device; its cross-device statistics are the spec's global batch).
_MMCV_BATCH_NORMS = ("BN", "BN1d", "BN2d", "BN3d", "SyncBN", "MMSyncBN")
_MMCV_NORM_RANKS = {"BN": 2, "BN1d": 1, "BN2d": 2, "BN3d": 3}  # SyncBN takes any rank
# The norms PyTorchVideo's 3-D block can run (BatchNorm1d/2d refuse its 5-D input).
_TORCH_BATCH_NORMS = ("BatchNorm3d", "SyncBatchNorm")


class ProfileError(ConfigError):
    """A published implementation's arguments have no equivalent config, or are invalid."""


def profile(source: str, **kwargs: Any) -> NonLocalConfig:
    """The config that computes what `source`'s block built with `kwargs` computes.

    `source` is one of `SOURCES`: ``"paper"`` (the paper's formulas, spec names),
    ``"caffe2"`` (facebookresearch/video-nonlocal-net: ``dim_in``, ``dim_inner``,
    ``max_pool_stride`` and the ``cfg.NONLOCAL`` names such as ``USE_SOFTMAX``),
    ``"alexhex7"``, ``"mmcv"`` (also mmaction2 and mmdet), ``"slowfast"``,
    ``"pytorchvideo"`` (``create_nonlocal``) and ``"timm"`` (``NonLocalAttn``).

    Example:
        >>> cfg = profile("mmcv", in_channels=256, reduction=2, use_scale=True,
        ...               sub_sample=False, mode="embedded_gaussian", norm_cfg=None,
        ...               spatial_dims=2)
        >>> cfg.inter_channels, cfg.norm, cfg.logit_scale  # None: the default 1/sqrt(C')
        (128, None, None)
        >>> profile("timm", in_channels=64).inter_channels  # make_divisible(64 / 8, 8)
        8
        >>> profile("slowfast", dim=8, dim_inner=4, norm_type="layernorm")
        Traceback (most recent call last):
        ...
        nonlocal_core.profiles.ProfileError: profile('slowfast'): norm_type='layernorm' ...
    """
    return _source(source).build(kwargs)


def source_kwargs(source: str, config: NonLocalConfig) -> dict[str, Any]:
    """The arguments of `source`'s block that `profile` maps to `config` - or to a config
    differing only in fields without effect (the pool position without subsampling, the
    norm epsilon without a norm) - or `ProfileError` naming what `source` cannot express.

    Example:
        >>> source_kwargs("alexhex7", NonLocalConfig(16, spatial_dims=3, logit_scale=False,
        ...                                          subsample=True))
        ... # doctest: +NORMALIZE_WHITESPACE
        {'in_channels': 16, 'inter_channels': 8, 'sub_sample': True, 'bn_layer': True,
         'instantiation': 'embedded_gaussian', 'spatial_dims': 3}
        >>> source_kwargs("timm", NonLocalConfig(16, instantiation="dot_product"))
        Traceback (most recent call last):
        ...
        nonlocal_core.profiles.ProfileError: timm cannot express this config: ...
    """
    require_config(config)
    spec = _source(source)
    # Nothing published has contexts, channels-last layouts or drops the residual.
    problems = []
    if config.context_channels != config.in_channels:
        problems.append(f"context_channels={config.context_channels} (no context input)")
    if config.data_format != "channels_first":
        problems.append(f"data_format={config.data_format!r} (channels_first only)")
    if not config.residual:
        problems.append("residual=False (the residual is always added)")
    if not problems:
        try:
            kwargs = spec.inverse(config)
            if _same_function(profile(source, **kwargs), config):
                return kwargs
            problems.append("its arguments give another config")
        except _Inexpressible as exc:
            problems.append(str(exc))
    raise ProfileError(f"{source} cannot express this config: {'; '.join(problems)} ({config})")


def _same_function(a: NonLocalConfig, b: NonLocalConfig) -> bool:
    """Whether two configs define the same block, ignoring fields that have no effect (a
    window of 1 on every axis pools nothing, like no subsampling)."""
    if _pools_nothing(a) and _pools_nothing(b):
        b = b.replace(subsample=a.subsample, pool_position=a.pool_position)
    if a.norm is None and b.norm is None:
        b = b.replace(norm_eps=a.norm_eps)
    return a == b


def _pools_nothing(config: NonLocalConfig) -> bool:
    return config.subsample is None or all(w == 1 for w in config.subsample)


# Argument handling ------------------------------------------------------------------------


class _Inexpressible(Exception):
    """Raised by an inverse: the config uses something the source does not have."""


class _Args:
    """One call's arguments: unknown or missing names are errors naming them."""

    def __init__(self, source: str, kwargs: Mapping[str, Any], defaults: Mapping[str, Any]):
        self.source = source
        unknown = sorted(set(kwargs) - set(defaults))
        if unknown:
            raise TypeError(
                f"profile({source!r}) got unknown argument(s) {unknown}: "
                f"{source} takes {list(defaults)}"
            )
        missing = [name for name, value in defaults.items() if value is _REQUIRED]
        missing = [name for name in missing if name not in kwargs]
        if missing:
            raise TypeError(f"profile({source!r}) needs argument(s) {missing}")
        self.values = {**defaults, **kwargs}

    def fail(self, name: str, expected: str) -> ProfileError:
        return ProfileError(f"profile({self.source!r}): {name}={self.values[name]!r} {expected}")

    def int(self, name: str, minimum: int = 1) -> int:
        value = self.values[name]
        if isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_):
            if value >= minimum:
                return int(value)
        raise self.fail(name, f"is invalid: expected an integer >= {minimum}")

    def flag(self, name: str, numeric: bool = False) -> bool:
        """A bool; Caffe2's yacs configs also write flags as 0 and 1 (`numeric`)."""
        value = self.values[name]
        if isinstance(value, bool | np.bool_) or (numeric and value in (0, 1)):
            return bool(value)
        raise self.fail(name, "is invalid: expected True or False")

    def real(self, name: str) -> float:
        value = self.values[name]
        if isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_):
            if math.isfinite(value) and value > 0:
                return float(value)
        raise self.fail(name, "is invalid: expected a finite number > 0")

    def choice(self, name: str, options: Sequence[Any]) -> Any:
        value = self.values[name]
        if isinstance(value, str) and value in options:
            return value
        raise self.fail(name, f"is invalid: expected one of {tuple(options)}")

    def windows(self, name: str, rank: int) -> tuple[int, ...] | None:
        """A pool size: None or `rank` integers >= 1; all ones means no pooling."""
        value = self.values[name]
        if value is None:
            return None
        if (
            isinstance(value, Sequence | np.ndarray)
            and not isinstance(value, str)
            and len(value) == rank
            and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)
            and all(v >= 1 for v in value)
        ):
            windows = tuple(int(v) for v in value)
            return windows if any(w > 1 for w in windows) else None
        raise self.fail(name, f"is invalid: expected None or {rank} integers >= 1")

    def config(self, **fields: Any) -> NonLocalConfig:
        try:
            return NonLocalConfig(**fields)
        except ConfigError as exc:
            raise ProfileError(f"profile({self.source!r}) {self.values}: {exc}") from exc


_REQUIRED = object()


class _Source:
    """A published implementation: its argument defaults, `build` and `inverse`."""

    def __init__(
        self,
        defaults: Mapping[str, Any],
        build: Callable[[_Args], NonLocalConfig],
        inverse: Callable[[NonLocalConfig], dict[str, Any]],
        name: str = "",
    ):
        self.defaults, self._build, self.inverse, self.name = defaults, build, inverse, name

    def build(self, kwargs: Mapping[str, Any]) -> NonLocalConfig:
        return self._build(_Args(self.name, kwargs, self.defaults))


def _source(source: Any) -> _Source:
    if not isinstance(source, str) or source not in _SOURCES:
        raise ValueError(f"source={source!r} is invalid: expected one of {SOURCES}")
    return _SOURCES[source]


def _need(condition: bool, what: str) -> None:
    if not condition:
        raise _Inexpressible(what)


def _default_scale(config: NonLocalConfig) -> bool:
    """Whether a softmax config uses the spec's default scale 1/sqrt(d)."""
    return config.logit_scale is None


def _only(config: NonLocalConfig, instantiations: Sequence[str], pool: str | None) -> None:
    _need(
        config.instantiation in instantiations,
        f"instantiation={config.instantiation!r} (has {tuple(instantiations)})",
    )
    if config.subsample is not None and pool is not None:
        _need(config.pool_position == pool, f"pool_position={config.pool_position!r}")


# The paper ----------------------------------------------------------------------------------


def _paper(a: _Args) -> NonLocalConfig:
    # The paper's formulas have no logit scale; its subsampling is "a max pooling layer
    # after phi and g" (section 3.3), and its BN after W_z starts at zero.
    instantiation = a.choice("instantiation", INSTANTIATIONS)
    return a.config(
        in_channels=a.values["in_channels"],
        spatial_dims=a.values["spatial_dims"],
        instantiation=instantiation,
        inter_channels=a.values["inter_channels"],
        logit_scale=False if instantiation in ("gaussian", "embedded_gaussian") else None,
        subsample=a.values["subsample"],
        norm=a.values["norm"],
    )


def _paper_inverse(config: NonLocalConfig) -> dict[str, Any]:
    _need(not config.is_softmax or config.logit_scale == 1.0, "a logit scale (the paper has none)")
    _only(config, INSTANTIATIONS, "after_projection")
    _need(config.norm_eps == _BN_EPS, f"norm_eps={config.norm_eps}")
    return {
        "in_channels": config.in_channels,
        "spatial_dims": config.spatial_dims,
        "instantiation": config.instantiation,
        "inter_channels": config.inter_channels,
        "subsample": list(config.subsample) if config.subsample else False,
        "norm": config.norm,
    }


# Caffe2: facebookresearch/video-nonlocal-net -----------------------------------------------


def _caffe2(a: _Args) -> NonLocalConfig:
    dim_in, dim_inner = a.int("dim_in"), a.int("dim_inner")
    if a.values["dim_out"] is not None and a.int("dim_out") != dim_in:
        raise a.fail(
            "dim_out", f"is invalid: the block adds its input, so it must be dim_in={dim_in}"
        )
    if a.flag("USE_AFFINE", numeric=True):
        raise a.fail(
            "USE_AFFINE",
            "has no spec equivalent: an affine layer (scale and shift without "
            "running statistics) after W_z; use USE_BN",
        )
    if a.flag("NO_BIAS", numeric=True):
        raise a.fail("NO_BIAS", "has no spec equivalent: the spec's projections have biases")
    softmax = a.flag("USE_SOFTMAX", numeric=True)
    stride = a.int("max_pool_stride")
    pooled = a.flag("USE_MAXPOOL", numeric=True) and stride > 1
    return a.config(
        in_channels=dim_in,
        spatial_dims=3,
        instantiation="embedded_gaussian" if softmax else "dot_product",
        inter_channels=dim_inner,
        logit_scale=(None if a.flag("USE_SCALE", numeric=True) else False) if softmax else None,
        subsample=(1, stride, stride) if pooled else False,
        pool_position="before_projection",
        norm="batch" if a.flag("USE_BN", numeric=True) else None,
        norm_eps=a.real("BN_EPSILON"),
    )


def _caffe2_inverse(config: NonLocalConfig) -> dict[str, Any]:
    _need(config.spatial_dims == 3, f"spatial_dims={config.spatial_dims} (3-D only)")
    _only(config, ("embedded_gaussian", "dot_product"), "before_projection")
    windows = config.subsample or (1, 1, 1)
    _need(windows[0] == 1 and windows[1] == windows[2], f"subsample={windows} (only (1, s, s))")
    softmax = config.is_softmax
    _need(not softmax or config.logit_scale in (None, 1.0), "a logit scale other than C'^-1/2 or 1")
    return {
        "dim_in": config.in_channels,
        "dim_inner": config.inter_channels,
        "max_pool_stride": windows[1] if config.subsample else 2,
        "USE_SOFTMAX": softmax,
        "USE_SCALE": _default_scale(config) if softmax else True,
        "USE_MAXPOOL": config.subsample is not None,
        "USE_BN": config.norm == "batch",
        "BN_EPSILON": config.norm_eps,
    }


# AlexHex7/Non-local_pytorch -------------------------------------------------------------------


def _alexhex7(a: _Args) -> NonLocalConfig:
    instantiation = a.choice("instantiation", INSTANTIATIONS)
    softmax = instantiation in ("gaussian", "embedded_gaussian")
    inter = a.values["inter_channels"]
    return a.config(
        in_channels=a.int("in_channels"),
        spatial_dims=a.values["spatial_dims"],
        instantiation=instantiation,
        inter_channels=None if inter is None else a.int("inter_channels"),
        logit_scale=False if softmax else None,  # AlexHex7 never scales
        # sub_sample pools 2 / (2, 2) / (1, 2, 2): the spec's subsample=True windows.
        subsample=a.flag("sub_sample"),
        norm="batch" if a.flag("bn_layer") else None,
    )


def _alexhex7_inverse(config: NonLocalConfig) -> dict[str, Any]:
    _only(config, INSTANTIATIONS, "after_projection")
    _need(not config.is_softmax or config.logit_scale == 1.0, "a logit scale (AlexHex7 has none)")
    _need(config.norm_eps == _BN_EPS, f"norm_eps={config.norm_eps}")
    return {
        "in_channels": config.in_channels,
        "inter_channels": config.inter_channels,
        "sub_sample": config.subsample is not None,
        "bn_layer": config.norm == "batch",
        "instantiation": config.instantiation,
        "spatial_dims": config.spatial_dims,
    }


# mmcv NonLocal1d/2d/3d (mmaction2, mmdet) -----------------------------------------------------


def _mmcv(a: _Args) -> NonLocalConfig:
    dims = a.values["spatial_dims"]
    if dims not in (1, 2, 3):
        raise a.fail("spatial_dims", "is invalid: expected 1, 2 or 3 (NonLocal1d/2d/3d)")
    mode = a.choice("mode", INSTANTIATIONS)
    in_channels, reduction = a.int("in_channels"), a.int("reduction")
    conv_cfg = a.values["conv_cfg"]
    conv = f"Conv{dims}d"
    # _NonLocalNd's own default (None) and "Conv" both mean nn.Conv2d.
    allowed = [_MMCV_DEFAULT_CONV, {"type": conv}] + ([None, {"type": "Conv"}] if dims == 2 else [])
    if not any(conv_cfg is option or conv_cfg == option for option in allowed):
        raise a.fail("conv_cfg", f"has no spec equivalent: expected dict(type={conv!r})")
    norm_cfg = a.values["norm_cfg"]
    eps = _BN_EPS
    if norm_cfg is not None:
        if not isinstance(norm_cfg, Mapping) or norm_cfg.get("type") not in _MMCV_BATCH_NORMS:
            raise a.fail(
                "norm_cfg",
                f"has no spec equivalent: the spec's only norm is BatchNorm "
                f"(norm_cfg=None or dict(type=...) with type in {_MMCV_BATCH_NORMS})",
            )
        # "BN" builds nn.BatchNorm2d, which refuses 3-D and 5-D inputs: such a block
        # cannot run, so it has no semantics to reproduce.
        rank = _MMCV_NORM_RANKS.get(norm_cfg["type"])
        if rank is not None and rank != dims:
            raise a.fail(
                "norm_cfg", f"is invalid: builds a {rank}-D BatchNorm, the block is {dims}-D"
            )
        extra = sorted(set(norm_cfg) - {"type", "eps", "momentum", "requires_grad"})
        if extra:
            raise a.fail("norm_cfg", f"has key(s) {extra} the spec has no equivalent for")
        eps = norm_cfg.get("eps", _BN_EPS)
    a.real("std")
    a.flag("zeros_init")
    use_scale = a.flag("use_scale")
    # mmcv scales only the embedded Gaussian's logits; its Gaussian is never scaled.
    scale = (None if use_scale else False) if mode == "embedded_gaussian" else None
    return a.config(
        in_channels=in_channels,
        spatial_dims=dims,
        instantiation=mode,
        inter_channels=max(in_channels // reduction, 1),
        logit_scale=False if mode == "gaussian" else scale,
        subsample=a.flag("sub_sample"),
        norm="batch" if norm_cfg is not None else None,
        norm_eps=eps,
    )


_MMCV_DEFAULT_CONV = object()  # NonLocal1d/2d/3d default to dict(type="Conv{1,2,3}d")


def _mmcv_inverse(config: NonLocalConfig) -> dict[str, Any]:
    _only(config, INSTANTIATIONS, "after_projection")
    c, ci = config.in_channels, config.inter_channels
    # reduction is an integer with C' = max(C // reduction, 1): try the candidates.
    reductions = [r for r in range(1, c + 1) if max(c // r, 1) == ci] or [None]
    _need(reductions[0] is not None, f"inter_channels={ci} (mmcv has max(C // reduction, 1))")
    if config.instantiation == "embedded_gaussian":
        _need(config.logit_scale in (None, 1.0), "a logit scale other than C'^-1/2 or 1")
    elif config.instantiation == "gaussian":
        _need(config.logit_scale == 1.0, "a scaled Gaussian (mmcv never scales it)")
    kwargs = {
        "in_channels": c,
        "reduction": reductions[0],
        "use_scale": config.logit_scale is None if config.is_softmax else True,
        "mode": config.instantiation,
        "sub_sample": config.subsample is not None,
        "norm_cfg": None,
        "spatial_dims": config.spatial_dims,
    }
    if config.norm == "batch":
        kwargs["norm_cfg"] = {"type": f"BN{config.spatial_dims}d", "eps": config.norm_eps}
    return kwargs


# SlowFast and PyTorchVideo ----------------------------------------------------------------------


def _video(a: _Args, dim: str, norm: str | None, eps: float) -> NonLocalConfig:
    """SlowFast's Nonlocal and PyTorchVideo's create_nonlocal: same semantics, other names."""
    instantiation = a.choice("instantiation", ("softmax", "dot_product"))
    a.real("norm_momentum")
    return a.config(
        in_channels=a.int(dim),
        spatial_dims=3,
        instantiation="embedded_gaussian" if instantiation == "softmax" else "dot_product",
        inter_channels=a.int("dim_inner"),
        subsample=a.windows("pool_size", 3) or False,
        pool_position="before_projection",
        norm=norm,
        norm_eps=eps,
    )


def _video_inverse(config: NonLocalConfig) -> dict[str, Any]:
    _need(config.spatial_dims == 3, f"spatial_dims={config.spatial_dims} (3-D only)")
    _only(config, ("embedded_gaussian", "dot_product"), "before_projection")
    _need(not config.is_softmax or _default_scale(config), "a logit scale other than C'^-1/2")
    return {
        "dim_inner": config.inter_channels,
        "pool_size": list(config.subsample) if config.subsample else None,
        "instantiation": "softmax" if config.is_softmax else "dot_product",
        "norm_eps": config.norm_eps,
    }


def _slowfast(a: _Args) -> NonLocalConfig:
    a.flag("zero_init_final_conv")
    a.flag("zero_init_final_norm")
    norm_type = a.choice("norm_type", ("batchnorm", "layernorm", "none"))
    if norm_type == "layernorm":
        raise a.fail(
            "norm_type",
            "has no spec equivalent: a GroupNorm(1) without affine parameters "
            "(the spec's norm is BatchNorm or none)",
        )
    eps = a.real("norm_eps")
    return _video(a, "dim", "batch" if norm_type == "batchnorm" else None, eps)


def _slowfast_inverse(config: NonLocalConfig) -> dict[str, Any]:
    kwargs = {"dim": config.in_channels, **_video_inverse(config)}
    kwargs["norm_type"] = "batchnorm" if config.norm == "batch" else "none"
    return kwargs


def _pytorchvideo(a: _Args) -> NonLocalConfig:
    norm = a.values["norm"]
    name = norm if isinstance(norm, str) else getattr(norm, "__name__", None)
    if norm is not None and name not in _TORCH_BATCH_NORMS:
        raise a.fail(
            "norm",
            f"has no spec equivalent: expected None or one of {_TORCH_BATCH_NORMS} "
            "(torch.nn.BatchNorm3d by default)",
        )
    if a.values["pool_size"] is None:  # create_nonlocal treats None as (1, 1, 1)
        a.values["pool_size"] = (1, 1, 1)
    return _video(a, "dim_in", None if norm is None else "batch", a.real("norm_eps"))


def _pytorchvideo_inverse(config: NonLocalConfig) -> dict[str, Any]:
    kwargs = {"dim_in": config.in_channels, **_video_inverse(config)}
    kwargs["pool_size"] = kwargs["pool_size"] or [1, 1, 1]
    kwargs["norm"] = "BatchNorm3d" if config.norm == "batch" else None
    return kwargs


# timm NonLocalAttn -------------------------------------------------------------------------------


def make_divisible(value: float, divisor: int = 8) -> int:
    """timm's channel rounding: the nearest multiple of `divisor` (at least `divisor`), one
    step up when rounding lost more than 10%.

    Example:
        >>> make_divisible(64 / 8), make_divisible(100 / 8), make_divisible(9.0)
        (8, 16, 16)
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _timm(a: _Args) -> NonLocalConfig:
    in_channels = a.int("in_channels")
    if a.values["rd_channels"] is not None:
        inter = a.int("rd_channels")
    else:
        inter = make_divisible(in_channels * a.real("rd_ratio"), a.int("rd_divisor"))
    return a.config(
        in_channels=in_channels,
        spatial_dims=2,
        inter_channels=inter,
        # timm scales by the *input* width: C^-1/2, not C'^-1/2.
        logit_scale=in_channels**-0.5 if a.flag("use_scale") else False,
    )


def _timm_inverse(config: NonLocalConfig) -> dict[str, Any]:
    _need(config.spatial_dims == 2, f"spatial_dims={config.spatial_dims} (2-D only)")
    _only(config, ("embedded_gaussian",), None)
    _need(config.subsample is None, "subsampling (timm has none)")
    _need(config.norm == "batch" and config.norm_eps == _BN_EPS, "no BatchNorm(eps=1e-5)")
    scaled = config.logit_scale == config.in_channels**-0.5
    _need(scaled or config.logit_scale == 1.0, "a logit scale other than C^-1/2 or 1")
    return {
        "in_channels": config.in_channels,
        "use_scale": scaled,
        "rd_channels": config.inter_channels,
    }


_SOURCES = {
    "paper": _Source(
        {
            "in_channels": _REQUIRED,
            "spatial_dims": 2,
            "instantiation": "embedded_gaussian",
            "inter_channels": None,
            "subsample": False,
            "norm": "batch",
        },
        _paper,
        _paper_inverse,
    ),
    "caffe2": _Source(
        {
            "dim_in": _REQUIRED,
            "dim_inner": _REQUIRED,
            "dim_out": None,
            "max_pool_stride": 2,
            "USE_SOFTMAX": True,
            "USE_SCALE": True,
            "USE_MAXPOOL": True,
            "USE_BN": True,
            "BN_EPSILON": CAFFE2_BN_EPSILON,
            "USE_AFFINE": False,
            "NO_BIAS": 0,
            # Initialisation and training only.
            "CONV_INIT_STD": 0.01,
            "USE_ZERO_INIT_CONV": False,
            "BN_MOMENTUM": 0.9,
            "BN_INIT_GAMMA": 0.0,
        },
        _caffe2,
        _caffe2_inverse,
    ),
    "alexhex7": _Source(
        {
            "in_channels": _REQUIRED,
            "inter_channels": None,
            "sub_sample": True,
            "bn_layer": True,
            "instantiation": _REQUIRED,
            "spatial_dims": _REQUIRED,
        },
        _alexhex7,
        _alexhex7_inverse,
    ),
    "mmcv": _Source(
        {
            "in_channels": _REQUIRED,
            "reduction": 2,
            "use_scale": True,
            "conv_cfg": _MMCV_DEFAULT_CONV,
            "norm_cfg": None,
            "mode": "embedded_gaussian",
            "sub_sample": False,
            "spatial_dims": _REQUIRED,
            "std": 0.01,
            "zeros_init": True,
        },
        _mmcv,
        _mmcv_inverse,
    ),
    "slowfast": _Source(
        {
            "dim": _REQUIRED,
            "dim_inner": _REQUIRED,
            "pool_size": None,
            "instantiation": "softmax",
            "norm_type": "batchnorm",
            "zero_init_final_conv": False,
            "zero_init_final_norm": True,
            "norm_eps": _BN_EPS,
            "norm_momentum": 0.1,
        },
        _slowfast,
        _slowfast_inverse,
    ),
    "pytorchvideo": _Source(
        {
            "dim_in": _REQUIRED,
            "dim_inner": _REQUIRED,
            "pool_size": (1, 1, 1),
            "instantiation": "softmax",
            "norm": "BatchNorm3d",
            "norm_eps": _BN_EPS,
            "norm_momentum": 0.1,
        },
        _pytorchvideo,
        _pytorchvideo_inverse,
    ),
    "timm": _Source(
        {
            "in_channels": _REQUIRED,
            "use_scale": True,
            "rd_ratio": 1 / 8,
            "rd_channels": None,
            "rd_divisor": 8,
            "device": None,
            "dtype": None,
        },
        _timm,
        _timm_inverse,
    ),
}
for _name, _spec in _SOURCES.items():
    _spec.name = _name
