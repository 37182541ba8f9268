"""Deliberately wrong adapters: each carries one bug real non-local implementations shipped
(or plausibly could).

They prove the suite is strict enough: ``tests/conformance_meta`` runs the suite against each
(``--backend=nonlocal_conformance.mutants:NoLogitScale``) and asserts it fails, and which
check catches it (`MUTANTS` maps each class to the checks expected to fail). `RULES` maps
every rule of spec/nonlocal.md to the mutants that violate it, or to why no adapter can
violate it observably; spec/conformance.md section 7 is generated from both.

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

from nonlocal_core import NonLocalConfig, check_shapes, init_weights, weight_shapes
from nonlocal_core import reference as ref
from nonlocal_core.config import require_flag
from nonlocal_core.weights import is_real_dtype

from .adapter import Output
from .dtypes import cast
from .numpy_adapter import NumpyAdapter, NumpyBlock, require_floating


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
        training, return_attention = self.check_flags(training, return_attention)
        x = self.as_float(x, "x")
        ctx = None if context is None else self.as_float(context, "context")
        batch, n_keys = self.check_shapes(cfg, x, ctx, key_mask)
        w = self.prepare_weights(block.weights, cfg)
        mask = None if key_mask is None else self.flat_mask(key_mask, batch, n_keys)
        x_grid = self.to_grid(x, cfg)
        ctx_grid = x_grid if ctx is None else self.to_grid(ctx, cfg)
        theta = self.queries(x_grid, w, cfg)
        phi, g = self.keys_and_values(self.key_source(x_grid, ctx_grid), w, cfg)
        f = self.pairwise(theta, phi, w, cfg)
        a = self.normalise(f, cfg, mask)
        y = self.aggregate(a, g)
        x_flat = x_grid.reshape(x_grid.shape[0], -1, x_grid.shape[-1])
        z_flat = self.output(y, x_flat, w, cfg, training)
        z = self.from_grid(z_flat, x.shape, cfg)
        dtype = self.output_dtype(block.dtype)
        return Output(
            z=cast(z, dtype),
            dtype=dtype,
            attention=cast(self.returned_attention(f, a), dtype) if return_attention else None,
        )

    # Overridable steps; each default is the reference.
    def check_flags(self, training, return_attention) -> tuple[bool, bool]:
        training = require_flag(training, "training")
        return training, require_flag(return_attention, "return_attention")

    def as_float(self, value, name: str) -> np.ndarray:
        require_floating(value, name)
        return np.asarray(value, dtype=np.float64)

    def check_shapes(self, cfg, x, ctx, key_mask) -> tuple[int, int]:
        if self.validate:
            mask_shape = None if key_mask is None else np.shape(key_mask)
            shapes = check_shapes(cfg, x.shape, None if ctx is None else ctx.shape, mask_shape)
            return shapes.batch, shapes.num_keys
        src = x if ctx is None else ctx
        extent = src.shape[2:] if cfg.data_format == "channels_first" else src.shape[1:-1]
        return x.shape[0], math.prod(cfg.pooled_extent(extent))

    def prepare_weights(self, weights, cfg) -> dict[str, np.ndarray]:
        return ref.prepare_weights(weights, cfg)

    def flat_mask(self, key_mask, batch: int, n_keys: int) -> np.ndarray:
        return ref.flat_key_mask(key_mask, batch, n_keys)

    def to_grid(self, t: np.ndarray, cfg: NonLocalConfig) -> np.ndarray:
        return ref.to_grid(t, cfg)

    def from_grid(self, flat: np.ndarray, shape, cfg: NonLocalConfig) -> np.ndarray:
        return ref.from_positions(flat, shape, cfg)

    def key_source(self, x_grid, ctx_grid):
        return ctx_grid

    def queries(self, x_grid, w, cfg):
        return ref.queries(x_grid, w, cfg)

    def keys_and_values(self, ctx_grid, w, cfg):
        return ref.keys_and_values(ctx_grid, w, cfg)

    def pairwise(self, theta, phi, w, cfg):
        return ref.pairwise_function(theta, phi, w, cfg)

    def normalise(self, f, cfg, mask):
        return ref.normalise(f, cfg, mask)

    def aggregate(self, a, g):
        return ref.aggregate(a, g)

    def output(self, y, x_flat, w, cfg, training):
        return ref.output_transform(y, x_flat, w, cfg, training)

    def output_dtype(self, dtype: str) -> str:
        return dtype

    def returned_attention(self, f, a):
        return a

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


@_no_gradients
class NoMaxSubtraction(BuggyNumpyAdapter):
    """Softmax as exp(l) / sum_j exp(l) in the dtype under test, no row maximum subtracted:
    logits beyond exp's overflow point (709 in float64, 88.7 in float32) give inf / inf =
    NaN (the textbook formula; ``torch.exp(f) / torch.exp(f).sum(-1)`` in hand-written
    attention)."""

    def normalise(self, f, cfg, mask):
        if not cfg.is_softmax:
            return ref.normalise(f, cfg, mask)
        valid = np.ones(f.shape[::2], bool) if mask is None else mask
        carrier = cast(f, self._dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            e = np.where(valid[:, None, :], np.exp(carrier), 0).astype(np.float64)
            total = e.sum(axis=-1, keepdims=True)
            has_key = valid.any(axis=-1)[:, None, None]
            return np.divide(e, total, out=np.zeros_like(e), where=has_key)

    def forward(self, block: NumpyBlock, x, **kwargs) -> Output:
        self._dtype = block.dtype
        return super().forward(block, x, **kwargs)


@_no_gradients
class ContextIgnored(BuggyNumpyAdapter):
    """The context is validated, then keys and values read x anyway (a self-attention block
    whose ``context`` argument was added to the signature but never wired to phi and g)."""

    def key_source(self, x_grid, ctx_grid):
        return x_grid


@_no_gradients
class DroppedOutputBias(BuggyNumpyAdapter):
    """W_z has no bias: b_z is accepted, then ignored (mmcv's W_z has no bias when a norm
    follows; an adapter for such an implementation declares ``out_bias_with_norm=False``
    instead of dropping a nonzero b_z)."""

    def output(self, y, x_flat, w, cfg, training):
        w = {**w, "out.bias": np.zeros_like(w["out.bias"])}
        return ref.output_transform(y, x_flat, w, cfg, training)


@_no_gradients
class ResidualAlwaysAdded(BuggyNumpyAdapter):
    """``residual=False`` is accepted and ignored: z = BN(u) + x always (the residual add
    written into ``forward`` unconditionally, as AlexHex7's and mmcv's blocks do)."""

    def output(self, y, x_flat, w, cfg, training):
        return ref.output_transform(y, x_flat, w, cfg.replace(residual=True), training)


@_no_gradients
class NormScaleIgnored(BuggyNumpyAdapter):
    """BN without its affine parameters (``affine=False``, like SlowFast's
    ``norm_type="layernorm"``): gamma and beta are accepted, then ignored, so z is not x at
    initialisation (PyTorchVideo's gamma = 1 has the same effect)."""

    def output(self, y, x_flat, w, cfg, training):
        if cfg.norm == "batch":
            w = {
                **w,
                "norm.gamma": np.ones_like(w["norm.gamma"]),
                "norm.beta": np.zeros_like(w["norm.beta"]),
            }
        return ref.output_transform(y, x_flat, w, cfg, training)


@_no_gradients
class NormEpsIgnored(BuggyNumpyAdapter):
    """BN built with its framework's default epsilon (Keras ``BatchNormalization``: 1e-3)
    whatever ``norm_eps`` says: the parameter is accepted, then dropped."""

    def output(self, y, x_flat, w, cfg, training):
        return ref.output_transform(y, x_flat, w, cfg.replace(norm_eps=1e-3), training)


@_no_gradients
class ComputesInFloat32(BuggyNumpyAdapter):
    """Inputs and weights cast to float32, Keras's default ``floatx``, whatever the dtype of
    x (a layer built with the default dtype policy): a float64 x comes back as float32."""

    def as_float(self, value, name):
        return super().as_float(value, name).astype(np.float32).astype(np.float64)

    def prepare_weights(self, weights, cfg):
        return {k: cast(v, "float32").astype(np.float64) for k, v in weights.items()}

    def output_dtype(self, dtype):
        return "float32"


def _tf32(values: np.ndarray) -> np.ndarray:
    """`values` rounded to TF32 (float32 with a 10-bit mantissa, ties to even), as float64."""
    f32 = np.ascontiguousarray(values, dtype=np.float32)
    bits = f32.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0xFFF + ((bits >> 13) & 1)) & 0xFFFFE000
    out = rounded.astype(np.uint32).view(np.float32)
    return np.where(np.isfinite(f32), out, f32).astype(np.float64)


@_no_gradients
class UndeclaredTF32(BuggyNumpyAdapter):
    """float32 matrix products on TF32 tensor cores (operands rounded to a 10-bit mantissa:
    PyTorch's ``cudnn.allow_tf32`` is on by default for convolutions, JAX and TensorFlow use
    TF32 for float32 matmuls on Ampere GPUs) without declaring ``matmul_inputs="tfloat32"``
    in ``precision()``. Run at float32, where a GPU does this."""

    dtype_under_test = "float32"

    def forward(self, block: NumpyBlock, x, **kwargs) -> Output:
        self._tf32 = block.dtype == "float32"
        return super().forward(block, x, **kwargs)

    def _round(self, t):
        return _tf32(t) if self._tf32 else t

    def prepare_weights(self, weights, cfg):
        return {k: self._round(v) for k, v in ref.prepare_weights(weights, cfg).items()}

    def queries(self, x_grid, w, cfg):
        return ref.queries(self._round(x_grid), w, cfg)

    def keys_and_values(self, ctx_grid, w, cfg):
        return ref.keys_and_values(self._round(ctx_grid), w, cfg)

    def pairwise(self, theta, phi, w, cfg):
        return ref.pairwise_function(self._round(theta), self._round(phi), w, cfg)

    def aggregate(self, a, g):
        return ref.aggregate(self._round(a), self._round(g))


@_no_gradients
class AttentionBeforeNormalisation(BuggyNumpyAdapter):
    """The returned attention is the pairwise scores before the normaliser C(x) (the
    softmax's logits, f before / N'), as layers that return their "attention scores" do."""

    def returned_attention(self, f, a):
        return f


@_no_gradients
class IntegerInputCastSilently(BuggyNumpyAdapter):
    """Integer and bool x or context are cast to the compute dtype (``x.float()`` first
    thing in ``forward``): raw pixels or token ids run through the block unnoticed."""

    def as_float(self, value, name):
        array = np.asarray(value)
        if is_real_dtype(array.dtype) or array.dtype == np.bool_:
            return array.astype(np.float64)
        return super().as_float(value, name)


@_no_gradients
class NaNsZeroed(BuggyNumpyAdapter):
    """Inputs sanitised with ``nan_to_num`` (NaN -> 0, inf -> the largest float): a NaN
    from upstream turns into plausible numbers instead of propagating."""

    def as_float(self, value, name):
        return np.nan_to_num(super().as_float(value, name))


@_no_gradients
class FlagsNotChecked(BuggyNumpyAdapter):
    """``training`` and ``return_attention`` used as truth values (``if training:``, as
    most layers do): ``training="no"`` runs BN on batch statistics."""

    def check_flags(self, training, return_attention):
        return bool(training), bool(return_attention)


@_no_gradients
class VagueErrorMessages(BuggyNumpyAdapter):
    """Every invalid input raises Keras's ``InputSpec`` message, which names no argument:
    'Input 0 of layer "non_local_block" is incompatible with the layer: expected ndim=4,
    found ndim=5' (the letter x of "expected" once passed for naming x)."""

    def forward(self, block: NumpyBlock, x, **kwargs) -> Output:
        try:
            return super().forward(block, x, **kwargs)
        except (ValueError, TypeError):
            rank = block.config.spatial_dims + 2
            raise ValueError(
                f'Input 0 of layer "non_local_block" is incompatible with the layer: expected '
                f"ndim={rank}, found ndim={np.ndim(x)}. Full shape received: {np.shape(x)}"
            ) from None


@_no_gradients
class WrongRankCrashesWhileUnpacking(BuggyNumpyAdapter):
    """``forward`` starts with ``b, c, h, w = x.shape`` (as 2D ports of the block do), so a
    wrong rank fails in Python's unpacking, 'too many values to unpack (expected 4)', which
    names no argument."""

    def check_shapes(self, cfg, x, ctx, key_mask):
        match cfg.spatial_dims:  # the names do not matter, the count does
            case 1:
                _, _, _ = x.shape
            case 2:
                _, _, _, _ = x.shape
            case _:
                _, _, _, _, _ = x.shape
        return super().check_shapes(cfg, x, ctx, key_mask)


@_no_gradients
class FloatMaskAccepted(BuggyNumpyAdapter):
    """A non-boolean key mask is cast with ``mask.bool()``: a float 0/1 mask works, and an
    additive mask (0 for valid, -inf for masked keys) silently selects the masked keys."""

    def flat_mask(self, key_mask, batch, n_keys):
        return ref.flat_key_mask(np.asarray(key_mask).astype(bool), batch, n_keys)


@_no_gradients
class WeightsNotChecked(BuggyNumpyAdapter):
    """``load_state_dict(strict=False)``: missing weights keep their initial values and
    unexpected ones are ignored; only a shape mismatch raises (naming the tensor, as PyTorch
    does), and a negative running variance is loaded as it is."""

    def build(self, config, weights, *, dtype, device) -> NumpyBlock:
        expected = weight_shapes(config)
        kept = dict(init_weights(config, seed=0))
        for name, value in weights.items():
            if name not in expected:
                continue
            if np.shape(value) != expected[name]:
                raise ValueError(
                    f"size mismatch for {name}: copying a param with shape {np.shape(value)}, "
                    f"the shape in current model is {expected[name]}"
                )
            kept[name] = np.array(value, copy=True)
        return NumpyBlock(config, kept, dtype)

    def prepare_weights(self, weights, cfg):
        return {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}


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


INFERENCE = "test_output_matches_reference_in_inference"

# Each mutant and the checks (test function names) expected to catch it. A mutant runs at
# float64 unless its class sets `dtype_under_test`.
MUTANTS: dict[type, tuple[str, ...]] = {
    NoLogitScale: (INFERENCE, "test_golden_vector_is_reproduced"),
    ScaleByInputChannels: (INFERENCE,),
    DivideByQueryCount: (INFERENCE,),
    PoolBeforeProjection: (INFERENCE,),
    CeilPooling: (INFERENCE,),
    SoftmaxOverQueries: (INFERENCE,),
    ChannelsLastWithoutTranspose: (INFERENCE, "test_channels_last_equals_channels_first"),
    BatchStatisticsAtInference: (INFERENCE, "test_batch_elements_are_independent_in_inference"),
    ConcatenationHalvesSwapped: (INFERENCE,),
    DroppedValueBias: (INFERENCE,),
    GaussianWithEmbeddedTheta: (INFERENCE,),
    MaskIgnored: ("test_output_and_attention_match_reference_with_key_mask",),
    EmptyMaskRowGivesNaN: ("test_query_without_valid_key_gets_zero_aggregate",),
    UnbiasedBatchVariance: ("test_output_matches_reference_in_training",),
    KeysFromWholeBatch: ("test_batch_elements_are_independent_in_inference",),
    NoInputValidation: (
        "test_input_with_wrong_channel_count_is_rejected",
        "test_context_of_wrong_shape_is_rejected",
        "test_subsample_window_larger_than_extent_is_rejected",
    ),
    ExportSwapsPhiAndG: ("test_exported_weights_equal_the_built_weights_bit_for_bit",),
    GradientMissesResidual: ("test_gradients_match_reference",),
    NoMaxSubtraction: (INFERENCE,),
    ContextIgnored: ("test_output_matches_reference_with_context",),
    DroppedOutputBias: (INFERENCE,),
    ResidualAlwaysAdded: (INFERENCE,),
    NormScaleIgnored: (INFERENCE, "test_block_is_the_identity_at_initialisation"),
    NormEpsIgnored: (INFERENCE,),
    ComputesInFloat32: (INFERENCE, "test_output_shape_and_dtype_are_preserved"),
    UndeclaredTF32: (INFERENCE,),
    AttentionBeforeNormalisation: ("test_attention_matches_reference",),
    IntegerInputCastSilently: ("test_integer_or_boolean_input_is_rejected",),
    NaNsZeroed: ("test_nan_in_input_propagates_only_where_it_reaches",),
    FlagsNotChecked: ("test_non_boolean_flag_is_rejected",),
    VagueErrorMessages: (
        "test_input_of_wrong_rank_is_rejected",
        "test_input_with_wrong_channel_count_is_rejected",
        "test_empty_batch_or_extent_is_rejected",
    ),
    WrongRankCrashesWhileUnpacking: ("test_input_of_wrong_rank_is_rejected",),
    FloatMaskAccepted: ("test_non_boolean_key_mask_is_rejected",),
    WeightsNotChecked: ("test_mismatched_weights_are_rejected",),
}

# The MUST paragraphs of spec/nonlocal.md that carry no **[ID]** label, under the name this
# table gives them, with the section that holds each.
UNLABELLED_RULES: dict[str, str] = {}

# Every rule of spec/nonlocal.md (and the unlabelled MUSTs above): the mutants that violate
# it, each caught by the checks `MUTANTS` names, or why no adapter can violate it observably
# through the protocol and which tests cover it instead (`path::test` names that exist).
RULES: dict[str, tuple[type, ...] | str] = {
    "OP-1": (ChannelsLastWithoutTranspose, DroppedValueBias, GradientMissesResidual),
    "OP-2": (ContextIgnored,),
    "OP-3": (KeysFromWholeBatch, BatchStatisticsAtInference),
    "INST-1": (GaussianWithEmbeddedTheta,),
    "INST-2": (SoftmaxOverQueries, NoMaxSubtraction),
    "INST-3": (NoLogitScale, ScaleByInputChannels),
    "INST-4": (DivideByQueryCount,),
    "INST-5": (ConcatenationHalvesSwapped,),
    "POOL-1": (CeilPooling,),
    "POOL-2": (NoInputValidation,),
    "POOL-3": (PoolBeforeProjection,),
    "MASK-1": (MaskIgnored, FloatMaskAccepted),
    "MASK-2": (EmptyMaskRowGivesNaN,),
    "OUT-1": (DroppedOutputBias,),
    "OUT-2": (BatchStatisticsAtInference, UnbiasedBatchVariance, NormScaleIgnored, NormEpsIgnored),
    "OUT-3": (
        "no requirement: how running statistics are updated is each framework's convention, "
        "outside the equivalence guarantee (the adapters restore them after a training-mode "
        "call)"
    ),
    "OUT-4": (ResidualAlwaysAdded,),
    "OUT-5": (
        "a permission (MAY raise): the suite never draws B N = 1 in training mode "
        "(strategies.cases); the reference's result is tested in "
        "tests/core/test_reference.py::test_training_with_one_value_per_channel_is_defined"
    ),
    "INIT-1": (NormScaleIgnored,),
    "ATT-1": (AttentionBeforeNormalisation,),
    "IO-1": (ChannelsLastWithoutTranspose,),
    "IO-2": (NoInputValidation,),
    "IO-3": (ComputesInFloat32, IntegerInputCastSilently),
    "IO-4": (NaNsZeroed,),
    "CFG-2": (NormEpsIgnored, ResidualAlwaysAdded, PoolBeforeProjection),
    "CFG-1": (
        "the adapter receives a NonLocalConfig, which already validated every value; each "
        "backend's constructor is tested on invalid values by "
        "tests/core/test_config.py::test_invalid_field_names_field_value_and_what_is_allowed, "
        "tests/torch/test_fuzz.py::test_constructor_keywords_with_junk_are_rejected_by_name "
        "and tests/keras/test_fuzz.py::"
        "test_constructor_rejects_junk_by_name_or_builds_a_working_layer"
    ),
    "W-1": (WeightsNotChecked,),
    "W-2": (ExportSwapsPhiAndG,),
    "W-3": (
        "weight files are not part of the adapter protocol; reading (pickles included) and "
        "writing them is tested by tests/core/test_fuzz_files.py::"
        "test_the_examples_of_the_issue_fail_cleanly, tests/core/test_fuzz_files.py::"
        "test_a_damaged_file_fails_naming_the_file_or_loads_unchanged, "
        "tests/core/test_fuzz_files.py::"
        "test_each_kind_of_damaged_safetensors_file_fails_saying_what_is_wrong and "
        "tests/core/test_fuzz_files.py::"
        "test_an_interrupted_save_leaves_the_old_file_and_nothing_else"
    ),
    "ERR-1": (
        NoInputValidation,
        VagueErrorMessages,
        WrongRankCrashesWhileUnpacking,
        FlagsNotChecked,
        IntegerInputCastSilently,
        FloatMaskAccepted,
        WeightsNotChecked,
    ),
    "NUM-1": (ComputesInFloat32, UndeclaredTF32),
    "NUM-2": (UndeclaredTF32,),
    "VEC-1": (NoLogitScale,),
    "VER-1": (
        "saved files and golden vectors are read by nonlocal_core, not through the adapter; "
        "another major version is refused in "
        "tests/core/test_fuzz_files.py::test_the_examples_of_the_issue_fail_cleanly, "
        "tests/core/test_fuzz_files.py::"
        "test_each_kind_of_damaged_safetensors_file_fails_saying_what_is_wrong, "
        "tests/test_cli_fuzz.py::test_load_case_says_what_is_wrong and "
        "tests/conformance_meta/test_rules.py::"
        "test_a_vector_index_of_another_major_version_is_refused"
    ),
}

# What the mutants of a rule do not reach: the parts no adapter can violate observably.
RULE_NOTES: dict[str, str] = {
    "OP-1": (
        "gradients have no rule of their own: the suite checks them as the derivatives of "
        "this function"
    ),
    "IO-3": (
        "documenting the mixed-precision output dtype is documentation, not behaviour: "
        "docs/quickstart-torch.md (autocast) and docs/quickstart-keras.md (mixed policies) "
        "state it, tests/torch/test_integration.py::test_autocast_within_tolerance and "
        "tests/keras/test_layer.py::test_mixed_precision_policies test it"
    ),
    "IO-4": (
        "where an infinity, or an intermediate that overflows the dtype, makes outputs "
        "non-finite is unspecified; the suite draws finite inputs whose intermediates stay "
        "in range, and requires finite outputs there"
    ),
    "CFG-2": (
        "which values an implementation accepts is what its Capabilities declare: the suite "
        "draws every declared value and reports the rest as skips, never as passes"
    ),
    "ERR-1": "invalid config values (CFG-1) and damaged weight files (W-3): see those rules",
}
