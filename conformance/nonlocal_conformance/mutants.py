"""Deliberately wrong adapters: each carries one bug real non-local implementations shipped.

They prove the suite is strict enough: ``tests/conformance_meta`` runs the suite against each
(``--backend=nonlocal_conformance.mutants:NoLogitScale``) and asserts it fails, and which
check catches it (`MUTANTS` maps each class to the checks expected to fail).

Each mutant is the NumPy reference with one step replaced (`BuggyNumpyAdapter`).

Example:
    >>> import numpy as np
    >>> from nonlocal_core import NonLocalConfig, random_weights, nonlocal_forward
    >>> cfg = NonLocalConfig(4, spatial_dims=1, norm=None)
    >>> x = np.random.default_rng(0).normal(size=(1, 4, 5))
    >>> w = random_weights(cfg)
    >>> a = NoLogitScale()
    >>> z = a.forward(a.build(cfg, w, dtype="float64", device="cpu"), x).z
    >>> bool(np.allclose(z, nonlocal_forward(x, w, cfg)))
    False
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nonlocal_core import NonLocalConfig, check_shapes
from nonlocal_core import reference as ref

from .adapter import Output
from .dtypes import cast
from .numpy_adapter import NumpyAdapter, NumpyBlock


class BuggyNumpyAdapter(NumpyAdapter):
    """The reference forward written step by step, each step a method a mutant overrides."""

    name = "numpy-mutant"
    validate = True

    def forward(
        self,
        block: NumpyBlock,
        x: np.ndarray,
        *,
        context: np.ndarray | None = None,
        key_mask: np.ndarray | None = None,
        training: bool = False,
        return_attention: bool = False,
    ) -> Output:
        """The reference steps, each overridable."""
        cfg = block.config
        x = np.asarray(x, dtype=np.float64)
        ctx = None if context is None else np.asarray(context, dtype=np.float64)
        if self.validate:
            shapes = (
                check_shapes(cfg, x.shape, None if ctx is None else ctx.shape, np.shape(key_mask))
                if key_mask is not None
                else check_shapes(cfg, x.shape, None if ctx is None else ctx.shape)
            )
            batch, n_keys = shapes.batch, shapes.num_keys
        else:
            src = x if ctx is None else ctx
            extent = src.shape[2:] if cfg.data_format == "channels_first" else src.shape[1:-1]
            batch, n_keys = x.shape[0], math.prod(cfg.pooled_extent(extent))
        w = ref.prepare_weights(block.weights, cfg)
        mask = None if key_mask is None else self.flat_mask(key_mask, batch, n_keys)
        x_grid = self.to_grid(x, cfg)
        ctx_grid = x_grid if ctx is None else self.to_grid(ctx, cfg)
        theta = self.queries(x_grid, w, cfg)
        phi, g = self.keys_and_values(ctx_grid, w, cfg)
        a = self.normalise(self.pairwise(theta, phi, w, cfg), cfg, mask)
        y = a @ g
        x_flat = x_grid.reshape(x_grid.shape[0], -1, x_grid.shape[-1])
        z_flat = self.output(y, x_flat, w, cfg, training)
        z = self.from_grid(z_flat, x.shape, cfg)
        return Output(
            z=cast(z, block.dtype),
            dtype=block.dtype,
            attention=cast(a, block.dtype) if return_attention else None,
        )

    # Overridable steps; each default is the reference.
    def flat_mask(self, key_mask, batch: int, n_keys: int) -> np.ndarray:
        return ref.flat_key_mask(key_mask, batch, n_keys)

    def to_grid(self, t: np.ndarray, cfg: NonLocalConfig) -> np.ndarray:
        return ref.to_grid(t, cfg)

    def from_grid(self, flat: np.ndarray, shape, cfg: NonLocalConfig) -> np.ndarray:
        return ref.from_positions(flat, shape, cfg)

    def queries(self, x_grid, w, cfg):
        return ref.queries(x_grid, w, cfg)

    def keys_and_values(self, ctx_grid, w, cfg):
        return ref.keys_and_values(ctx_grid, w, cfg)

    def pairwise(self, theta, phi, w, cfg):
        return ref.pairwise_function(theta, phi, w, cfg)

    def normalise(self, f, cfg, mask):
        return ref.normalise(f, cfg, mask)

    def output(self, y, x_flat, w, cfg, training):
        return ref.output_transform(y, x_flat, w, cfg, training)

    def gradients(self, block: NumpyBlock, x, cotangent, **kwargs) -> dict[str, Any]:
        """Mutants of the forward pass have no trustworthy backward: not declared."""
        raise NotImplementedError


def _no_gradients(cls):
    cls.capabilities = type(NumpyAdapter.capabilities)(
        dtypes=NumpyAdapter.capabilities.dtypes, gradients=False
    )
    return cls


@_no_gradients
class NoLogitScale(BuggyNumpyAdapter):
    """Softmax logits theta . phi unscaled (the paper's formula, not the spec's 1/sqrt(d))."""

    def pairwise(self, theta, phi, w, cfg):
        out = ref.pairwise_function(theta, phi, w, cfg)
        return out / cfg.scale if cfg.is_softmax else out


@_no_gradients
class ScaleByInputChannels(BuggyNumpyAdapter):
    """Embedded Gaussian scaled by 1/sqrt(C), the input width, instead of 1/sqrt(C') (timm)."""

    def pairwise(self, theta, phi, w, cfg):
        out = ref.pairwise_function(theta, phi, w, cfg)
        if cfg.instantiation == "embedded_gaussian" and cfg.logit_scale is None:
            out = out / cfg.scale / math.sqrt(cfg.in_channels)
        return out


@_no_gradients
class DivideByQueryCount(BuggyNumpyAdapter):
    """Dot product / concatenation normalised by N (queries) instead of N' (valid keys)."""

    def normalise(self, f, cfg, mask):
        if cfg.is_softmax:
            return ref.normalise(f, cfg, mask)
        valid = np.ones(f.shape[::2], bool) if mask is None else mask
        return np.where(valid[:, None, :], f, 0.0) / f.shape[1]


@_no_gradients
class PoolBeforeProjection(BuggyNumpyAdapter):
    """Always pools x^ before the phi/g projections, whatever pool_position says."""

    def keys_and_values(self, ctx_grid, w, cfg):
        return ref.keys_and_values(ctx_grid, w, cfg.replace(pool_position="before_projection"))


@_no_gradients
class CeilPooling(BuggyNumpyAdapter):
    """Max pool with ceil_mode: a partial window at the end of an axis is kept, not dropped."""

    def keys_and_values(self, ctx_grid, w, cfg):
        if cfg.subsample is not None:
            pad = [(0, 0)]
            for e, win in zip(ctx_grid.shape[1:-1], cfg.subsample):
                pad.append((0, -e % win))
            pad.append((0, 0))
            ctx_grid = np.pad(ctx_grid, pad, mode="edge")
        return ref.keys_and_values(ctx_grid, w, cfg)

    def flat_mask(self, key_mask, batch, n_keys):
        return np.asarray(key_mask).reshape(batch, -1)


@_no_gradients
class SoftmaxOverQueries(BuggyNumpyAdapter):
    """The softmax normalises over the query axis i instead of the key axis j."""

    def normalise(self, f, cfg, mask):
        if not cfg.is_softmax:
            return ref.normalise(f, cfg, mask)
        e = np.exp(f - f.max(axis=1, keepdims=True))
        a = e / e.sum(axis=1, keepdims=True)
        return a if mask is None else a * mask[:, None, :]


@_no_gradients
class ChannelsLastWithoutTranspose(BuggyNumpyAdapter):
    """channels_last memory read as if channels_first ((B, *S, C) reshaped, not transposed)."""

    def to_grid(self, t, cfg):
        if cfg.data_format == "channels_first":
            return ref.to_grid(t, cfg)
        b, *spatial, c = t.shape
        return np.moveaxis(t.reshape(b, c, *spatial), 1, -1)

    def from_grid(self, flat, shape, cfg):
        if cfg.data_format == "channels_first":
            return ref.from_positions(flat, shape, cfg)
        b, *spatial, c = shape
        return np.moveaxis(flat.reshape(b, *spatial, c), -1, 1).reshape(shape)


@_no_gradients
class BatchStatisticsAtInference(BuggyNumpyAdapter):
    """BN normalises with the batch's statistics in inference too (module left in train mode)."""

    def output(self, y, x_flat, w, cfg, training):
        return ref.output_transform(y, x_flat, w, cfg, True)


@_no_gradients
class ConcatenationHalvesSwapped(BuggyNumpyAdapter):
    """Concatenation applies w_f to [phi_j ; theta_i] instead of [theta_i ; phi_j]."""

    def pairwise(self, theta, phi, w, cfg):
        if cfg.instantiation == "concatenation":
            half = w["concat.weight"].shape[0] // 2
            swapped = np.concatenate([w["concat.weight"][half:], w["concat.weight"][:half]])
            w = {**w, "concat.weight": swapped}
        return ref.pairwise_function(theta, phi, w, cfg)


@_no_gradients
class DroppedValueBias(BuggyNumpyAdapter):
    """The g projection has no bias (g.bias accepted, then ignored)."""

    def keys_and_values(self, ctx_grid, w, cfg):
        return ref.keys_and_values(ctx_grid, {**w, "g.bias": np.zeros_like(w["g.bias"])}, cfg)


@_no_gradients
class GaussianWithEmbeddedTheta(BuggyNumpyAdapter):
    """Gaussian with theta and phi projections it made itself (as for embedded Gaussian)."""

    def _embed(self, t, cfg):
        rng = np.random.default_rng(0)
        proj = rng.normal(0, 1 / math.sqrt(cfg.in_channels), (cfg.in_channels, cfg.in_channels))
        return t @ proj.T

    def queries(self, x_grid, w, cfg):
        theta = ref.queries(x_grid, w, cfg)
        return self._embed(theta, cfg) if cfg.instantiation == "gaussian" else theta

    def keys_and_values(self, ctx_grid, w, cfg):
        phi, g = ref.keys_and_values(ctx_grid, w, cfg)
        return (self._embed(phi, cfg) if cfg.instantiation == "gaussian" else phi), g


@_no_gradients
class MaskIgnored(BuggyNumpyAdapter):
    """The key mask is accepted and ignored."""

    def normalise(self, f, cfg, mask):
        return ref.normalise(f, cfg, None)


@_no_gradients
class EmptyMaskRowGivesNaN(BuggyNumpyAdapter):
    """Masked logits set to -inf before a plain softmax: a query with no valid key gets NaN."""

    def normalise(self, f, cfg, mask):
        if not cfg.is_softmax or mask is None:
            return ref.normalise(f, cfg, mask)
        logits = np.where(mask[:, None, :], f, -np.inf)
        with np.errstate(invalid="ignore"):
            e = np.exp(logits - logits.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)


@_no_gradients
class UnbiasedBatchVariance(BuggyNumpyAdapter):
    """Training-mode BN divides by the unbiased variance (B N - 1) instead of the biased one."""

    def output(self, y, x_flat, w, cfg, training):
        if not (training and cfg.norm == "batch"):
            return ref.output_transform(y, x_flat, w, cfg, training)
        u = y @ w["out.weight"].T + w["out.bias"]
        m = u.shape[0] * u.shape[1]
        var = u.var(axis=(0, 1), ddof=1) if m > 1 else u.var(axis=(0, 1))
        v = (u - u.mean(axis=(0, 1))) / np.sqrt(var + cfg.norm_eps) * w["norm.gamma"]
        v = v + w["norm.beta"]
        return v + x_flat if cfg.residual else v


@_no_gradients
class KeysFromWholeBatch(BuggyNumpyAdapter):
    """Keys and values of every batch element are shared (batch folded into positions)."""

    def keys_and_values(self, ctx_grid, w, cfg):
        phi, g = ref.keys_and_values(ctx_grid, w, cfg)
        share = lambda t: np.repeat(t.reshape(1, -1, t.shape[-1]), t.shape[0], axis=0)  # noqa: E731
        return share(phi), share(g)

    def flat_mask(self, key_mask, batch, n_keys):
        mask = ref.flat_key_mask(key_mask, batch, n_keys)
        return np.repeat(mask.reshape(1, -1), batch, axis=0)


@_no_gradients
class NoInputValidation(BuggyNumpyAdapter):
    """Shapes are never checked: mis-shaped inputs broadcast or yield empty key sets."""

    validate = False

    def flat_mask(self, key_mask, batch, n_keys):
        m = np.asarray(key_mask, dtype=bool)
        return np.resize(m, (batch, n_keys))


class ExportSwapsPhiAndG(NumpyAdapter):
    """Canonical export maps the phi module to g.* and g to phi.* (a name-mapping slip)."""

    name = "numpy-mutant"

    def export_weights(self, block: NumpyBlock) -> dict[str, np.ndarray]:
        out = super().export_weights(block)
        for part in ("weight", "bias"):
            if f"phi.{part}" in out:
                out[f"phi.{part}"], out[f"g.{part}"] = out[f"g.{part}"], out[f"phi.{part}"]
        return out


class GradientMissesResidual(NumpyAdapter):
    """The gradient with respect to x forgets the residual path (dz/dx lacks the identity)."""

    name = "numpy-mutant"

    def gradients(self, block: NumpyBlock, x, cotangent, **kwargs) -> dict[str, Any]:
        grads = super().gradients(block, x, cotangent, **kwargs)
        if block.config.residual:
            grads["x"] = cast(grads["x"] - np.asarray(cotangent, np.float64), block.dtype)
        return grads


# Each mutant and the checks (test function names) expected to catch it.
MUTANTS: dict[type, tuple[str, ...]] = {
    NoLogitScale: ("test_output_matches_reference_in_inference",),
    ScaleByInputChannels: ("test_output_matches_reference_in_inference",),
    DivideByQueryCount: ("test_output_matches_reference_in_inference",),
    PoolBeforeProjection: ("test_output_matches_reference_in_inference",),
    CeilPooling: ("test_output_matches_reference_in_inference",),
    SoftmaxOverQueries: ("test_output_matches_reference_in_inference",),
    ChannelsLastWithoutTranspose: (
        "test_output_matches_reference_in_inference",
        "test_channels_last_equals_channels_first",
    ),
    BatchStatisticsAtInference: (
        "test_output_matches_reference_in_inference",
        "test_batch_elements_are_independent_in_inference",
    ),
    ConcatenationHalvesSwapped: ("test_output_matches_reference_in_inference",),
    DroppedValueBias: ("test_output_matches_reference_in_inference",),
    GaussianWithEmbeddedTheta: ("test_output_matches_reference_in_inference",),
    MaskIgnored: ("test_output_and_attention_match_reference_with_key_mask",),
    EmptyMaskRowGivesNaN: ("test_query_without_valid_key_gets_zero_aggregate",),
    UnbiasedBatchVariance: ("test_output_matches_reference_in_training",),
    KeysFromWholeBatch: ("test_batch_elements_are_independent_in_inference",),
    NoInputValidation: (
        "test_input_with_wrong_channel_count_is_rejected",
        "test_subsample_window_larger_than_extent_is_rejected",
    ),
    ExportSwapsPhiAndG: ("test_exported_weights_equal_the_built_weights_bit_for_bit",),
    GradientMissesResidual: ("test_gradients_match_reference",),
}
