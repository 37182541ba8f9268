"""The analytic backward of the reference block, and the rounding bound on gradients.

`reference_gradients` returns the gradients of ``sum(z * cotangent)`` with respect to x, the
context and every trainable canonical weight, in float64. It is checked against central
finite differences of ``nonlocal_forward`` in ``tests/conformance_meta``.

The same code, run on magnitudes (|t| for every forward intermediate and |cotangent|, sums in
place of differences), bounds each gradient term: `gradient_bounds` turns that into the
tolerance of spec/conformance.md ("Gradients").

Example:
    >>> import numpy as np
    >>> from nonlocal_core import NonLocalConfig, random_weights
    >>> cfg = NonLocalConfig(4, spatial_dims=1, norm=None)
    >>> x = np.random.default_rng(0).normal(size=(1, 4, 3))
    >>> grads = reference_gradients(x, random_weights(cfg), cfg, np.ones_like(x))
    >>> sorted(grads)[:3], grads["x"].shape
    (['g.bias', 'g.weight', 'out.bias'], (1, 4, 3))
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from nonlocal_core import NonLocalConfig
from nonlocal_core.reference import to_positions

from .dtypes import Precision
from .trace import (
    SAFETY,
    Embedding,
    Trace,
    pool_windows,
    scaled,
    trace_forward,
    unpool_windows,
)

_EXACT, _MAGNITUDE, _PERTURBED = "exact", "magnitude", "perturbed"
NOT_TRAINABLE = ("norm.running_mean", "norm.running_var")


def _sum_rows(t: np.ndarray) -> np.ndarray:
    return t.reshape(-1, t.shape[-1]).sum(axis=0)


def _outer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # sum over every leading position of a_p^T b_p: a weight gradient (out, in).
    return a.reshape(-1, a.shape[-1]).T @ b.reshape(-1, b.shape[-1])


class _Backward:
    """One backward pass over a `Trace`, signed (exact) or on magnitudes."""

    def __init__(self, trace: Trace, mode: str):
        self.t, self.mode = trace, mode

    def val(self, value: np.ndarray, err: np.ndarray | None = None) -> np.ndarray:
        if self.mode == _EXACT:
            return value
        if self.mode == _PERTURBED and err is not None:
            return np.abs(value) + err
        return np.abs(value)

    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a - b if self.mode == _EXACT else a + b

    def route(self, upstream: np.ndarray, source: np.ndarray, err: np.ndarray | None, window):
        """Max-pool backward: send each window's gradient to its maximum.

        On the perturbed pass, a window whose runner-up is within rounding of its maximum
        may route to either: every such candidate receives the gradient.
        """
        if window is None:
            return upstream.reshape(source.shape)
        windows = pool_windows(source, window)
        if self.mode == _PERTURBED:
            # Every entry within rounding of the maximum (exact ties included: low-precision
            # inputs repeat values) may receive the gradient. Weighting ambiguous windows
            # twice makes M1 - M0 cover both the reference's route and the other one.
            err_w = 0.0 if err is None else pool_windows(err, window).max(axis=-1, keepdims=True)
            hit = windows >= windows.max(axis=-1, keepdims=True) - 2 * err_w
            weight = np.where(hit.sum(axis=-1, keepdims=True) > 1, 2.0, 1.0)
            return unpool_windows(hit * weight * upstream[..., None], source.shape, window)
        hit = np.zeros(windows.shape, dtype=bool)
        np.put_along_axis(hit, windows.argmax(axis=-1)[..., None], True, axis=-1)
        return unpool_windows(hit * upstream[..., None], source.shape, window)

    def run(self, cotangent_flat: np.ndarray) -> dict[str, np.ndarray]:
        t, cfg, w = self.t, self.t.config, self.t.weights
        grads: dict[str, np.ndarray] = {}
        dz = self.val(cotangent_flat)
        dx = dz.copy() if cfg.residual else np.zeros_like(dz)
        du = self.norm_backward(dz, grads)
        y = self.val(t.y, t.err_y)
        grads["out.weight"] = _outer(du, y)
        grads["out.bias"] = _sum_rows(du)
        dy = du @ self.val(w["out.weight"])
        g = self.val(t.g.value, t.g.err)
        a = self.val(t.attention, t.err_attention)
        d_att = dy @ np.swapaxes(g, 1, 2)
        dg = np.swapaxes(a, 1, 2) @ dy
        d_theta, d_phi = self.pairwise_backward(d_att, a, grads)
        if cfg.instantiation == "gaussian":
            dx += d_theta
        else:
            grads["theta.weight"] = _outer(d_theta, self.val(t.x_flat))
            grads["theta.bias"] = _sum_rows(d_theta)
            dx += d_theta @ self.val(w["theta.weight"])
        d_ctx = self.embedding_backward(t.phi, d_phi, grads)
        d_ctx += self.embedding_backward(t.g, dg, grads)
        grads["x"] = dx
        grads["context"] = d_ctx.reshape(d_ctx.shape[0], -1, d_ctx.shape[-1])
        return grads

    def norm_backward(self, dv: np.ndarray, grads: dict) -> np.ndarray:
        t, cfg, w = self.t, self.t.config, self.t.weights
        if cfg.norm != "batch":
            return dv
        gamma = self.val(w["norm.gamma"])
        grads["norm.beta"] = _sum_rows(dv)
        if not t.training:
            inv_std = 1.0 / np.sqrt(w["norm.running_var"] + cfg.norm_eps)
            centred = self.sub(self.val(t.u, t.err_u), self.val(w["norm.running_mean"]))
            grads["norm.gamma"] = _sum_rows(dv * centred * inv_std)
            return dv * gamma * inv_std
        std = t.bn_std
        xhat = (t.u - t.bn_mean) / std
        if self.mode == _PERTURBED:
            # A smaller std enlarges every term: take its low end.
            std = np.maximum(std - t.err_bn_std, std / 2)
            xhat = (np.abs(t.u - t.bn_mean) + t.err_u + t.err_u.mean(axis=(0, 1))) / std
        elif self.mode == _MAGNITUDE:
            xhat = np.abs(xhat)
        grads["norm.gamma"] = _sum_rows(dv * xhat)
        d_xhat = dv * gamma
        mean_d = d_xhat.mean(axis=(0, 1))
        mean_dx = (d_xhat * xhat).mean(axis=(0, 1))
        return self.sub(self.sub(d_xhat, mean_d), xhat * mean_dx) / std

    def pairwise_backward(self, d_att: np.ndarray, a: np.ndarray, grads: dict):
        t, cfg, w = self.t, self.t.config, self.t.weights
        valid = t.mask[:, None, :]
        theta = self.val(t.theta, t.err_theta)
        phi = self.val(t.phi.value, t.phi.err)
        if cfg.is_softmax:
            row = (a * d_att).sum(axis=-1, keepdims=True)
            d_dots = cfg.scale * a * self.sub(d_att, row)
        else:
            d_f = np.divide(
                np.where(valid, d_att, 0.0), t.count, out=np.zeros_like(d_att), where=t.count > 0
            )
            if cfg.instantiation == "concatenation":
                # ReLU'(pre); within rounding of 0 it may be either, so the perturbed pass
                # keeps those entries.
                if self.mode == _PERTURBED:
                    # Twice the term where the sign is ambiguous: M1 - M0 then covers an
                    # implementation that switches the entry off as well as on.
                    ambiguous = np.abs(t.pre) <= t.err_pre  # ReLU'(0) may be 0 or 1, too
                    active = ((t.pre > 0) | ambiguous) * np.where(ambiguous, 2.0, 1.0)
                else:
                    active = t.pre > 0
                d_pre = d_f * active
                rows, cols = d_pre.sum(axis=2), d_pre.sum(axis=1)  # (B, N), (B, N')
                w_f = self.val(w["concat.weight"])
                half = w_f.shape[0] // 2
                grads["concat.weight"] = np.concatenate(
                    [_sum_rows(rows[..., None] * theta), _sum_rows(cols[..., None] * phi)]
                )
                return rows[..., None] * w_f[:half], cols[..., None] * w_f[half:]
            d_dots = d_f
        return d_dots @ phi, np.swapaxes(d_dots, 1, 2) @ theta

    def embedding_backward(self, emb: Embedding, d_value: np.ndarray, grads: dict):
        t, cfg = self.t, self.t.config
        window = cfg.subsample
        ctx = t.ctx_grid
        out_grid = (ctx.shape[0], *cfg.pooled_extent(ctx.shape[1:-1]), d_value.shape[-1])
        d_value = d_value.reshape(out_grid)
        if emb.weight is None:  # Gaussian phi = pool(x^)
            return self.route(d_value, ctx, None, window)
        w = self.val(t.weights[f"{emb.weight}.weight"])
        if emb.pooled_from is ctx:  # pool, then project
            grads[f"{emb.weight}.weight"] = _outer(d_value, self.val(emb.projected_from))
            grads[f"{emb.weight}.bias"] = _sum_rows(d_value)
            return self.route(d_value @ w, ctx, None, window)
        d_proj = self.route(d_value, emb.pooled_from, emb.pooled_err, window)
        grads[f"{emb.weight}.weight"] = _outer(d_proj, self.val(ctx))
        grads[f"{emb.weight}.bias"] = _sum_rows(d_proj)
        return d_proj @ w


def _finish(grads: dict, trace: Trace, has_context: bool) -> dict[str, np.ndarray]:
    cfg = trace.config
    out = {}
    x_grad = grads.pop("x")
    ctx_grad = grads.pop("context")
    if has_context:
        out["context"] = _to_layout(ctx_grad, trace.ctx_grid.shape, cfg)
    else:
        x_grad = x_grad + ctx_grad
    out["x"] = _to_layout(x_grad, _grid_shape(trace), cfg)
    out.update(grads)
    return out


def _grid_shape(trace: Trace) -> tuple[int, ...]:
    s = trace.x_shape
    if trace.config.data_format == "channels_first":
        return (s[0], *s[2:], s[1])
    return s


def _to_layout(flat: np.ndarray, grid_shape: tuple[int, ...], config: NonLocalConfig):
    grid = flat.reshape(grid_shape)
    return np.moveaxis(grid, -1, 1) if config.data_format == "channels_first" else grid


def _flat_cotangent(cotangent: np.ndarray, config: NonLocalConfig) -> np.ndarray:
    # dL/dz in the (B, N, C) order of the reference's positions.
    return to_positions(np.asarray(cotangent, dtype=np.float64), config)


def reference_gradients(
    x: np.ndarray,
    weights: Mapping[str, np.ndarray],
    config: NonLocalConfig,
    cotangent: np.ndarray,
    *,
    context: np.ndarray | None = None,
    key_mask: np.ndarray | None = None,
    training: bool = False,
) -> dict[str, np.ndarray]:
    """Float64 gradients of ``sum(z * cotangent)``: ``"x"``, ``"context"`` when given, and
    every canonical weight except the BN running statistics.

    See the module docstring for an example.
    """
    trace = trace_forward(
        x,
        weights,
        config,
        context=context,
        key_mask=key_mask,
        training=training,
        precision=Precision.default("float64"),
    )
    grads = _Backward(trace, _EXACT).run(_flat_cotangent(cotangent, config))
    return _finish(grads, trace, context is not None)


def reduction_depth(trace: Trace) -> int:
    """K: the summed lengths of the reductions any gradient entry passes through.

    Forward: projections (C + 1, C_ctx + 1), the d-term dots, the N'-term aggregation, W_z
    (C' + 1), BN statistics (B N) in training. Backward: the same lengths again, plus the
    sums over positions that make weight gradients (B N_ctx) and over queries (N).
    """
    cfg = trace.config
    b, n, c = trace.x_flat.shape
    n_ctx = int(np.prod(trace.ctx_grid.shape[1:-1]))
    n_keys = trace.mask.shape[1]
    forward = (c + 1) + (cfg.context_channels + 1) + cfg.embed_dim + n_keys
    forward += (cfg.inter_channels + 1) + (b * n if trace.training else 0)
    backward = forward + b * max(n, n_ctx) + n
    return forward + backward


def gradient_bounds(
    x: np.ndarray,
    weights: Mapping[str, np.ndarray],
    config: NonLocalConfig,
    cotangent: np.ndarray,
    *,
    context: np.ndarray | None = None,
    key_mask: np.ndarray | None = None,
    training: bool = False,
    precision: Precision,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(reference gradients, elementwise bounds on |implementation - reference|).

    bound = SAFETY * (rho * M1 + (M1 - M0)) + u_s |G| where M0 is the backward on magnitudes
    of the exact forward intermediates, M1 the same on |t| + E_t (forward errors, ambiguous
    ReLU / max-pool routes included), rho = gamma_K(accumulation) + 8 ulps of storage with K
    from `reduction_depth`, and u_s |G| the final rounding of the returned gradient.

    Example:
        >>> import numpy as np
        >>> from nonlocal_core import NonLocalConfig, random_weights
        >>> cfg = NonLocalConfig(4, spatial_dims=1)
        >>> x = np.random.default_rng(0).normal(size=(2, 4, 3))
        >>> g, b = gradient_bounds(x, random_weights(cfg), cfg, x,
        ...                        precision=Precision.default("float32"))
        >>> bool((b["x"] < 1e-3).all() and (b["x"] > 0).all())
        True
    """
    kwargs = dict(context=context, key_mask=key_mask, training=training)
    exact = trace_forward(x, weights, config, precision=precision, **kwargs)
    ref64 = trace_forward(x, weights, config, precision=Precision.default("float64"), **kwargs)
    dz = _flat_cotangent(cotangent, config)
    has_context = context is not None
    grads = _finish(_Backward(ref64, _EXACT).run(dz), ref64, has_context)
    m0 = _finish(_Backward(exact, _MAGNITUDE).run(dz), exact, has_context)
    m1 = _finish(_Backward(exact, _PERTURBED).run(dz), exact, has_context)
    us = precision.u_storage
    rho = precision.gamma(reduction_depth(exact)) + 8 * us
    with np.errstate(invalid="ignore"):
        bounds = {
            name: SAFETY * (scaled(rho, m1[name]) + (m1[name] - m0[name]))
            + us * np.abs(grads[name])
            for name in grads
        }
    # In bfloat16 and float16, large inputs make forward bounds infinite, and the magnitude
    # backward then meets inf - inf or inf * 0: no bound there, only finiteness (a NaN
    # bound would fail every value).
    return grads, {name: np.nan_to_num(b, nan=np.inf, posinf=np.inf) for name, b in bounds.items()}
