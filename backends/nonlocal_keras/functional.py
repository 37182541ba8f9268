"""The non-local block's steps in `keras.ops` only, so they run on every Keras 3 backend.

Each function mirrors one step of `nonlocal_core.reference` (the normative definition) and
works on channels-last tensors: grids ``(B, *S, C)`` and flattened positions ``(B, N, C)``.
Shapes may be partly dynamic (an unknown batch or extent inside `tf.function`), so sizes
come from `keras.ops.shape`, never from Python-side assumptions.

Kernels use Keras's convention, ``(in, out)``; `nonlocal_keras.layer` converts the canonical
``(out, in)`` weights. Half-precision inputs get float32 logits, softmax and BN statistics,
the way Keras's own attention and normalisation layers do it.

Products are `keras.ops.einsum` and means are sums over counts: on JAX and PyTorch Keras's
type promotion turns float64 `ops.matmul` (PyTorch) and `ops.mean` (both) into float32,
which would make the float64 tier silently single precision.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import keras
from keras import ops

from nonlocal_core import NonLocalConfig

HALF_DTYPES = ("float16", "bfloat16")


def accumulation_dtype(dtype: str) -> str:
    """The dtype logits, softmax and BN statistics are computed in for a compute `dtype`.

    Example:
        >>> accumulation_dtype("bfloat16"), accumulation_dtype("float64")
        ('float32', 'float64')
    """
    dtype = keras.backend.standardize_dtype(dtype)
    return "float32" if dtype in HALF_DTYPES else dtype


def to_grid(features, data_format: str):
    """(B, C, *S) or (B, *S, C) -> (B, *S, C).

    Example:
        >>> tuple(to_grid(ops.zeros((2, 3, 4, 5)), "channels_first").shape)
        (2, 4, 5, 3)
    """
    if data_format == "channels_first":
        return ops.moveaxis(features, 1, -1)
    return features


def from_grid(grid, data_format: str):
    """Inverse of `to_grid`.

    Example:
        >>> tuple(from_grid(ops.zeros((2, 4, 5, 3)), "channels_first").shape)
        (2, 3, 4, 5)
    """
    if data_format == "channels_first":
        return ops.moveaxis(grid, -1, 1)
    return grid


def flatten_positions(grid):
    """(B, *S, C) -> (B, N, C), positions row-major over S like the reference.

    Example:
        >>> tuple(flatten_positions(ops.zeros((2, 3, 4, 5))).shape)
        (2, 12, 5)
    """
    shape = ops.shape(grid)
    return ops.reshape(grid, (shape[0], -1, shape[-1]))


def project(grid, kernel, bias):
    """A 1x1 projection over the channel axis: ``grid @ kernel + bias``, kernel (in, out).

    Example:
        >>> z = project(ops.ones((1, 2, 3)), ops.ones((3, 4)), ops.zeros(4))
        >>> ops.convert_to_numpy(z)[0, 0].tolist()
        [3.0, 3.0, 3.0, 3.0]
    """
    # Spelled-out axes, not "...": TensorFlow 2.21's CPU einsum with an ellipsis returns
    # wrong float16 results (errors of order 10 on unit inputs).
    axes = "bxyz"[: len(grid.shape) - 1]
    return ops.einsum(f"{axes}c,co->{axes}o", grid, kernel) + bias


def max_pool(grid, window: Sequence[int] | None):
    """Max pool (B, *S, C) with kernel = stride = window, floor (remainders dropped).

    A reshape and a max rather than `keras.ops.max_pool`: TensorFlow's 3-D pooling has no
    float64 or CPU float16 kernel, and this form is exact for every dtype and backend. One
    spatial axis at a time (the max is separable): TensorFlow's gradient of one max over
    three split axes needs a broadcast its kernels do not implement ("Broadcast between
    [2,1,1,2,1,2,1,1] and [2,1,2,2,2,2,2,1] is not supported yet").

    Example:
        >>> pooled = max_pool(ops.reshape(ops.arange(5.0), (1, 5, 1)), (2,))
        >>> ops.convert_to_numpy(pooled)[0, :, 0].tolist()
        [1.0, 3.0]
    """
    if window is None or all(w == 1 for w in window):
        return grid
    extent = ops.shape(grid)[1:-1]
    kept = [e // w for e, w in zip(extent, window)]
    crop = (slice(None), *(slice(0, k * w) for k, w in zip(kept, window)), slice(None))
    pooled = grid[crop]
    for axis, (k, w) in enumerate(zip(kept, window), start=1):
        if w == 1:
            continue
        shape = ops.shape(pooled)
        split = (*shape[:axis], k, w, *shape[axis + 1 :])
        pooled = ops.max(ops.reshape(pooled, split), axis=axis + 1)
    return pooled


def keys_and_values(ctx_grid, weights, config: NonLocalConfig):
    """phi (B, N', d) and g (B, N', C') from x^, pooled as `config.pool_position` says.

    `weights` maps ``"phi_kernel"``, ``"phi_bias"``, ``"g_kernel"``, ``"g_bias"`` to tensors.

    Example:
        >>> cfg = NonLocalConfig(2, spatial_dims=1, instantiation="gaussian", subsample=True)
        >>> w = {"g_kernel": ops.ones((2, 1)), "g_bias": ops.zeros(1)}
        >>> phi, g = keys_and_values(ops.ones((1, 6, 2)), w, cfg)
        >>> tuple(phi.shape), tuple(g.shape)
        ((1, 3, 2), (1, 3, 1))
    """
    window = config.subsample
    pooled_ctx = max_pool(ctx_grid, window) if window is not None else ctx_grid

    def embed(name: str):
        kernel, bias = weights[f"{name}_kernel"], weights[f"{name}_bias"]
        if config.pool_position == "before_projection":
            return project(pooled_ctx, kernel, bias)
        return max_pool(project(ctx_grid, kernel, bias), window)

    phi = pooled_ctx if config.instantiation == "gaussian" else embed("phi")
    return flatten_positions(phi), flatten_positions(embed("g"))


def flat_key_mask(key_mask, batch):
    """A (B, *S') or (B, N') boolean key mask as (B, N').

    Example:
        >>> tuple(flat_key_mask(ops.ones((2, 2, 3), dtype="bool"), 2).shape)
        (2, 6)
    """
    return ops.reshape(key_mask, (batch, -1))


def valid_counts(phi, mask, dtype):
    """The number of valid keys, in `dtype`: (B, 1, 1), or a scalar N' without a mask.

    Example:
        >>> ops.convert_to_numpy(valid_counts(ops.ones((1, 3, 2)), None, "float32")).item()
        3.0
    """
    if mask is None:
        # Counted from the tensor, not read from its static shape: an exporter tracing with
        # symbolic sizes (torch.export) would freeze a shape entry at its trace-time value.
        # Counted in int32, exact at every N' (float16 sums of ones stop at 2048).
        return ops.cast(ops.sum(ops.ones_like(phi[0, :, 0], dtype="int32")), dtype)
    return ops.sum(ops.cast(mask, dtype), axis=1)[:, None, None]


def safe_inverse(count):
    """1 / count, and 0 where count is 0 (a query with no valid key gets y = 0).

    Example:
        >>> ops.convert_to_numpy(safe_inverse(ops.convert_to_tensor([0.0, 4.0]))).tolist()
        [0.0, 0.25]

    Plain operators, not `ops.maximum`: Keras's promotion would turn float64 into float32.
    """
    empty = ops.cast(count == 0, count.dtype)
    return (1.0 - empty) / (count + empty)


def softmax_attention(theta, phi, mask, scale: float):
    """a = softmax_j(scale * theta_i . phi_j) over valid keys, in float32 for half inputs.

    A batch element with no valid key gets all-zero rows. Rather than a -inf row (NaN
    gradients), its mask is opened to every key and its rows zeroed after the softmax.

    Example:
        >>> a = softmax_attention(ops.zeros((1, 1, 2)), ops.ones((1, 4, 2)), None, 1.0)
        >>> ops.convert_to_numpy(a).tolist()
        [[[0.25, 0.25, 0.25, 0.25]]]
    """
    dtype = keras.backend.standardize_dtype(theta.dtype)
    acc = accumulation_dtype(dtype)
    logits = ops.einsum("bnd,bmd->bnm", ops.cast(theta, acc), ops.cast(phi, acc))
    # A Python float, not ops.cast(scale): TensorFlow would round it through float32 first.
    logits = logits * scale
    if mask is None:
        return ops.cast(_softmax_over_keys(logits), dtype)
    any_valid = ops.any(mask, axis=1)[:, None, None]  # (B, 1, 1)
    valid = ops.logical_or(mask[:, None, :], ops.logical_not(any_valid))
    logits = ops.where(valid, logits, ops.cast(float("-inf"), acc))
    probs = ops.where(any_valid, _softmax_over_keys(logits), ops.zeros_like(logits))
    return ops.cast(probs, dtype)


def _softmax_over_keys(logits):
    # Keras warns that a softmax over an axis of size 1 "is likely not what you intended";
    # here it is: one key (N' = 1: a pooled 2x2 map, a one-element context) is a valid block.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "You are using a softmax over axis", UserWarning)
        return ops.softmax(logits, axis=-1)


def fused_softmax_aggregate(theta, phi, g, mask, scale: float):
    """y = softmax(scale * theta phi^T) g through `keras.ops.dot_product_attention`.

    Only valid where it is exact (see `strategies.fused_attention_is_exact`): d = C' (JAX requires
    values as wide as keys) and not float64 (JAX and PyTorch's paths soften to float32).
    Fully masked batch elements are handled as in `softmax_attention`.

    Example:
        >>> g = ops.reshape(ops.arange(6.0), (1, 3, 2))
        >>> y = fused_softmax_aggregate(ops.zeros((1, 1, 2)), ops.ones((1, 3, 2)), g, None, 1.0)
        >>> ops.convert_to_numpy(y).tolist()
        [[[2.0, 3.0]]]
    """
    heads = lambda t: ops.expand_dims(t, 2)  # noqa: E731  (B, T, 1, D): one head
    if mask is None:
        y = ops.dot_product_attention(heads(theta), heads(phi), heads(g), scale=scale)
        return ops.squeeze(y, 2)
    any_valid = ops.any(mask, axis=1)[:, None, None]
    open_mask = ops.logical_or(mask[:, None, None, :], ops.logical_not(any_valid[..., None]))
    y = ops.dot_product_attention(heads(theta), heads(phi), heads(g), mask=open_mask, scale=scale)
    y = ops.squeeze(y, 2)
    return ops.where(any_valid, y, ops.zeros_like(y))


def dot_product_aggregate(theta, phi, g, mask):
    """y_i = theta_i (sum_j phi_j g_j^T) / N'_valid: associativity, O(N d C') not O(N N').

    Example:
        >>> y = dot_product_aggregate(ops.ones((1, 2, 1)), ops.ones((1, 4, 1)),
        ...                           3.0 * ops.ones((1, 4, 1)), None)
        >>> ops.convert_to_numpy(y).tolist()
        [[[3.0], [3.0]]]
    """
    dtype = keras.backend.standardize_dtype(theta.dtype)
    if mask is not None:
        phi = phi * ops.cast(mask, dtype)[:, :, None]
    kv = ops.einsum("bmd,bmc->bdc", phi, g)  # (B, d, C'): sum_j phi_j g_j^T
    return ops.einsum("bnd,bdc->bnc", theta, kv) * safe_inverse(valid_counts(phi, mask, dtype))


def pairwise_dot_product(theta, phi, mask):
    """The explicit (B, N, N') matrix theta_i . phi_j / N'_valid (for `return_attention`).

    Example:
        >>> a = pairwise_dot_product(ops.ones((1, 1, 1)), 2.0 * ops.ones((1, 2, 1)), None)
        >>> ops.convert_to_numpy(a).tolist()
        [[[1.0, 1.0]]]
    """
    dtype = keras.backend.standardize_dtype(theta.dtype)
    f = ops.einsum("bnd,bmd->bnm", theta, phi)
    if mask is not None:
        f = f * ops.cast(mask, dtype)[:, None, :]
    return f * safe_inverse(valid_counts(phi, mask, dtype))


def concatenation_attention(theta, phi, concat_kernel, mask):
    """a_ij = ReLU(w_f . [theta_i ; phi_j]) / N'_valid, theta half of w_f first.

    w_f . [theta_i ; phi_j] splits into scalars a_i + b_j, so the largest tensor is
    (B, N, N'), never the (B, 2C', N, N') concatenation.

    Example:
        >>> phi = ops.convert_to_tensor([[[1.0], [-3.0]]])
        >>> a = concatenation_attention(ops.ones((1, 1, 1)), phi, ops.ones(2), None)
        >>> ops.convert_to_numpy(a).tolist()
        [[[1.0, 0.0]]]
    """
    dtype = keras.backend.standardize_dtype(theta.dtype)
    half = ops.shape(concat_kernel)[0] // 2
    a = ops.einsum("bnc,c->bn", theta, concat_kernel[:half])  # w_f's theta half . theta_i
    b = ops.einsum("bmc,c->bm", phi, concat_kernel[half:])
    f = ops.relu(a[:, :, None] + b[:, None, :])
    if mask is not None:
        f = f * ops.cast(mask, dtype)[:, None, :]
    return f * safe_inverse(valid_counts(phi, mask, dtype))


def batch_norm(u, gamma, beta, mean, var, eps: float):
    """(u - mean) * gamma / sqrt(var + eps) + beta over the last axis.

    Example:
        >>> one, zero = ops.ones(1), ops.zeros(1)
        >>> z = batch_norm(2.0 * ops.ones((1, 1, 1)), one, zero, zero, one, 0.0)
        >>> ops.convert_to_numpy(z).tolist()
        [[[2.0]]]
    """
    return (u - mean) * (gamma * ops.rsqrt(var + eps)) + beta


def batch_moments(u):
    """Mean and biased variance of (B, N, C) over batch and positions.

    Example:
        >>> m, v = batch_moments(ops.convert_to_tensor([[[1.0], [3.0]]]))
        >>> ops.convert_to_numpy(m).tolist(), ops.convert_to_numpy(v).tolist()
        ([2.0], [1.0])
    """
    shape = ops.shape(u)
    count = ops.cast(shape[0] * shape[1], u.dtype)
    mean = ops.sum(u, axis=(0, 1)) / count
    var = ops.sum(ops.square(u - mean), axis=(0, 1)) / count
    return mean, var


def aggregate(attention, g):
    """y_i = sum_j a_ij g_j: (B, N, N') x (B, N', C') -> (B, N, C').

    Example:
        >>> y = aggregate(0.5 * ops.ones((1, 1, 2)), ops.convert_to_tensor([[[2.0], [4.0]]]))
        >>> ops.convert_to_numpy(y).tolist()
        [[[3.0]]]
    """
    return ops.einsum("bnm,bmc->bnc", attention, g)
