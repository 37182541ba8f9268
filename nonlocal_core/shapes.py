"""Input shape rules (spec section "Inputs and outputs"), shared by every implementation.

These checks work on shape tuples, not arrays, so backends call them with their own
tensors' shapes and raise the same errors as the reference. An extent of ``None`` (a
symbolic dimension, as in a Keras functional model) is accepted and not compared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .config import NonLocalConfig

Shape = Sequence[int | None]


class InputError(ValueError):
    """An input tensor does not fit the block's config."""


@dataclasses.dataclass(frozen=True)
class BlockShapes:
    """The sizes one forward pass works with (``None`` where unknown)."""

    batch: int | None
    spatial: tuple[int | None, ...]  # S: the query grid
    context_spatial: tuple[int | None, ...]  # the grid of x^ before subsampling
    key_spatial: tuple[int | None, ...]  # S': the key grid after subsampling

    @property
    def num_queries(self) -> int | None:
        """N, the number of query positions."""
        return _prod(self.spatial)

    @property
    def num_keys(self) -> int | None:
        """N', the number of key positions after subsampling."""
        return _prod(self.key_spatial)


def _prod(extent: tuple[int | None, ...]) -> int | None:
    out = 1
    for e in extent:
        if e is None:
            return None
        out *= e
    return out


def layout_name(config: NonLocalConfig) -> str:
    """The axis names of an input, e.g. ``(B, C, T, H, W)``.

    Example:
        >>> from nonlocal_core import NonLocalConfig
        >>> layout_name(NonLocalConfig(4, spatial_dims=2, data_format="channels_last"))
        '(B, H, W, C)'
    """
    spatial = {1: ["L"], 2: ["H", "W"], 3: ["T", "H", "W"]}[config.spatial_dims]
    axes = ["B", "C", *spatial] if config.data_format == "channels_first" else ["B", *spatial, "C"]
    return "(" + ", ".join(axes) + ")"


def split_shape(shape: Shape, config: NonLocalConfig, name: str, channels: int):
    """Check one feature tensor's shape; return (batch, spatial extent).

    Example:
        >>> from nonlocal_core import NonLocalConfig
        >>> split_shape((2, 4, 5, 6), NonLocalConfig(4), "x", 4)
        (2, (5, 6))
    """
    shape = tuple(shape)
    rank = config.spatial_dims + 2
    if len(shape) != rank:
        raise InputError(
            f"{name} has shape {shape} (rank {len(shape)}): expected rank {rank}, "
            f"{layout_name(config)} for spatial_dims={config.spatial_dims}, {config.data_format}"
        )
    if config.data_format == "channels_first":
        batch, c, spatial = shape[0], shape[1], shape[2:]
    else:
        batch, c, spatial = shape[0], shape[-1], shape[1:-1]
    if c is not None and c != channels:
        axis = 1 if config.data_format == "channels_first" else rank - 1
        raise InputError(
            f"{name} has {c} channels (shape {shape}, axis {axis}): expected {channels}, "
            f"layout {layout_name(config)}"
        )
    if batch is not None and batch < 1:
        raise InputError(f"{name} has shape {shape}: expected a batch of at least 1")
    for e in spatial:
        if e is not None and e < 1:
            raise InputError(f"{name} has shape {shape}: expected every spatial extent >= 1")
    return batch, tuple(spatial)


def check_shapes(
    config: NonLocalConfig,
    x_shape: Shape,
    context_shape: Shape | None = None,
    key_mask_shape: Shape | None = None,
) -> BlockShapes:
    """Validate the shapes of x, the optional context and key mask against `config`.

    Raises `InputError` naming the argument, its shape and what was expected.

    Example:
        >>> from nonlocal_core import NonLocalConfig
        >>> cfg = NonLocalConfig(4, spatial_dims=2, subsample=True)
        >>> s = check_shapes(cfg, (2, 4, 6, 5))
        >>> s.num_queries, s.key_spatial, s.num_keys
        (30, (3, 2), 6)
    """
    batch, spatial = split_shape(x_shape, config, "x", config.in_channels)
    if context_shape is None:
        ctx_spatial = spatial
        if config.context_channels != config.in_channels:
            raise InputError(
                f"context is required: the config has context_channels="
                f"{config.context_channels} != in_channels={config.in_channels}"
            )
    else:
        ctx_batch, ctx_spatial = split_shape(
            context_shape, config, "context", config.context_channels
        )
        if batch is not None and ctx_batch is not None and ctx_batch != batch:
            raise InputError(
                f"context has batch {ctx_batch} (shape {tuple(context_shape)}): expected the "
                f"batch of x, {batch}"
            )
    if config.subsample is not None:
        for axis, (e, w) in enumerate(zip(ctx_spatial, config.subsample, strict=True)):
            if e is not None and e < w:
                source = "x" if context_shape is None else "context"
                raise InputError(
                    f"{source} has spatial extent {e} on spatial axis {axis}, smaller than "
                    f"its subsample window {w} (subsample={config.subsample}): expected an "
                    f"extent >= {w}"
                )
    key_spatial = (
        ctx_spatial
        if config.subsample is None
        else tuple(None if e is None else e // w for e, w in zip(ctx_spatial, config.subsample))
    )
    shapes = BlockShapes(batch, spatial, ctx_spatial, key_spatial)
    if key_mask_shape is not None:
        _check_mask_shape(tuple(key_mask_shape), shapes)
    return shapes


def _check_mask_shape(shape: tuple[int | None, ...], shapes: BlockShapes) -> None:
    flat = (shapes.batch, shapes.num_keys)
    grid = (shapes.batch, *shapes.key_spatial)
    for allowed in (grid, flat):
        if len(shape) == len(allowed) and all(
            a is None or b is None or a == b for a, b in zip(shape, allowed)
        ):
            return
    raise InputError(
        f"key_mask has shape {shape}: expected {grid} (batch, key grid after subsampling) "
        f"or {flat} (batch, N')"
    )
