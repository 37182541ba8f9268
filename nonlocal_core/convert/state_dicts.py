"""One block's state dict <-> canonical weights, for every source in `nonlocal_core.SOURCES`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..config import NonLocalConfig, require_config
from ..weights import (
    WeightError,
    Weights,
    check_weights,
    fit_kernels,
    host_values,
    is_kernel_of,
    is_real_dtype,
)
from .layouts import COUNTER, Layout, layout
from .readers import find_state_dict


class CheckpointError(WeightError):
    """A state dict does not hold the block it should: a missing, extra, mis-shaped or
    ambiguous key. The message names the key."""


def from_state_dict(state: Mapping[str, Any], source: str, config: NonLocalConfig) -> Weights:
    """The canonical weights held by one block's state dict in `source`'s names and shapes.

    `state` maps names to arrays (NumPy arrays, or anything ``np.asarray`` reads: CPU
    tensors, lists). The names may carry a module prefix (``"module.backbone.nl."``,
    ``"nonlocal_conv3_1_"``), found from the block's g projection; every key must then
    belong to that one block; a checkpoint's wrapper (``{"state_dict": ...}``,
    ``{"model_state": ...}``, Caffe2's ``{"blobs": ...}``) is looked into. Tensors have the
    source's exact shapes (``"paper"``: the canonical ones, or 1x1 conv kernels of any rank).
    The weights are copies, in the values' dtype. For a whole network use `find_blocks`.

    Raises `CheckpointError` (a ValueError) naming the missing, extra, mis-shaped or
    ambiguous key, and `nonlocal_core.profiles.ProfileError` when `source` cannot express
    `config`.

    Example:
        >>> from nonlocal_core import init_weights, profile
        >>> cfg = profile("timm", in_channels=16)
        >>> state = to_state_dict(init_weights(cfg), "timm", cfg)
        >>> sorted(state)[:3], state["t.weight"].shape
        (['g.bias', 'g.weight', 'norm.bias'], (8, 16, 1, 1))
        >>> prefixed = {"module.attn." + key: value for key, value in state.items()}
        >>> from_state_dict(prefixed, "timm", cfg)["theta.weight"].shape
        (8, 16)
        >>> del prefixed["module.attn.z.bias"]
        >>> from_state_dict(prefixed, "timm", cfg)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        nonlocal_core.convert.state_dicts.CheckpointError: timm block 'module.attn.' has no key 'module.attn.z.bias': ...
    """  # noqa: E501
    require_config(config)
    plan = layout(source, config)
    state = unwrap(state)
    prefix = block_prefix(state, plan)
    keys = [key for key in state if key.startswith(prefix)]
    outside = [key for key in state if not key.startswith(prefix)]
    if outside:
        raise CheckpointError(
            f"state holds keys outside the {source} block {prefix!r}: {_few(outside)}; pass "
            "one block's state dict, or use find_blocks for a whole network"
        )
    expected = {prefix + entry.key: entry for entry in plan.entries}
    extra = [
        key
        for key in keys
        if key not in expected and not key.endswith(plan.ignored_suffixes or ("\0",))
    ]
    if extra:
        raise CheckpointError(
            f"{source} block {prefix!r} has unexpected key(s) {_few(extra)} for "
            f"{config.instantiation} (norm={config.norm!r}, subsample={config.subsample}); "
            f"expected {_few(list(expected))}"
        )
    weights: Weights = {}
    for key, entry in expected.items():
        if entry.canonical is None:
            continue  # the BN batch counter: optional, holds no weight
        if key not in state:
            raise CheckpointError(
                f"{source} block {prefix!r} has no key {key!r}: expected {_few(list(expected))}"
            )
        array = _array(state[key], key)
        # The canonical layout takes a 1x1 kernel of any rank; a source's own names carry
        # its own shapes exactly (a 2-D kernel in a 3-D SlowFast block is a foreign tensor).
        fits = array.shape == entry.shape or (
            source == "paper" and is_kernel_of(entry.canonical, array.shape, entry.shape)
        )
        if not fits:
            raise CheckpointError(
                f"{source} block {prefix!r}: key {key!r} has shape {array.shape}, expected "
                f"{entry.shape} (for {entry.canonical!r} of {config.instantiation}, "
                f"in_channels={config.in_channels}, inter_channels={config.inter_channels})"
            )
        weights[entry.canonical] = array
    if plan.out_bias_in_norm:
        weights["out.bias"] = np.zeros(config.in_channels, weights["out.weight"].dtype)
    weights = fit_kernels(weights, config)
    try:
        check_weights(weights, config)
    except WeightError as exc:
        raise CheckpointError(
            f"{source} block {prefix!r}: {_source_names(exc, plan, prefix)}"
        ) from exc
    return weights


def to_state_dict(
    weights: Mapping[str, Any], target: str, config: NonLocalConfig, prefix: str = ""
) -> dict[str, np.ndarray]:
    """Canonical weights as `target`'s state dict: its names (after `prefix`), its shapes,
    the weights' own dtypes - what that implementation's ``load_state_dict`` takes.

    BN's ``num_batches_tracked`` is written as 0 (a training counter, not a weight). Where
    `target` has no W_z bias because a norm follows (mmcv), ``out.bias`` is folded into the
    norm's running mean (BN(u + b) = BN'(u) with running_mean' = running_mean - b): exact
    when the bias is 0, as in every mmcv checkpoint, and one rounding otherwise.

    Example:
        >>> from nonlocal_core import init_weights, profile
        >>> cfg = profile("slowfast", dim=8, dim_inner=4, pool_size=[1, 2, 2])
        >>> state = to_state_dict(init_weights(cfg), "slowfast", cfg, prefix="s3.nl.")
        >>> list(state)[:2], state["s3.nl.conv_theta.weight"].shape
        (['s3.nl.conv_theta.weight', 's3.nl.conv_theta.bias'], (4, 8, 1, 1, 1))
    """
    require_config(config)
    plan = layout(target, config)
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    weights = fit_kernels(weights, config)
    check_weights(weights, config)
    out: dict[str, np.ndarray] = {}
    for entry in plan.entries:
        if entry.canonical is None:
            out[prefix + entry.key] = np.zeros((), np.int64)
            continue
        value = np.asarray(weights[entry.canonical])
        if entry.canonical == "norm.running_mean" and plan.out_bias_in_norm:
            bias = np.asarray(weights["out.bias"])
            value = value - bias.astype(value.dtype) if np.any(bias) else value
        out[prefix + entry.key] = value.reshape(entry.shape).copy()
    return out


def unwrap(state: Any) -> Mapping[str, Any]:
    """`state` itself when it maps names to arrays or tensors, else the state dict inside a
    checkpoint's wrapper (`nonlocal_core.convert.find_state_dict`).

    Example:
        >>> unwrap({"epoch": 3, "model_state": {"fc.bias": np.zeros(2)}})
        {'fc.bias': array([0., 0.])}
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping from name to array, got {type(state).__name__}")
    # A wrapper (``{"epoch": 3, "model_state": {...}}``) holds no array at its top level.
    if any(hasattr(value, "shape") for value in state.values()):
        return state
    try:
        return find_state_dict(state)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc


def block_prefix(state: Mapping[str, Any], plan: Layout) -> str:
    """The prefix of the one block `state` holds (with its trailing separator), found from
    the key of g's weight; `CheckpointError` when there is none or more than one.

    Example:
        >>> from nonlocal_core import NonLocalConfig
        >>> from nonlocal_core.convert.layouts import layout
        >>> plan = layout("caffe2", NonLocalConfig(8, spatial_dims=3, inter_channels=4,
        ...     subsample=(1, 2, 2), pool_position="before_projection", norm_eps=1.0000001e-5))
        >>> block_prefix({"nonlocal_conv3_1_g_w": None}, plan)
        'nonlocal_conv3_1_'
    """
    anchor = plan.anchor.key
    prefixes = sorted(
        key[: len(key) - len(anchor)]
        for key in state
        if isinstance(key, str)
        and key.endswith(anchor)
        and (key == anchor or key[: len(key) - len(anchor)].endswith(plan.separator))
    )
    bad = [key for key in state if not isinstance(key, str)]
    if bad:
        raise CheckpointError(f"state has non-string key(s) {_few(bad)}: names must be str")
    if not prefixes:
        raise CheckpointError(
            f"no key of state ends with {anchor!r}: not a {plan.source} block of this config "
            f"(keys: {_few(list(state))})"
        )
    if len(prefixes) > 1:
        raise CheckpointError(
            f"state holds {len(prefixes)} {plan.source} blocks ({_few(prefixes)}, each with "
            f"a key ending in {anchor!r}): ambiguous; pass one block's state dict, or use "
            "find_blocks"
        )
    return prefixes[0]


def _array(value: Any, key: str) -> np.ndarray:
    """A copy of `value` as a NumPy array (the caller's tensors stay untouched and
    independent), or `CheckpointError` naming `key`."""
    try:
        array = np.array(host_values(value))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"key {key!r} cannot be read as an array: {exc}") from exc
    if not is_real_dtype(array.dtype):
        raise CheckpointError(f"key {key!r} has dtype {array.dtype}: expected a real array")
    return array


def _source_names(exc: WeightError, plan: Layout, prefix: str) -> str:
    """`exc`'s message with canonical names followed by the source's own key."""
    message = str(exc)
    for entry in plan.entries:
        if entry.canonical and repr(entry.canonical) in message:
            message = message.replace(
                repr(entry.canonical), f"{entry.canonical!r} (key {prefix + entry.key!r})"
            )
    return message


def _few(items: list[Any], limit: int = 6) -> str:
    shown = ", ".join(repr(item) for item in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)} in all)"


__all__ = [
    "COUNTER",
    "CheckpointError",
    "block_prefix",
    "from_state_dict",
    "to_state_dict",
    "unwrap",
]
