"""`PyTorchVideoAdapter`: the suite against PyTorchVideo's real
``pytorchvideo.layers.nonlocal_net.create_nonlocal``.

``pytest --pyargs nonlocal_conformance --backend=pytorchvideo`` (needs torch and
pytorchvideo: ``pip install 'nonlocal-block[pytorchvideo]'``).

What it declares comes from PyTorchVideo's profile (`nonlocal_core.profiles`,
``"pytorchvideo"``):

- the embedded Gaussian (``instantiation="softmax"``, logits scaled by 1/sqrt(C'), the
  spec's default, and nothing else) and the dot product; 3-D only (``N, C, T, H, W =
  x.size()``), channels first;
- any C' (``dim_inner``); keys pooled *before* the projections (``self.pool(x)`` feeds
  ``conv_phi`` and ``conv_g``) with any window (``pool_size``; ``None`` and ``(1, 1, 1)``
  mean no pooling), or none;
- the norm after W_z: ``BatchNorm3d`` (any eps) or none; W_z keeps its bias;
- the residual is always added; no context, key mask or attention output; training mode
  and gradients (autograd);
- PyTorchVideo does not validate inputs, so the error checks are not declared; mismatched
  weights are refused by the conversion into its state dict
  (`nonlocal_core.convert.to_state_dict`), before ``load_state_dict(strict=True)``.

Example:
    >>> import numpy as np
    >>> from nonlocal_core import NonLocalConfig, random_weights
    >>> adapter = PyTorchVideoAdapter()
    >>> cfg = NonLocalConfig(4, spatial_dims=3, subsample=(1, 2, 2),
    ...                      pool_position="before_projection")
    >>> block = adapter.build(cfg, random_weights(cfg), dtype="float32", device="cpu")
    >>> type(block.module).__name__, block.module.pool.kernel_size
    ('NonLocal', [1, 2, 2])
"""

from __future__ import annotations

import importlib
from typing import Any

from ..adapter import Capabilities
from ._torch import DTYPES, PublishedTorchAdapter, require

require("torch", "pytorchvideo")


class PyTorchVideoAdapter(PublishedTorchAdapter):
    """PyTorchVideo's ``create_nonlocal`` (see the module docstring for what it declares)."""

    name = "pytorchvideo"
    source = "pytorchvideo"
    packages = ("pytorchvideo",)

    def declared(self, devices: frozenset[str]) -> Capabilities:
        return Capabilities(
            instantiations=frozenset({"embedded_gaussian", "dot_product"}),
            spatial_dims=frozenset({3}),
            data_formats=frozenset({"channels_first"}),
            pool_positions=frozenset({"before_projection"}),
            norms=frozenset({"batch", None}),
            dtypes=frozenset(DTYPES),
            devices=devices,
            logit_scales=frozenset({"default"}),
            inter_channels=frozenset({"any"}),
            windows=frozenset({"none", "any"}),
            residual=frozenset({True}),
            norm_eps=None,
            out_bias_with_norm=True,
            context=False,
            key_mask=False,
            training=True,
            attention=False,
            gradients=True,
            input_errors=False,
            weight_errors=True,
        )

    def construct(self, kwargs: dict[str, Any]) -> Any:
        nonlocal_net = importlib.import_module("pytorchvideo.layers.nonlocal_net")
        kwargs = dict(kwargs)
        if kwargs.get("norm") is not None:  # the profile names the class: "BatchNorm3d"
            kwargs["norm"] = getattr(self.torch.nn, kwargs["norm"])
        return nonlocal_net.create_nonlocal(**kwargs)
