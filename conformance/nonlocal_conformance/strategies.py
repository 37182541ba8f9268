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
from .dtypes import cast

MAX_CHANNELS = 8
MAX_BATCH = 3
# Per spatial rank: the largest extent on each axis (N <= 24, 36 and 64).
MAX_EXTENT = {1: 24, 2: 6, 3: 4}


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

    def __repr__(self) -> str:  # what Hypothesis prints for a falsifying example
        shape = lambda a: None if a is None else tuple(a.shape)  # noqa: E731
        return (
            f"Case({self.config!r}, dtype={self.dtype!r}, x={shape(self.x)}, "
            f"context={shape(self.context)}, key_mask={shape(self.key_mask)}, "
            f"training={self.training}, seed={self.seed})"
        )


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
    seed: int = 0,
) -> Case:
    """A `Case` from explicit sizes (used for the paper configurations and by strategies).

    Example:
        >>> case = make_case(NonLocalConfig(4, spatial_dims=1, subsample=True), "float64",
        ...                  batch=2, extent=(5,), mask_density=0.5, empty_mask_row=True)
        >>> case.key_mask.shape, bool(case.key_mask[0].any())
        ((2, 2), False)
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=feature_shape(config, batch, extent, config.in_channels))
    context = None
    key_extent = config.pooled_extent(extent)
    if context_extent is not None:
        shape = feature_shape(config, batch, context_extent, config.context_channels)
        context = rng.normal(size=shape)
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
def extents(draw, dims: int) -> tuple[int, ...]:
    """A spatial extent of rank `dims`, each axis in [1, MAX_EXTENT[dims]]."""
    return tuple(draw(st.integers(1, MAX_EXTENT[dims])) for _ in range(dims))


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
    """A `Case` the adapter's capabilities allow; keyword arguments fix a feature (True/False)
    or leave it drawn (None)."""
    inst = _pick(draw, instantiation, caps.instantiations)
    dims = _pick(draw, spatial_dims, caps.spatial_dims)
    fmt = _pick(draw, data_format, caps.data_formats)
    # Left open (None), an option is drawn only where the adapter declares it.
    use_context = (caps.context and draw(st.booleans())) if context is None else context
    use_mask = (caps.key_mask and draw(st.booleans())) if key_mask is None else key_mask
    c = draw(st.integers(1, MAX_CHANNELS))
    ctx_c = c
    if use_context and inst != "gaussian" and draw(st.booleans()):
        ctx_c = draw(st.integers(1, MAX_CHANNELS))
    pool = draw(st.booleans()) if pooled is None else pooled
    extent = draw(extents(dims))
    ctx_extent = draw(extents(dims)) if use_context else extent
    subsample: tuple[int, ...] | bool = False
    if pool:
        if all(e >= w for e, w in zip(ctx_extent, DEFAULT_WINDOWS[dims])) and draw(st.booleans()):
            subsample = True
        else:
            subsample = tuple(draw(st.integers(1, min(3, e))) for e in ctx_extent)
    fields = dict(
        in_channels=c,
        spatial_dims=dims,
        instantiation=inst,
        inter_channels=draw(st.one_of(st.none(), st.integers(1, MAX_CHANNELS))),
        context_channels=ctx_c,
        subsample=subsample,
        pool_position=_pick(draw, None, caps.pool_positions),
        norm=_pick(draw, None, caps.norms),
        norm_eps=draw(st.sampled_from([1e-5, 1.0000001e-5, 1e-3])),
        residual=draw(st.booleans()) if residual is None else residual,
        data_format=fmt,
    )
    if inst in ("gaussian", "embedded_gaussian"):
        fields["logit_scale"] = draw(
            st.one_of(st.none(), st.just(False), st.floats(0.05, 2.0, allow_nan=False))
        )
    config = NonLocalConfig(**fields)
    train = (draw(st.booleans()) if training is None else training) and caps.training
    density = None
    if use_mask:
        density = draw(st.sampled_from([0.8, 0.5, 0.2]))
    # Training BN over a single value per channel (B N = 1) is defined, but implementations
    # may raise instead (spec: OUT-5), so the suite never draws it.
    single = train and config.norm == "batch" and math.prod(extent) == 1 and max_batch > 1
    return make_case(
        config,
        dtype,
        batch=draw(st.integers(2 if single else 1, max_batch)),
        extent=extent,
        context_extent=ctx_extent if use_context else None,
        mask_density=density,
        empty_mask_row=use_mask and draw(st.booleans()),
        flat_mask=use_mask and draw(st.booleans()),
        training=train,
        init=init,
        weight_scale=draw(st.sampled_from([0.5, 1.0, 2.0])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def paper_cases(dtype: str) -> list[Case]:
    """The paper's canonical blocks, scaled down to CPU size, as explicit examples.

    C2D/I3D res4 blocks (3D, C' = C/2, keys pooled (1, 2, 2)) for each instantiation, the 2D
    detection block (no pooling), and an odd extent whose last row and column a floor pool
    drops.

    Example:
        >>> [c.config.instantiation for c in paper_cases("float32")][:2]
        ['embedded_gaussian', 'dot_product']
    """
    out = []
    for i, inst in enumerate(("embedded_gaussian", "dot_product", "gaussian", "concatenation")):
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
    return out


def examples_for(cases_: list[Case], caps: Capabilities, **fixed) -> list[Case]:
    """The cases the capabilities support whose config matches every `fixed` field."""
    keep = []
    for case in cases_:
        if caps.missing(case.config, training=case.training):
            continue
        if all(getattr(case.config, k) == v for k, v in fixed.items() if v is not None):
            keep.append(case)
    return keep


def num_keys(case: Case) -> int:
    """N' of a case."""
    source = case.x if case.context is None else case.context
    cfg = case.config
    extent = source.shape[2:] if cfg.data_format == "channels_first" else source.shape[1:-1]
    return math.prod(cfg.pooled_extent(extent))
