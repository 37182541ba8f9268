"""`find_blocks`: every non-local block in a whole network's state dict, converted.

Each source's blocks are recognised by their W_z and g keys (``conv_out.conv.weight`` and
``g[.0].conv.weight`` for mmcv, ``{p}_out_w`` and ``{p}_g_w`` for Caffe2, ...). Everything
the weights determine - channels, inner width, spatial rank, the norm, and for AlexHex7 and
mmcv the subsampling and the Gaussian and concatenation instantiations - is read from each
block's own keys and shapes; what the weights cannot tell (embedded Gaussian or dot product,
SlowFast's pool size) comes from the caller's arguments, in the source's own names, with the
source's defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from ..config import NonLocalConfig
from ..profiles import SOURCES, ProfileError, profile
from ..weights import Weights
from .state_dicts import CheckpointError, from_state_dict, unwrap

Shapes = Callable[[str], "tuple[int, ...] | None"]


@dataclasses.dataclass(frozen=True)
class FoundBlock:
    """One block found in a checkpoint: where, what, and its canonical weights.

    ``prefix`` is the block's module path (``"s3.pathway0_nonlocal1"``,
    ``"nonlocal_conv4_3"``); ``arguments`` are the source's own constructor arguments that
    `nonlocal_core.profile` turned into ``config``; ``keys`` the checkpoint entries read.
    """

    prefix: str
    source: str
    config: NonLocalConfig
    weights: Weights
    arguments: dict[str, Any]
    keys: tuple[str, ...]


def find_blocks(state: Mapping[str, Any], source: str, **arguments: Any) -> list[FoundBlock]:
    """Every `source` non-local block in `state` (a whole network's state dict), in key order.

    `arguments` are `source`'s constructor arguments for what the weights cannot tell,
    applied to every block (e.g. ``instantiation="dot_product"`` or
    ``pool_size=[1, 2, 2]`` for SlowFast); the rest is read from each block's keys. A block
    whose keys do not fit raises `CheckpointError` naming the block and the key.

    Example:
        >>> import numpy as np
        >>> from nonlocal_core import init_weights
        >>> from nonlocal_core.convert import to_state_dict
        >>> cfg = profile("slowfast", dim=8, dim_inner=4)
        >>> state = {"s1.stem.weight": np.zeros((8, 3, 1, 1, 1))}
        >>> for path in ("s3.pathway0_nonlocal0.", "s4.pathway0_nonlocal1."):
        ...     state.update(to_state_dict(init_weights(cfg), "slowfast", cfg, prefix=path))
        >>> [(b.prefix, b.config.in_channels) for b in find_blocks(state, "slowfast")]
        [('s3.pathway0_nonlocal0', 8), ('s4.pathway0_nonlocal1', 8)]
    """
    if source not in _DETECT:
        raise ValueError(f"source={source!r} is invalid: expected one of {SOURCES}")
    state = unwrap(state)
    separator = "_" if source == "caffe2" else "."
    anchors, infer = _DETECT[source]
    found = []
    for prefix in _prefixes(state, anchors, separator):
        start = prefix + separator if prefix else ""
        keys = tuple(key for key in state if isinstance(key, str) and key.startswith(start))
        relative = {key[len(start) :]: state[key] for key in keys}
        kwargs = dict(arguments)
        try:
            kwargs = {**infer(_shape_reader(relative)), **arguments}
            config = profile(source, **kwargs)
        except (ProfileError, TypeError, IndexError) as exc:
            raise CheckpointError(f"{source} block {prefix!r}: {exc}") from exc
        # With the checkpoint's own names, so that errors name the checkpoint's keys.
        weights = from_state_dict({key: state[key] for key in keys}, source, config)
        found.append(FoundBlock(prefix, source, config, weights, kwargs, keys))
    return found


def _prefixes(state: Mapping[str, Any], anchors: tuple[str, ...], separator: str) -> list[str]:
    """Module paths P for which every anchor key P + separator + anchor exists (the
    first anchor may list alternatives separated by "|")."""
    first, *rest = anchors
    keys = {key for key in state if isinstance(key, str)}
    out = []
    for key in state:
        if not isinstance(key, str):
            continue
        for option in first.split("|"):
            prefix = _strip(key, option, separator)
            if prefix is None:
                continue
            start = prefix + separator if prefix else ""
            if all(any(start + o in keys for o in a.split("|")) for a in rest):
                out.append(prefix)
    return sorted(set(out), key=out.index)


def _strip(key: str, suffix: str, separator: str) -> str | None:
    if key == suffix:
        return ""
    if key.endswith(separator + suffix):
        return key[: -len(separator + suffix)]
    return None


def _shape_reader(block: Mapping[str, Any]) -> Shapes:
    def shape(key: str) -> tuple[int, ...] | None:
        value = block.get(key)
        shape = getattr(value, "shape", None)
        return None if shape is None else tuple(int(n) for n in shape)

    return shape


def _instantiation(shapes: Shapes, theta: str, concat: str) -> dict[str, str]:
    """The instantiation when the keys show it: no theta -> Gaussian, w_f -> concatenation."""
    if shapes(theta) is None:
        return {"instantiation": "gaussian"}
    if shapes(concat) is not None:
        return {"instantiation": "concatenation"}
    return {}


def _rename(found: dict[str, str], name: str) -> dict[str, str]:
    return {name: found["instantiation"]} if found else {}


def _reduction(in_channels: int, inter: int) -> int:
    """mmcv's smallest `reduction` with max(C // reduction, 1) == C'."""
    return next((r for r in range(1, in_channels + 1) if max(in_channels // r, 1) == inter), 0)


def _infer_paper(s: Shapes) -> dict[str, Any]:
    out = s("out.weight")
    kwargs = {"in_channels": out[0], "inter_channels": out[1], "norm": None}
    if len(out) > 2:
        kwargs["spatial_dims"] = len(out) - 2
    if s("norm.gamma") is not None:
        kwargs["norm"] = "batch"
    return {**kwargs, **_instantiation(s, "theta.weight", "concat.weight")}


def _infer_caffe2(s: Shapes) -> dict[str, Any]:
    out, g = s("out_w"), s("g_w")
    return {"dim_in": out[0], "dim_inner": g[0], "USE_BN": s("bn_s") is not None}


def _infer_alexhex7(s: Shapes) -> dict[str, Any]:
    norm = s("W.1.weight") is not None
    out = s("W.0.weight") or s("W.weight")
    return {
        "in_channels": out[0],
        "inter_channels": out[1],
        "spatial_dims": len(out) - 2,
        "sub_sample": s("g.0.weight") is not None,
        "bn_layer": norm,
        "instantiation": "embedded_gaussian",
        **_instantiation(s, "theta.weight", "concat_project.0.weight"),
    }


def _infer_mmcv(s: Shapes) -> dict[str, Any]:
    out = s("conv_out.conv.weight")
    dims = len(out) - 2
    norm = s("conv_out.bn.weight") is not None
    return {
        "in_channels": out[0],
        "reduction": _reduction(out[0], out[1]),
        "spatial_dims": dims,
        "sub_sample": s("g.0.conv.weight") is not None,
        "norm_cfg": {"type": f"BN{dims}d"} if norm else None,
        **_rename(_instantiation(s, "theta.conv.weight", "concat_project.conv.weight"), "mode"),
    }


def _infer_slowfast(s: Shapes) -> dict[str, Any]:
    out = s("conv_out.weight")
    norm = "batchnorm" if s("bn.weight") is not None else "none"
    return {"dim": out[0], "dim_inner": out[1], "norm_type": norm}


def _infer_pytorchvideo(s: Shapes) -> dict[str, Any]:
    out = s("conv_out.weight")
    norm = "BatchNorm3d" if s("norm.weight") is not None else None
    return {"dim_in": out[0], "dim_inner": out[1], "norm": norm}


def _infer_timm(s: Shapes) -> dict[str, Any]:
    out = s("z.weight")
    return {"in_channels": out[0], "rd_channels": out[1]}


# Per source: the keys (relative to the block) that identify a block, and the inference.
_DETECT: dict[str, tuple[tuple[str, ...], Callable[[Shapes], dict[str, Any]]]] = {
    "paper": (("out.weight", "g.weight"), _infer_paper),
    "caffe2": (("out_w", "g_w"), _infer_caffe2),
    "alexhex7": (("W.0.weight|W.weight", "g.weight|g.0.weight"), _infer_alexhex7),
    "mmcv": (("conv_out.conv.weight", "g.conv.weight|g.0.conv.weight"), _infer_mmcv),
    "slowfast": (("conv_out.weight", "conv_g.weight"), _infer_slowfast),
    "pytorchvideo": (("conv_out.weight", "conv_g.weight"), _infer_pytorchvideo),
    "timm": (("z.weight", "t.weight"), _infer_timm),
}
