"""Adapters as a third party would write them from the docs, for three published blocks.

Each is the NumPy reference restricted to what one published implementation can build
(AlexHex7, SlowFast, mmcv): a config its profile cannot express (`source_kwargs` raises
`ProfileError`) is declined with `Unsupported`, and so are weights it cannot hold (mmcv has
no W_z bias before a norm). Within those limits the three agree with the spec, as the real
ones do, so a run against them must show declines and skips, never a failure.

Two flavours per implementation:

- ``Naive*`` declares only the coarse fields an author fills in first (instantiations,
  ranks, layout, pool position, no context, mask or attention) and declines everything
  else at build time, as the adapters of the issue's trial did;
- ``Declared*`` also declares the fine-grained fields (logit scale, inter_channels rule,
  windows, residual, eps, W_z bias, per instantiation), so the suite draws inside them and
  almost nothing is declined.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from nonlocal_conformance.adapter import Capabilities, Unsupported
from nonlocal_conformance.numpy_adapter import NumpyAdapter
from nonlocal_core import ProfileError
from nonlocal_core.profiles import source_kwargs

_COARSE = dict(
    data_formats=frozenset({"channels_first"}),
    dtypes=frozenset({"float32", "float64"}),
    context=False,
    key_mask=False,
    attention=False,
    gradients=True,
)


class _Published(NumpyAdapter):
    source = ""
    out_bias_with_norm = True

    def build(self, config, weights, *, dtype, device):
        try:
            source_kwargs(self.source, config)
        except ProfileError as exc:
            raise Unsupported(str(exc)) from None
        bias = weights.get("out.bias")
        if not self.out_bias_with_norm and config.norm is not None and np.any(bias):
            raise Unsupported(f"{self.source} has no W_z bias when a norm follows")
        return super().build(config, weights, dtype=dtype, device=device)


class NaiveAlexHex7(_Published):
    name = "alexhex7-naive"
    source = "alexhex7"
    capabilities = Capabilities(pool_positions=frozenset({"after_projection"}), **_COARSE)


class DeclaredAlexHex7(NaiveAlexHex7):
    name = "alexhex7"
    capabilities = dataclasses.replace(
        NaiveAlexHex7.capabilities,
        logit_scales=frozenset({"one"}),
        windows=frozenset({"none", "default"}),
        residual=frozenset({True}),
        norm_eps=frozenset({1e-5}),
    )


class NaiveSlowFast(_Published):
    name = "slowfast-naive"
    source = "slowfast"
    capabilities = Capabilities(
        instantiations=frozenset({"embedded_gaussian", "dot_product"}),
        spatial_dims=frozenset({3}),
        pool_positions=frozenset({"before_projection"}),
        **_COARSE,
    )


class DeclaredSlowFast(NaiveSlowFast):
    name = "slowfast"
    capabilities = dataclasses.replace(
        NaiveSlowFast.capabilities,
        logit_scales=frozenset({"default"}),
        residual=frozenset({True}),
    )


class NaiveMmcv(_Published):
    name = "mmcv-naive"
    source = "mmcv"
    out_bias_with_norm = False
    capabilities = Capabilities(pool_positions=frozenset({"after_projection"}), **_COARSE)


class DeclaredMmcv(NaiveMmcv):
    name = "mmcv"
    capabilities = dataclasses.replace(
        NaiveMmcv.capabilities,
        logit_scales=frozenset({"default", "one"}),
        inter_channels=frozenset({"divisor"}),
        windows=frozenset({"none", "default"}),
        residual=frozenset({True}),
        out_bias_with_norm=False,
        per_instantiation={"gaussian": {"logit_scales": frozenset({"one"})}},
    )


ADAPTERS = (
    NaiveAlexHex7,
    DeclaredAlexHex7,
    NaiveSlowFast,
    DeclaredSlowFast,
    NaiveMmcv,
    DeclaredMmcv,
)
