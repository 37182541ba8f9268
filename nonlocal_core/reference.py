"""The NumPy reference: the non-local block in float64, one small function per step.

This module *defines* the block's semantics (spec section "The operator"):

    theta_i = W_theta x_i + b_theta          (Gaussian: theta_i = x_i)
    phi_j   = W_phi x^_j + b_phi             (Gaussian: phi_j = x^_j), keys pooled
    g_j     = W_g x^_j + b_g                 values pooled like keys
    a_ij    = f(theta_i, phi_j) / C_i        the attention matrix, B x N x N'
    y_i     = sum_j a_ij g_j
    z_i     = BN(W_z y_i + b_z) + x_i

Every array inside is channels-last over flattened positions: ``(B, N, channels)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .config import NonLocalConfig, require_config, require_flag
from .shapes import InputError, check_shapes
from .weights import check_weights, is_real_dtype

# Steps 1-2: layout and projections --------------------------------------------------------


def to_positions(features: np.ndarray, config: NonLocalConfig) -> np.ndarray:
    """(B, C, *S) or (B, *S, C) -> (B, N, C), positions row-major over S (last axis fastest).

    Example:
        >>> cfg = NonLocalConfig(3, spatial_dims=2)
        >>> to_positions(np.zeros((2, 3, 4, 5)), cfg).shape
        (2, 20, 3)
    """
    if config.data_format == "channels_first":
        features = np.moveaxis(features, 1, -1)
    return features.reshape(features.shape[0], -1, features.shape[-1])


def from_positions(flat: np.ndarray, shape: tuple[int, ...], config: NonLocalConfig):
    """Inverse of `to_positions`: (B, N, C) back to the layout and shape of the input.

    Example:
        >>> cfg = NonLocalConfig(3, spatial_dims=1)
        >>> x = np.arange(12.0).reshape(2, 3, 2)
        >>> bool((from_positions(to_positions(x, cfg), x.shape, cfg) == x).all())
        True
    """
    if config.data_format == "channels_first":
        grid = flat.reshape(shape[0], *shape[2:], shape[1])
        return np.moveaxis(grid, -1, 1)
    return flat.reshape(shape)


def to_grid(features: np.ndarray, config: NonLocalConfig) -> np.ndarray:
    """(B, C, *S) or (B, *S, C) -> (B, *S, C): the layout pooling and projections act on.

    Example:
        >>> to_grid(np.zeros((2, 3, 4)), NonLocalConfig(3, spatial_dims=1)).shape
        (2, 4, 3)
    """
    if config.data_format == "channels_first":
        return np.moveaxis(features, 1, -1)
    return features


def project(grid: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """A 1x1 projection: ``out[..., o] = sum_c weight[o, c] * grid[..., c] + bias[o]``.

    Example:
        >>> project(np.ones((1, 2, 3)), np.ones((4, 3)), np.zeros(4))[0, 0]
        array([3., 3., 3., 3.])
    """
    return grid @ weight.T + bias


def max_pool(grid: np.ndarray, window: tuple[int, ...] | None) -> np.ndarray:
    """Max pool a (B, *S, C) grid: kernel = stride = window, no padding, remainders dropped.

    Example:
        >>> max_pool(np.arange(5.0).reshape(1, 5, 1), (2,))[0, :, 0]
        array([1., 3.])
    """
    if window is None:
        return grid
    batch, *extent, channels = grid.shape
    kept = [e // w for e, w in zip(extent, window, strict=True)]
    # Crop the trailing positions that do not fill a window (floor, not ceil).
    grid = grid[(slice(None), *(slice(0, k * w) for k, w in zip(kept, window)), slice(None))]
    split = [batch]
    for k, w in zip(kept, window):
        split += [k, w]
    blocks = grid.reshape(*split, channels)
    window_axes = tuple(2 + 2 * a for a in range(len(window)))
    return blocks.max(axis=window_axes)


def queries(x_grid: np.ndarray, weights: Mapping, config: NonLocalConfig) -> np.ndarray:
    """theta: (B, N, d). Gaussian uses the raw features; the others project to C'.

    Example:
        >>> cfg = NonLocalConfig(2, spatial_dims=1, instantiation="gaussian", norm=None)
        >>> queries(np.ones((1, 3, 2)), {}, cfg).shape
        (1, 3, 2)
    """
    if config.instantiation == "gaussian":
        theta = x_grid
    else:
        theta = project(x_grid, weights["theta.weight"], weights["theta.bias"])
    return theta.reshape(theta.shape[0], -1, theta.shape[-1])


def keys_and_values(ctx_grid: np.ndarray, weights: Mapping, config: NonLocalConfig):
    """phi: (B, N', d) and g: (B, N', C'), from x^ with the configured pool position.

    ``after_projection`` pools phi(x^) and g(x^); ``before_projection`` projects pool(x^).
    Gaussian's phi is pool(x^) either way. Queries are never pooled.

    Example:
        >>> cfg = NonLocalConfig(2, spatial_dims=1, subsample=True, norm=None)
        >>> from nonlocal_core import init_weights
        >>> phi, g = keys_and_values(np.ones((1, 6, 2)), init_weights(cfg), cfg)
        >>> phi.shape, g.shape
        ((1, 3, 1), (1, 3, 1))
    """
    window = config.subsample

    def embed(name: str) -> np.ndarray:
        w, b = weights[f"{name}.weight"], weights[f"{name}.bias"]
        if config.pool_position == "before_projection":
            return project(max_pool(ctx_grid, window), w, b)
        return max_pool(project(ctx_grid, w, b), window)

    phi = max_pool(ctx_grid, window) if config.instantiation == "gaussian" else embed("phi")
    g = embed("g")
    flat = lambda t: t.reshape(t.shape[0], -1, t.shape[-1])  # noqa: E731
    return flat(phi), flat(g)


# Steps 3-4: pairwise function and normalisation -----------------------------------------


def pairwise_function(theta, phi, weights: Mapping, config: NonLocalConfig) -> np.ndarray:
    """The unnormalised pairwise term, (B, N, N').

    Softmax instantiations return the scaled logits ``s * theta_i . phi_j`` (f = exp of
    them); dot product returns ``theta_i . phi_j``; concatenation returns
    ``ReLU(w_f . [theta_i ; phi_j])`` with the theta half first.

    Example:
        >>> cfg = NonLocalConfig(2, spatial_dims=1, instantiation="dot_product", norm=None)
        >>> pairwise_function(np.ones((1, 1, 1)), 2 * np.ones((1, 3, 1)), {}, cfg)
        array([[[2., 2., 2.]]])
    """
    if config.instantiation == "concatenation":
        w_f = weights["concat.weight"]
        half = w_f.shape[0] // 2
        a = theta @ w_f[:half]  # (B, N): the theta half of w_f . [theta_i ; phi_j]
        b = phi @ w_f[half:]  # (B, N')
        return np.maximum(a[:, :, None] + b[:, None, :], 0.0)
    dots = theta @ np.swapaxes(phi, 1, 2)
    if config.is_softmax:
        return config.scale * dots
    return dots


def normalise(pairwise: np.ndarray, config: NonLocalConfig, mask: np.ndarray | None):
    """a = f / C(x): softmax over keys, or division by the number of (valid) keys N'.

    `mask` is (B, N') boolean, True = valid. A query with no valid key gets an all-zero
    row, so y_i = 0. The softmax subtracts the row maximum before exponentiating.

    Example:
        >>> cfg = NonLocalConfig(2, spatial_dims=1)
        >>> normalise(np.zeros((1, 1, 4)), cfg, None)
        array([[[0.25, 0.25, 0.25, 0.25]]])
    """
    batch, _, n_keys = pairwise.shape
    valid = np.ones((batch, n_keys), dtype=bool) if mask is None else mask
    valid = valid[:, None, :]
    if config.is_softmax:
        # A row with no valid key is told by the mask, never by its values: NaN and infinite
        # logits must propagate by IEEE arithmetic (spec IO-4), not read as "no key".
        has_key = valid.any(axis=-1, keepdims=True)
        logits = np.where(valid, pairwise, -np.inf)
        row_max = np.where(has_key, logits.max(axis=-1, keepdims=True), 0.0)
        e = np.where(valid, np.exp(logits - row_max), 0.0)
        total = e.sum(axis=-1, keepdims=True)
        return np.divide(e, total, out=np.zeros_like(e), where=has_key)
    count = valid.sum(axis=-1, keepdims=True).astype(np.float64)  # N' (valid keys only)
    f = np.where(valid, pairwise, 0.0)
    return np.divide(f, count, out=np.zeros_like(f), where=count > 0)


# Steps 5-6: aggregation and output transform ---------------------------------------------


def aggregate(attention: np.ndarray, g: np.ndarray) -> np.ndarray:
    """y_i = sum_j a_ij g_j: (B, N, N') x (B, N', C') -> (B, N, C').

    Example:
        >>> aggregate(np.full((1, 1, 2), 0.5), np.array([[[2.0], [4.0]]]))
        array([[[3.]]])
    """
    return attention @ g


def batch_norm(u: np.ndarray, weights: Mapping, config: NonLocalConfig, training: bool):
    """BN over (B, N, C): batch statistics (biased variance) in training, running ones otherwise.

    Example:
        >>> cfg = NonLocalConfig(1, spatial_dims=1)
        >>> w = {"norm.gamma": np.ones(1), "norm.beta": np.zeros(1),
        ...      "norm.running_mean": np.zeros(1), "norm.running_var": np.ones(1)}
        >>> batch_norm(np.array([[[1.0], [3.0]]]), w, cfg, training=True).round(4).ravel()
        array([-1.,  1.])
    """
    if training:
        mean = u.mean(axis=(0, 1))
        var = u.var(axis=(0, 1))  # biased: divides by B * N
    else:
        mean, var = weights["norm.running_mean"], weights["norm.running_var"]
    scale = weights["norm.gamma"] / np.sqrt(var + config.norm_eps)
    return (u - mean) * scale + weights["norm.beta"]


def output_transform(y, x_flat, weights: Mapping, config: NonLocalConfig, training: bool):
    """z = BN(W_z y + b_z) + x: back to C channels, optional norm, optional residual.

    Example:
        >>> cfg = NonLocalConfig(1, spatial_dims=1, norm=None, inter_channels=1)
        >>> w = {"out.weight": np.full((1, 1), 2.0), "out.bias": np.ones(1)}
        >>> output_transform(np.ones((1, 1, 1)), np.ones((1, 1, 1)), w, cfg, False)
        array([[[4.]]])
    """
    u = y @ weights["out.weight"].T + weights["out.bias"]
    if config.norm == "batch":
        u = batch_norm(u, weights, config, training)
    return u + x_flat if config.residual else u


# The whole block -------------------------------------------------------------------------


def _as_float64(value, name: str) -> np.ndarray:
    array = np.asarray(value)
    if not is_real_dtype(array.dtype):
        raise InputError(f"{name} has dtype {array.dtype}: expected a real (float or int) array")
    return array.astype(np.float64)


def flat_key_mask(key_mask, batch: int, num_keys: int) -> np.ndarray:
    """A key mask of shape (B, *S') or (B, N') as a (B, N') boolean array.

    Example:
        >>> flat_key_mask(np.ones((2, 2, 3), dtype=bool), 2, 6).shape
        (2, 6)
    """
    mask = np.asarray(key_mask)
    if mask.dtype != np.bool_:
        raise InputError(f"key_mask has dtype {mask.dtype}: expected bool (True = valid key)")
    return mask.reshape(batch, num_keys)


def prepare_weights(weights: Mapping, config: NonLocalConfig) -> dict[str, np.ndarray]:
    """Check `weights` against `config` and return float64 copies.

    Example:
        >>> from nonlocal_core import init_weights
        >>> cfg = NonLocalConfig(2, spatial_dims=1)
        >>> prepare_weights(init_weights(cfg), cfg)["out.bias"].dtype
        dtype('float64')
    """
    check_weights(weights, config)
    return {name: _as_float64(value, f"weights[{name!r}]") for name, value in weights.items()}


def prepare_inputs(x, config: NonLocalConfig, context=None, key_mask=None):
    """Check the config and the inputs' dtypes and shapes; return float64 ``x`` and ``context``
    and the key mask as (B, N') booleans (``None`` stay ``None``).

    Example:
        >>> cfg = NonLocalConfig(2, spatial_dims=1, subsample=True)
        >>> x, ctx, mask = prepare_inputs(np.ones((1, 2, 4), np.float32), cfg,
        ...                               key_mask=np.ones((1, 2), bool))
        >>> x.dtype, ctx, mask.shape
        (dtype('float64'), None, (1, 2))
    """
    require_config(config)
    x = _as_float64(x, "x")
    context = None if context is None else _as_float64(context, "context")
    shapes = check_shapes(
        config,
        x.shape,
        None if context is None else context.shape,
        None if key_mask is None else np.shape(key_mask),
    )
    mask = None if key_mask is None else flat_key_mask(key_mask, shapes.batch, shapes.num_keys)
    return x, context, mask


def nonlocal_forward(
    x,
    weights: Mapping,
    config: NonLocalConfig,
    *,
    context=None,
    key_mask=None,
    training: bool = False,
    return_attention: bool = False,
):
    """The non-local block's output z (and the attention matrix f / C when asked), in float64.

    Args:
        x: the input, ``(B, C, *S)`` or ``(B, *S, C)`` per ``config.data_format``.
        weights: canonical weights (see `weight_shapes`), any real dtype.
        config: the block's parameters.
        context: x^, the features keys and values read; defaults to x.
        key_mask: booleans over the key grid after subsampling, True = valid.
        training: BN uses batch statistics instead of the running ones.
        return_attention: also return the (B, N, N') matrix a_ij.

    Example:
        >>> from nonlocal_core import NonLocalConfig, init_weights
        >>> cfg = NonLocalConfig(4, spatial_dims=2)
        >>> x = np.random.default_rng(0).normal(size=(2, 4, 3, 5))
        >>> z, a = nonlocal_forward(x, init_weights(cfg), cfg, return_attention=True)
        >>> bool(np.array_equal(z, x)), a.shape  # a new block is the identity
        (True, (2, 15, 15))
    """
    training = require_flag(training, "training")
    return_attention = require_flag(return_attention, "return_attention")
    x, context, mask = prepare_inputs(x, config, context, key_mask)
    w = prepare_weights(weights, config)

    x_grid = to_grid(x, config)
    ctx_grid = x_grid if context is None else to_grid(context, config)
    theta = queries(x_grid, w, config)
    phi, g = keys_and_values(ctx_grid, w, config)
    attention = normalise(pairwise_function(theta, phi, w, config), config, mask)
    y = aggregate(attention, g)
    z_flat = output_transform(y, to_positions(x, config), w, config, training)
    z = from_positions(z_flat, x.shape, config)
    return (z, attention) if return_attention else z
