"""The reference forward pass with every intermediate kept, and its rounding-error bounds.

`trace_forward` recomputes the block exactly as ``nonlocal_core.reference`` does (float64,
same steps) but keeps what the tolerance model and the analytic backward need: each
intermediate t, and E_t, a first-order bound on how far an implementation that rounds as
`Precision` says may legitimately be from t. The rules (spec/conformance.md, "Tolerance
model") are those of Higham's *Accuracy and Stability of Numerical Algorithms*: a k-term
dot product with operands a, b is off by at most gamma_k |a|.|b| plus the propagated errors
of its operands; every stored result adds one rounding u_s |t|.

Example:
    >>> import numpy as np
    >>> from nonlocal_core import NonLocalConfig, random_weights, nonlocal_forward
    >>> from nonlocal_conformance.dtypes import Precision
    >>> cfg = NonLocalConfig(4, spatial_dims=1)
    >>> x = np.random.default_rng(0).normal(size=(2, 4, 6))
    >>> t = trace_forward(x, random_weights(cfg), cfg, precision=Precision.default("float32"))
    >>> bool(np.allclose(t.z, nonlocal_forward(x, random_weights(cfg), cfg), rtol=0, atol=0))
    True
    >>> bool((t.err_z > 0).all() and (t.err_z < 1e-4).all())
    True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from nonlocal_core import NonLocalConfig, check_shapes
from nonlocal_core.reference import flat_key_mask, prepare_weights, to_grid

from .dtypes import Precision

# exp, sqrt and division are taken to be within 2 ulp (glibc, CUDA's non-fast-math exp/sqrt
# and XLA's are within 1-2 ulp); each such operation counts as TRANSCENDENTAL_ULPS roundings.
TRANSCENDENTAL_ULPS = 2

# Tolerances are SAFETY * E. E bounds the implementation's error to first order; the second E
# covers the float64 reference's own rounding (the same model at u = 2^-53 <= u_s, so at most
# E) and the neglected second-order terms (products of two first-order relative errors).
SAFETY = 2.0


def pool_windows(grid: np.ndarray, window: tuple[int, ...]) -> np.ndarray:
    """(B, *S, C) -> (B, *K, C, W): the cropped pooling windows, each flattened last.

    Example:
        >>> pool_windows(np.arange(5.0).reshape(1, 5, 1), (2,))[0, :, 0].tolist()
        [[0.0, 1.0], [2.0, 3.0]]
    """
    batch, *extent, channels = grid.shape
    kept = [e // w for e, w in zip(extent, window)]
    cropped = grid[(slice(None), *(slice(0, k * w) for k, w in zip(kept, window)), slice(None))]
    split = [batch]
    for k, w in zip(kept, window):
        split += [k, w]
    blocks = cropped.reshape(*split, channels)
    nd = len(window)
    order = [0, *(1 + 2 * a for a in range(nd)), 1 + 2 * nd, *(2 + 2 * a for a in range(nd))]
    return blocks.transpose(order).reshape(batch, *kept, channels, -1)


def unpool_windows(windows: np.ndarray, grid_shape: tuple[int, ...], window) -> np.ndarray:
    """Inverse of `pool_windows`, with zeros on the cropped remainder.

    Example:
        >>> w = pool_windows(np.arange(5.0).reshape(1, 5, 1), (2,))
        >>> unpool_windows(w, (1, 5, 1), (2,)).ravel().tolist()
        [0.0, 1.0, 2.0, 3.0, 0.0]
    """
    batch, *extent, channels = grid_shape
    kept = [e // w for e, w in zip(extent, window)]
    nd = len(window)
    blocks = windows.reshape(batch, *kept, channels, *window)
    order = [0]
    for a in range(nd):
        order += [1 + a, nd + 2 + a]
    order.append(nd + 1)
    cropped = blocks.transpose(order).reshape(
        batch, *(k * w for k, w in zip(kept, window)), channels
    )
    out = np.zeros(grid_shape, dtype=windows.dtype)
    out[(slice(None), *(slice(0, k * w) for k, w in zip(kept, window)), slice(None))] = cropped
    return out


@dataclasses.dataclass
class Embedding:
    """One of phi or g: a projection and a max pool in the configured order.

    ``pooled_from`` is the tensor the max pool read (x^ itself for ``before_projection`` and
    Gaussian phi, the projection for ``after_projection``); ``projected_from`` is what the
    projection read (None for Gaussian phi). ``value``/``err`` are flat (B, N', width).
    """

    value: np.ndarray
    err: np.ndarray
    pooled_from: np.ndarray | None
    pooled_err: np.ndarray | None
    projected_from: np.ndarray | None
    projected_from_err: np.ndarray | None
    weight: str | None


@dataclasses.dataclass
class Trace:
    """Every intermediate of one forward pass (flat (B, N, .) layout) with its error bound."""

    config: NonLocalConfig
    training: bool
    x_shape: tuple[int, ...]
    x_flat: np.ndarray
    ctx_grid: np.ndarray
    mask: np.ndarray  # (B, N') bool, all True without a key mask
    theta: np.ndarray
    err_theta: np.ndarray
    phi: Embedding
    g: Embedding
    pre: np.ndarray  # the logits (softmax), dots (dot product) or ReLU inputs (concatenation)
    err_pre: np.ndarray
    alpha: np.ndarray | None  # concatenation: w_theta . theta_i, (B, N)
    beta: np.ndarray | None  # concatenation: w_phi . phi_j, (B, N')
    count: np.ndarray  # (B, 1, 1) valid keys per batch element
    attention: np.ndarray
    err_attention: np.ndarray
    y: np.ndarray
    err_y: np.ndarray
    u: np.ndarray  # W_z y + b_z
    err_u: np.ndarray
    bn_mean: np.ndarray | None
    bn_std: np.ndarray | None  # sqrt(var + eps)
    err_bn_std: np.ndarray | None
    z_flat: np.ndarray
    err_z_flat: np.ndarray
    weights: dict[str, np.ndarray]
    precision: Precision

    @property
    def z(self) -> np.ndarray:
        """z in the layout of x."""
        return _from_flat(self.z_flat, self.x_shape, self.config)

    @property
    def err_z(self) -> np.ndarray:
        """The bound on |z_impl - z| in the layout of x."""
        return _from_flat(self.err_z_flat, self.x_shape, self.config)


def _flat(t: np.ndarray) -> np.ndarray:
    return t.reshape(t.shape[0], -1, t.shape[-1])


def _from_flat(flat: np.ndarray, shape: tuple[int, ...], config: NonLocalConfig) -> np.ndarray:
    if config.data_format == "channels_first":
        return np.moveaxis(flat.reshape(shape[0], *shape[2:], shape[1]), -1, 1)
    return flat.reshape(shape)


def _max_pool(t: np.ndarray, window) -> np.ndarray:
    return t if window is None else pool_windows(t, window).max(axis=-1)


def scaled(coefficient: float, magnitude: np.ndarray) -> np.ndarray:
    """coefficient * magnitude, with 0 (not NaN) where the magnitude is 0 and gamma is inf.

    Example:
        >>> scaled(float("inf"), np.array([0.0, 1.0])).tolist()
        [0.0, inf]
    """
    with np.errstate(invalid="ignore"):
        return np.where(magnitude > 0, coefficient * magnitude, 0.0)


def _matmul_err(p: Precision, k: int, magnitude: np.ndarray) -> np.ndarray:
    # k products summed (gamma_k), operands possibly rounded to a coarser matmul format
    # (2 u_in: one rounding per operand), the result stored (u_s).
    return scaled(p.gamma(k) + 2 * p.u_matmul_inputs + p.u_storage, magnitude)


def _project(p: Precision, grid, err, w: np.ndarray, b: np.ndarray):
    value = grid @ w.T + b
    # The bias is one more term of the sum: k = fan-in + 1.
    err_out = _matmul_err(p, w.shape[1] + 1, np.abs(grid) @ np.abs(w).T + np.abs(b))
    if err is not None:
        err_out = err_out + err @ np.abs(w).T
    return value, err_out


def _embed(name: str | None, ctx_grid, weights, config, p: Precision) -> Embedding:
    window = config.subsample
    if name is None:  # Gaussian phi: the pooled raw context, exact.
        value = _max_pool(ctx_grid, window)
        return Embedding(
            _flat(value), np.zeros_like(_flat(value)), ctx_grid, None, None, None, None
        )
    w, b = weights[f"{name}.weight"], weights[f"{name}.bias"]
    if config.pool_position == "before_projection" or window is None:
        pooled = _max_pool(ctx_grid, window)
        value, err = _project(p, pooled, None, w, b)
        return Embedding(_flat(value), _flat(err), ctx_grid, None, pooled, None, name)
    projected, err_projected = _project(p, ctx_grid, None, w, b)
    value = _max_pool(projected, window)
    # max is 1-Lipschitz in the max norm: |max(a + e) - max(a)| <= max |e| over the window.
    err = _max_pool(err_projected, window)
    return Embedding(_flat(value), _flat(err), projected, err_projected, ctx_grid, None, name)


def batch_norm_step(
    p: Precision,
    u: np.ndarray,
    err_u: np.ndarray,
    weights: Mapping[str, np.ndarray],
    eps: float,
    training: bool,
):
    """BN of u (channels last; statistics over every other axis) and its error bound.

    Returns ``(v, err_v, mean, std, err_std)``; the last three (the batch statistics, which
    the analytic backward reuses) are None in inference, which uses the running ones.
    `err_u` bounds how far the implementation's u may be from `u`.

    Example:
        >>> u = np.array([[1.0], [3.0]])
        >>> w = {"norm.gamma": np.ones(1), "norm.beta": np.zeros(1)}
        >>> v, err_v, mean, std, _ = batch_norm_step(
        ...     Precision.default("float32"), u, np.zeros_like(u), w, 1e-5, True)
        >>> v.round(4).ravel().tolist(), bool((err_v < 1e-5).all())
        ([-1.0, 1.0], True)
    """
    us = p.u_storage
    ulps = TRANSCENDENTAL_ULPS * us
    gamma, beta = weights["norm.gamma"], weights["norm.beta"]
    axes = tuple(range(u.ndim - 1))
    if not training:
        mean, var = weights["norm.running_mean"], weights["norm.running_var"]
        k = gamma / np.sqrt(var + eps)
        v = (u - mean) * k + beta
        # k costs an add, a sqrt and a division; implementations fold the affine map in
        # different orders (u k + (beta - mean k) or (u - mean) k + beta): bounding
        # every term's magnitude covers both.
        terms = np.abs(k) * (np.abs(u) + np.abs(mean)) + np.abs(beta)
        return v, np.abs(k) * err_u + (3 * us + 2 * ulps) * terms, None, None, None
    m = math.prod(u.shape[:-1])
    mean = u.mean(axis=axes)
    centred = u - mean
    var = (centred**2).mean(axis=axes)
    std = np.sqrt(var + eps)
    err_mean = err_u.mean(axis=axes) + scaled(p.gamma(m + 1), np.abs(u).mean(axis=axes))
    # Covers two-pass and one-pass (E[u^2] - E[u]^2) variance: the latter cancels,
    # so its rounding is relative to E[u^2] + mean^2, not to the variance.
    err_var = 2 * (np.abs(centred) * (err_u + err_mean)).mean(axis=axes)
    err_var += scaled(p.gamma(m + 3), (u**2).mean(axis=axes) + mean**2)
    err_std = err_var / (2 * std) + (ulps + us) * std
    r = centred / std
    err_r = (err_u + err_mean) / std + np.abs(r) * err_std / std
    err_r += (us + ulps) * np.abs(r)
    v = r * gamma + beta
    err_v = np.abs(gamma) * err_r + 2 * us * (np.abs(r * gamma) + np.abs(beta))
    return v, err_v, mean, std, err_std


def trace_forward(
    x: np.ndarray,
    weights: Mapping[str, np.ndarray],
    config: NonLocalConfig,
    *,
    context: np.ndarray | None = None,
    key_mask: np.ndarray | None = None,
    training: bool = False,
    precision: Precision,
) -> Trace:
    """The float64 forward pass of `nonlocal_core.reference`, keeping intermediates and bounds.

    See the module docstring for an example.
    """
    p = precision
    us = p.u_storage
    ulps = TRANSCENDENTAL_ULPS * us
    x = np.asarray(x, dtype=np.float64)
    context = None if context is None else np.asarray(context, dtype=np.float64)
    shapes = (
        check_shapes(
            config, x.shape, None if context is None else context.shape, np.shape(key_mask)
        )
        if key_mask is not None
        else check_shapes(config, x.shape, None if context is None else context.shape)
    )
    w = prepare_weights(weights, config)
    batch, n_keys = shapes.batch, shapes.num_keys
    mask = (
        np.ones((batch, n_keys), dtype=bool)
        if key_mask is None
        else flat_key_mask(key_mask, batch, n_keys)
    )
    x_grid = to_grid(x, config)
    ctx_grid = x_grid if context is None else to_grid(context, config)
    x_flat = _flat(x_grid)

    if config.instantiation == "gaussian":
        theta, err_theta = x_flat, np.zeros_like(x_flat)
    else:
        theta, err_theta = _project(p, x_flat, None, w["theta.weight"], w["theta.bias"])
    phi = _embed(None if config.instantiation == "gaussian" else "phi", ctx_grid, w, config, p)
    g = _embed("g", ctx_grid, w, config, p)

    valid = mask[:, None, :]
    count = valid.sum(axis=-1, keepdims=True).astype(np.float64)
    alpha = beta = None
    if config.instantiation == "concatenation":
        w_f = w["concat.weight"]
        half = w_f.shape[0] // 2
        alpha, beta = theta @ w_f[:half], phi.value @ w_f[half:]
        err_alpha = _matmul_err(p, half, np.abs(theta) @ np.abs(w_f[:half]))
        err_alpha += err_theta @ np.abs(w_f[:half])
        err_beta = _matmul_err(p, half, np.abs(phi.value) @ np.abs(w_f[half:]))
        err_beta += phi.err @ np.abs(w_f[half:])
        pre = alpha[:, :, None] + beta[:, None, :]
        err_pre = err_alpha[:, :, None] + err_beta[:, None, :] + us * np.abs(pre)
    else:
        d = theta.shape[-1]
        dots = theta @ np.swapaxes(phi.value, 1, 2)
        err_dots = _matmul_err(p, d, np.abs(theta) @ np.abs(np.swapaxes(phi.value, 1, 2)))
        err_dots += err_theta @ np.abs(np.swapaxes(phi.value, 1, 2))
        err_dots += np.abs(theta) @ np.swapaxes(phi.err, 1, 2)
        if config.is_softmax:
            s = config.scale
            pre = s * dots
            # The scale itself is computed (1/sqrt(d): 2 ulps) and multiplied in (1 rounding).
            err_pre = s * err_dots + (ulps + us) * np.abs(pre)
        else:
            pre, err_pre = dots, err_dots

    if config.is_softmax:
        # As the reference: rows without a valid key are told by the mask, not by values.
        has_key = valid.any(axis=-1, keepdims=True)
        logits = np.where(valid, pre, -np.inf)
        row_max = np.where(has_key, logits.max(axis=-1, keepdims=True), 0.0)
        e = np.where(valid, np.exp(logits - row_max), 0.0)
        total = e.sum(axis=-1, keepdims=True)
        attention = np.divide(e, total, out=np.zeros_like(e), where=has_key)
        # softmax is shift-invariant, so logit errors |dl_j| <= eps give a relative error
        # <= exp(2 eps) - 1 in every a_ij; then per entry: the max subtraction (u_s), exp
        # (2 ulps), the N'-term sum of exps (gamma_N') and the division (2 ulps).
        worst = np.where(valid, err_pre, 0.0).max(axis=-1, keepdims=True)
        rel = np.expm1(2 * worst) + us + ulps + p.gamma(n_keys) + ulps
        # exp(l - max) may underflow (or be flushed) to 0: an absolute error <= tiny.
        err_attention = np.where(valid, scaled(rel, attention) + p.tiny, 0.0)
    else:
        relu = config.instantiation == "concatenation"
        f = np.maximum(pre, 0.0) if relu else pre
        # ReLU is 1-Lipschitz, and exactly 0 wherever pre + err < 0.
        err_f = np.where(pre + err_pre <= 0, 0.0, err_pre) if relu else err_pre
        f = np.where(valid, f, 0.0)
        attention = np.divide(f, count, out=np.zeros_like(f), where=count > 0)
        err_attention = np.divide(
            np.where(valid, err_f + ulps * np.abs(f), 0.0),
            count,
            out=np.zeros_like(f),
            where=count > 0,
        )

    # The magnitude of each aggregated term. For concatenation an implementation may
    # distribute ReLU(a_i + b_j) g_j = (a_i + b_j) g_j over the active keys (the exact sorted
    # O((N + N') log N') algorithm, spec NUM-2): its sums then run over |a_i| + |b_j|, not
    # |a_i + b_j|, and keys within rounding of the ReLU's kink may be counted either way.
    magnitude = np.abs(attention)
    if config.instantiation == "concatenation":
        may_be_active = valid & (pre + err_pre > 0)
        spread = np.abs(alpha)[:, :, None] + np.abs(beta)[:, None, :]
        magnitude = np.divide(
            np.where(may_be_active, spread, 0.0),
            count,
            out=np.zeros_like(spread),
            where=count > 0,
        )
    y = attention @ g.value
    err_y = _matmul_err(p, n_keys, magnitude @ np.abs(g.value))
    err_y += err_attention @ np.abs(g.value) + magnitude @ g.err
    u, err_u = _project(p, y, err_y, w["out.weight"], w["out.bias"])

    bn_mean = bn_std = err_bn_std = None
    if config.norm == "batch":
        v, err_v, bn_mean, bn_std, err_bn_std = batch_norm_step(
            p, u, err_u, w, config.norm_eps, training
        )
    else:
        v, err_v = u, err_u
    if config.residual:
        z_flat = v + x_flat
        err_z = err_v + us * np.abs(z_flat)
    else:
        z_flat, err_z = v, err_v
    # The result is returned in the storage dtype: one last rounding (or an underflow).
    err_z = err_z + us * np.abs(z_flat) + p.tiny
    return Trace(
        config=config,
        training=training,
        x_shape=x.shape,
        x_flat=x_flat,
        ctx_grid=ctx_grid,
        mask=mask,
        theta=theta,
        err_theta=err_theta,
        phi=phi,
        g=g,
        pre=pre,
        err_pre=err_pre,
        alpha=alpha,
        beta=beta,
        count=count,
        attention=attention,
        err_attention=err_attention + us * attention + p.tiny,
        y=y,
        err_y=err_y,
        u=u,
        err_u=err_u,
        bn_mean=bn_mean,
        bn_std=bn_std,
        err_bn_std=err_bn_std,
        z_flat=z_flat,
        err_z_flat=err_z,
        weights=w,
        precision=p,
    )
