"""`MmcvAdapter`: the suite against mmcv's real ``mmcv.cnn.NonLocal1d/2d/3d``.

``pytest --pyargs nonlocal_conformance --backend=mmcv`` (needs torch, mmcv or mmcv-lite,
and mmengine: ``pip install 'nonlocal-block[mmcv]'``).

What it declares comes from mmcv's profile (`nonlocal_core.profiles`, ``"mmcv"``):

- all four instantiations (``mode``), 1-D/2-D/3-D (the class), channels first, keys pooled
  after the projections (``sub_sample`` wraps g and phi in ``nn.Sequential(conv, pool)``)
  with the default windows only (2, (2, 2), (1, 2, 2)), or none;
- C' = max(C // reduction, 1) for an integer ``reduction`` (``inter_channels`` rule
  ``divisor``);
- logit scale: the embedded Gaussian has 1/sqrt(C') (``use_scale=True``) or none; the
  Gaussian is never scaled (rule ``one``); the others have none;
- the BatchNorm after W_z (``norm_cfg``) with any eps, or none; mmcv's ``ConvModule`` drops
  the conv bias when a norm follows, so there is no W_z bias then
  (``out_bias_with_norm=False``);
- the residual is always added; no context, key mask or attention output; training mode
  and gradients (autograd);
- mmcv does not validate inputs (torch raises ``RuntimeError`` or returns numbers), so the
  error checks are not declared; mismatched weights are refused by the conversion of the
  canonical weights into mmcv's state dict (`nonlocal_core.convert.to_state_dict`), before
  ``load_state_dict(strict=True)``.

Example:
    >>> import numpy as np
    >>> from nonlocal_core import NonLocalConfig, random_weights
    >>> adapter = MmcvAdapter()
    >>> cfg = NonLocalConfig(4, spatial_dims=2, instantiation="dot_product", norm=None)
    >>> block = adapter.build(cfg, random_weights(cfg), dtype="float64", device="cpu")
    >>> type(block.module).__name__
    'NonLocal2d'
    >>> adapter.build(cfg.replace(inter_channels=3), random_weights(cfg.replace(inter_channels=3)),
    ...               dtype="float64", device="cpu")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    nonlocal_conformance.adapter.Unsupported: mmcv cannot express this config: inter_channels=3 ...
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from nonlocal_core import INSTANTIATIONS, NonLocalConfig

from ..adapter import Capabilities, Unsupported
from ._torch import DTYPES, PublishedTorchAdapter, require

require("torch", "mmcv", "mmengine")

_CLASSES = {1: "NonLocal1d", 2: "NonLocal2d", 3: "NonLocal3d"}


class MmcvAdapter(PublishedTorchAdapter):
    """mmcv's ``NonLocal1d/2d/3d`` (see the module docstring for what it declares)."""

    name = "mmcv"
    source = "mmcv"
    packages = ("mmcv", "mmengine")

    def declared(self, devices: frozenset[str]) -> Capabilities:
        return Capabilities(
            instantiations=frozenset(INSTANTIATIONS),
            spatial_dims=frozenset({1, 2, 3}),
            data_formats=frozenset({"channels_first"}),
            pool_positions=frozenset({"after_projection"}),
            norms=frozenset({"batch", None}),
            dtypes=frozenset(DTYPES),
            devices=devices,
            # use_scale: the embedded Gaussian's logits by 1/sqrt(C') or not at all; the
            # Gaussian is never scaled (below).
            logit_scales=frozenset({"default", "one"}),
            inter_channels=frozenset({"divisor"}),
            windows=frozenset({"none", "default"}),
            residual=frozenset({True}),
            norm_eps=None,
            out_bias_with_norm=False,
            context=False,
            key_mask=False,
            training=True,
            attention=False,
            gradients=True,
            input_errors=False,
            weight_errors=True,
            per_instantiation={"gaussian": {"logit_scales": frozenset({"one"})}},
        )

    def construct(self, kwargs: dict[str, Any]) -> Any:
        cnn = importlib.import_module("mmcv.cnn")
        kwargs = dict(kwargs)
        cls = getattr(cnn, _CLASSES[kwargs.pop("spatial_dims")])
        return cls(**kwargs)

    def bias_before_norm(self, module: Any) -> Any:
        return module.conv_out.conv if module.conv_out.with_norm else None

    def decline(self, config: NonLocalConfig, weights: Mapping[str, np.ndarray]) -> None:
        if config.norm is not None and np.any(np.asarray(weights["out.bias"]) != 0):
            raise Unsupported(
                "mmcv: a non-zero W_z bias before the norm (ConvModule has no conv bias "
                "when a norm follows)"
            )
