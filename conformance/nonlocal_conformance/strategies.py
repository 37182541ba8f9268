"""Hypothesis strategies for configs, weights, inputs, contexts and key masks.

Sizes stay small (N, N' <= 64 for 2D/3D and <= 24 for 1D, C <= 8, B <= 3) so one backend's
run is quick on a CPU. Array values come from a drawn seed (NumPy normals), not from
Hypothesis floats: continuous values keep max-pool windows and ReLU inputs away from ties,
and shrinking still simplifies the config, the shapes and the options.

Example:
    >>> from hypothesis import given, settings
    >>> from nonlocal_conformance.adapter import Capabilities
    >>> @settings(max_examples=5, database=None)
    ... @given(cases(Capabilities(), "float32", instantiation="dot_product"))
    ... def check(case):
    ...     assert case.config.instantiation == "dot_product"
    ...     assert case.x.dtype.name == "float32"
    >>> check()
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from hypothesis import strategies as st

from nonlocal_core import DEFAULT_WINDOWS, NonLocalConfig, init_weights, random_weights

from .adapter import Capabilities
from .dtypes import Precision, cast
from .trace import trace_forward

MAX_CHANNELS = 8
MAX_BATCH = 3
# Per spatial rank: the largest extent on each axis (N <= 24, 36 and 64).
MAX_EXTENT = {1: 24, 2: 6, 3: 4}
# The input scale of "large" cases, per dtype: logits reach ~1e3 in float64 (exp overflows
# beyond 709), ~1e2..1e3 in float32 and bfloat16 (88) and ~10..1e2 in float16 (11).
LARGE_INPUT = {"float64": 40.0, "float32": 12.0, "bfloat16": 12.0, "float16": 3.0}
# Half-precision cases keep every intermediate below this (float16 overflows at 65504).
FINITE_LIMIT = {"float16": 2.0**13, "bfloat16": 2.0**100}


@dataclasses.dataclass
class Case:
    """One forward call: config, inputs and weights, already rounded to `dtype`."""

    config: NonLocalConfig
    dtype: str
    x: np.ndarray
    weights: dict[str, np.ndarray]
    context: np.ndarray | None = None
    key_mask: np.ndarray | None = None
    training: bool = False
    seed: int = 0

    def kwargs(self) -> dict:
        """The keyword arguments of a forward call."""
        return {"context": self.context, "key_mask": self.key_mask, "training": self.training}

    def cotangent(self) -> np.ndarray:
        """A random cotangent for gradient checks, shaped and rounded like z."""
        rng = np.random.default_rng(self.seed + 1)
        return cast(rng.normal(size=self.x.shape), self.dtype)

    def __repr__(self) -> str:
        """One line: the config and, for arrays, shape and largest magnitude (never values).

        Example:
            >>> case = make_case(NonLocalConfig(2, spatial_dims=1), "float32", batch=1,
            ...                  extent=(3,), seed=1)
            >>> repr(case)  # doctest: +ELLIPSIS
            "Case(NonLocalConfig(in_channels=2, ...), dtype='float32', x=(1, 2, 3) max|.|=..."
        """
        return (
            f"Case({self.config!r}, dtype={self.dtype!r}, x={_summary(self.x)}, "
            f"context={_summary(self.context)}, key_mask={_summary(self.key_mask)}, "
            f"training={self.training}, weights max|.|={_largest(self.weights.values())}, "
            f"seed={self.seed})"
        )

    def _repr_pretty_(self, printer, cycle) -> None:
        # Hypothesis prints dataclasses field by field (every array in full); a falsifying
        # example should read as one line.
        printer.text(repr(self))


def _largest(arrays) -> str:
    values = [np.max(np.abs(np.asarray(a, dtype=np.float64))) for a in arrays if np.size(a)]
    return f"{max(values, default=0.0):.3g}"


def _summary(a: np.ndarray | None) -> str:
    if a is None:
        return "None"
    if a.dtype == bool:
        return f"{tuple(a.shape)} {int(a.sum())} True"
    return f"{tuple(a.shape)} max|.|={_largest([a])}"


def feature_shape(config: NonLocalConfig, batch: int, extent, channels: int) -> tuple:
    """The shape of a feature tensor in the config's layout.

    Example:
        >>> feature_shape(NonLocalConfig(4, data_format="channels_last"), 2, (3, 5), 4)
        (2, 3, 5, 4)
    """
    if config.data_format == "channels_first":
        return (batch, channels, *extent)
    return (batch, *extent, channels)


def make_case(
    config: NonLocalConfig,
    dtype: str,
    *,
    batch: int,
    extent: tuple[int, ...],
    context_extent: tuple[int, ...] | None = None,
    mask_density: float | None = None,
    empty_mask_row: bool = False,
    flat_mask: bool = False,
    training: bool = False,
    init: bool = False,
    weight_scale: float = 1.0,
    input_scale: float = 1.0,
    out_bias: bool = True,
    seed: int = 0,
) -> Case:
    """A `Case` from explicit sizes (used for the paper configurations and by strategies).

    `input_scale` multiplies x and the context (large magnitudes give large logits);
    ``out_bias=False`` sets b_z to 0 when a norm follows (an implementation without that
    bias, `Capabilities.out_bias_with_norm`).

    Example:
        >>> case = make_case(NonLocalConfig(4, spatial_dims=1, subsample=True), "float64",
        ...                  batch=2, extent=(5,), mask_density=0.5, empty_mask_row=True)
        >>> case.key_mask.shape, bool(case.key_mask[0].any())
        ((2, 2), False)
    """
    rng = np.random.default_rng(seed)
    x = input_scale * rng.normal(size=feature_shape(config, batch, extent, config.in_channels))
    context = None
    key_extent = config.pooled_extent(extent)
    if context_extent is not None:
        shape = feature_shape(config, batch, context_extent, config.context_channels)
        context = input_scale * rng.normal(size=shape)
        key_extent = config.pooled_extent(context_extent)
    key_mask = None
    if mask_density is not None:
        key_mask = rng.random((batch, *key_extent)) < mask_density
        if empty_mask_row:
            key_mask[0] = False
        if flat_mask:
            key_mask = key_mask.reshape(batch, -1)
    if init:
        weights = init_weights(config, seed=seed)
    else:
        weights = random_weights(config, seed=seed, scale=weight_scale)
    if not out_bias and config.norm is not None:
        weights["out.bias"] = np.zeros_like(weights["out.bias"])
    return Case(
        config=config,
        dtype=dtype,
        x=cast(x, dtype),
        weights={k: cast(v, dtype) for k, v in weights.items()},
        context=None if context is None else cast(context, dtype),
        key_mask=key_mask,
        training=training,
        seed=seed,
    )


def _pick(draw, fixed, allowed):
    if fixed is not None:
        return fixed
    return draw(st.sampled_from(sorted(allowed, key=lambda v: (v is None, str(v)))))


@st.composite
def extents(draw, dims: int, minimum: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """A spatial extent of rank `dims`, each axis in [minimum or 1, MAX_EXTENT[dims]]."""
    low = minimum or (1,) * dims
    return tuple(draw(st.integers(lo, max(lo, MAX_EXTENT[dims]))) for lo in low)


def _fits(case: Case) -> bool:
    """Whether every intermediate of the case stays well inside the dtype's finite range
    (spec IO-4: beyond it the outputs are non-finite by design, not a conformance failure)."""
    if case.dtype in ("float64", "float32"):
        return True  # the magnitudes drawn stay below 1e8
    trace = trace_forward(
        case.x,
        case.weights,
        case.config,
        precision=Precision.default(case.dtype),
        context=case.context,
        key_mask=case.key_mask,
        training=case.training,
    )
    largest = max(
        float(np.max(np.abs(t), initial=0.0))
        for t in (trace.theta, trace.pre, trace.y, trace.u, trace.z, trace.attention)
    )
    return largest < FINITE_LIMIT[case.dtype]


def _draw_scale(draw, caps: Capabilities, large: bool) -> object:
    """A `logit_scale` under the declared rules (only for the softmax instantiations)."""
    rule = draw(st.sampled_from(sorted(caps.logit_scales)))
    if rule == "default":
        return None
    if rule == "one":
        return False
    floats = st.floats(1.0, 30.0) if large else st.floats(0.05, 2.0)
    return draw(st.one_of(st.none(), st.just(False), floats))


def _draw_inter_channels(draw, caps: Capabilities, c: int) -> int | None:
    """C' under the declared rules: default (None), max(C // r, 1), or any."""
    rule = draw(st.sampled_from(sorted(caps.inter_channels)))
    if rule == "default":
        return None
    if rule == "divisor":
        return max(c // draw(st.integers(1, c)), 1)
    return draw(st.one_of(st.none(), st.integers(1, MAX_CHANNELS)))


def _window_options(caps: Capabilities, pooled: bool | None) -> list[str]:
    """The pooling choices the case may take: "none", "default", "any"."""
    options = []
    if pooled is not True and "none" in caps.windows:
        options.append("none")
    if pooled is not False:
        options += [rule for rule in ("default", "any") if rule in caps.windows]
    return options


@st.composite
def cases(
    draw,
    caps: Capabilities,
    dtype: str,
    *,
    instantiation: str | None = None,
    spatial_dims: int | None = None,
    data_format: str | None = None,
    pooled: bool | None = None,
    context: bool | None = False,
    key_mask: bool | None = False,
    training: bool | None = False,
    residual: bool | None = None,
    init: bool = False,
    max_batch: int = MAX_BATCH,
) -> Case:
    """A `Case` inside the adapter's capabilities; keyword arguments fix a feature
    (True/False) or leave it drawn (None). A third of the cases have inputs scaled to
    `LARGE_INPUT[dtype]`, whose logits overflow exp without the max subtraction (INST-2).

    A fixed feature the capabilities exclude draws nothing (`Suite.cases` skips first).
    """
    inst = _pick(draw, instantiation, caps.instantiations)
    caps = caps.for_instantiation(inst)
    dims = _pick(draw, spatial_dims, caps.spatial_dims)
    fmt = _pick(draw, data_format, caps.data_formats)
    # Left open (None), an option is drawn only where the adapter declares it.
    use_context = (caps.context and draw(st.booleans())) if context is None else context
    use_mask = (caps.key_mask and draw(st.booleans())) if key_mask is None else key_mask
    c = draw(st.integers(1, MAX_CHANNELS))
    ctx_c = c
    if use_context and inst != "gaussian" and draw(st.booleans()):
        ctx_c = draw(st.integers(1, MAX_CHANNELS))
    window = draw(st.sampled_from(_window_options(caps, pooled)))
    default = DEFAULT_WINDOWS[dims]
    if window == "any" and draw(st.booleans()):
        window = "default"  # the paper's window is one of "any"
    key_minimum = default if window == "default" else None
    extent = draw(extents(dims, None if use_context else key_minimum))
    ctx_extent = draw(extents(dims, key_minimum)) if use_context else extent
    subsample: tuple[int, ...] | bool = False
    if window == "default":
        subsample = True
    elif window == "any":
        subsample = tuple(draw(st.integers(1, min(3, e))) for e in ctx_extent)
        if subsample == default:
            subsample = True
    large = draw(st.sampled_from([False, False, True]))
    fields = dict(
        in_channels=c,
        spatial_dims=dims,
        instantiation=inst,
        inter_channels=_draw_inter_channels(draw, caps, c),
        context_channels=ctx_c,
        subsample=subsample,
        pool_position=_pick(draw, None, caps.pool_positions),
        norm=_pick(draw, None, caps.norms),
        norm_eps=_pick(draw, None, caps.norm_eps or {1e-5, 1.0000001e-5, 1e-3}),
        residual=_pick(draw, residual, caps.residual),
        data_format=fmt,
    )
    if inst in ("gaussian", "embedded_gaussian"):
        fields["logit_scale"] = _draw_scale(draw, caps, large)
    config = NonLocalConfig(**fields)
    train = (draw(st.booleans()) if training is None else training) and caps.training
    density = None
    if use_mask:
        density = draw(st.sampled_from([0.8, 0.5, 0.2]))
    # Training BN over a single value per channel (B N = 1) is defined, but implementations
    # may raise instead (spec: OUT-5), so the suite never draws it.
    single = train and config.norm == "batch" and math.prod(extent) == 1 and max_batch > 1
    options = dict(
        batch=draw(st.integers(2 if single else 1, max_batch)),
        extent=extent,
        context_extent=ctx_extent if use_context else None,
        mask_density=density,
        empty_mask_row=use_mask and draw(st.booleans()),
        flat_mask=use_mask and draw(st.booleans()),
        training=train,
        init=init,
        weight_scale=draw(st.sampled_from([0.5, 1.0, 2.0])),
        out_bias=caps.out_bias_with_norm,
        seed=draw(st.integers(0, 2**32 - 1)),
    )
    case = make_case(config, dtype, input_scale=LARGE_INPUT[dtype] if large else 1.0, **options)
    if large and not _fits(case):  # half precision: keep the intermediates finite
        case = make_case(config, dtype, **options)
    return case


def paper_cases(dtype: str) -> list[Case]:
    """The paper's canonical blocks, scaled down to CPU size, and edge cases, as explicit
    examples.

    C2D/I3D res4 blocks (3D, C' = C/2, keys pooled (1, 2, 2)) for each instantiation, the 2D
    detection block (no pooling), an odd extent whose last row and column a floor pool
    drops; then, for each instantiation, C = 1 on a single position, and the res4 block with
    inputs scaled to `LARGE_INPUT` (logits beyond exp's overflow point: INST-2).

    Example:
        >>> [c.config.instantiation for c in paper_cases("float32")][:2]
        ['embedded_gaussian', 'dot_product']
    """
    out = []
    insts = ("embedded_gaussian", "dot_product", "gaussian", "concatenation")
    for i, inst in enumerate(insts):
        cfg = NonLocalConfig(8, spatial_dims=3, instantiation=inst, subsample=True)
        out.append(make_case(cfg, dtype, batch=2, extent=(2, 4, 4), seed=100 + i))
    cfg = NonLocalConfig(8, spatial_dims=2)
    out.append(make_case(cfg, dtype, batch=2, extent=(4, 5), seed=200))
    for j, inst in enumerate(("embedded_gaussian", "dot_product", "concatenation")):
        cfg = NonLocalConfig(
            6,
            spatial_dims=2,
            instantiation=inst,
            subsample=2,
            pool_position="after_projection",
            data_format="channels_last",
        )
        out.append(make_case(cfg, dtype, batch=1, extent=(5, 7), seed=300 + j))
    for k, inst in enumerate(insts):
        dims = 1 + k % 3
        cfg = NonLocalConfig(1, spatial_dims=dims, instantiation=inst)
        out.append(make_case(cfg, dtype, batch=1, extent=(1,) * dims, seed=400 + k))
    for k, inst in enumerate(insts):
        cfg = NonLocalConfig(8, spatial_dims=3, instantiation=inst, subsample=True)
        case = make_case(
            cfg, dtype, batch=2, extent=(2, 4, 4), input_scale=LARGE_INPUT[dtype], seed=500 + k
        )
        if _fits(case):
            out.append(case)
    return out


def examples_for(cases_: list[Case], caps: Capabilities, **fixed) -> list[Case]:
    """The cases the capabilities support whose config matches every `fixed` field, with
    b_z = 0 where the implementation has no W_z bias before a norm.

    Example:
        >>> caps = Capabilities(windows=frozenset({"none"}))
        >>> all(c.config.subsample is None for c in examples_for(paper_cases("float32"), caps))
        True
    """
    keep = []
    for case in cases_:
        if caps.missing(case.config, training=case.training):
            continue
        if all(getattr(case.config, k) == v for k, v in fixed.items() if v is not None):
            own = caps.for_instantiation(case.config.instantiation)
            if not own.out_bias_with_norm and case.config.norm is not None:
                weights = {**case.weights, "out.bias": np.zeros_like(case.weights["out.bias"])}
                case = dataclasses.replace(case, weights=weights)
            keep.append(case)
    return keep


def num_keys(case: Case) -> int:
    """N' of a case."""
    source = case.x if case.context is None else case.context
    cfg = case.config
    extent = source.shape[2:] if cfg.data_format == "channels_first" else source.shape[1:-1]
    return math.prod(cfg.pooled_extent(extent))
