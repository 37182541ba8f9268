"""The exact oracle: the non-local block in arbitrary precision, rounded once to float64.

`nonlocal_core.reference` computes in float64, and its matrix products go through BLAS,
whose summation order (and so the last bits of every result) depends on the CPU kernel it
picks. The golden vectors need expected values that are the same bytes on every machine, so
they come from here: the same function as `nonlocal_core.reference.nonlocal_forward` on the
same float64 inputs and weights, but every product, sum, exp, division and sqrt done in
`mpmath` at `PRECISION` bits (about 60 significant digits), with Python arithmetic only (NumPy
object arrays of mpf: no BLAS), and each output rounded once to the nearest float64.

Each mpf operation rounds at `PRECISION` bits (products and sums of float64 numbers are even
exact until the first exp, division or sqrt), so every output is within about 2^-190
(relative) of the exact value unless a later sum cancels by more than a hundred bits.
Rounding it to float64 then gives the exact result correctly rounded, unless that lies about
as close to a midpoint between two float64 numbers. tests/core/test_vectors.py checks both
on the vectors: 120 more bits change none of their values.

It needs ``mpmath`` (``pip install "nonlocal-block[vectors]"``), imported only when called:
``import nonlocal_core`` does not need it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .config import NonLocalConfig
from .reference import (
    from_positions,
    max_pool,
    prepare_inputs,
    prepare_weights,
    to_grid,
    to_positions,
)

# 200 bits: sums of at most a few hundred products of float64 numbers and a handful of
# exp/sqrt/divisions lose a few bits each, leaving far more than the 53 float64 keeps.
PRECISION = 200


def nearest_float64(values) -> np.ndarray:
    """mpf values (an array or scalar of them, or Python numbers) rounded to the nearest float64.

    Ties go to even, and results below 2^-1022 round directly to the right subnormal (mpmath's
    own ``float()`` rounds those twice).

    Example:
        >>> import mpmath
        >>> third = mpmath.mpf(1) / 3
        >>> bool(nearest_float64(third) == 1 / 3)
        True
        >>> ctx = mpmath.MPContext()
        >>> ctx.prec = 100
        >>> half = ctx.mpf(2) ** -1075  # half the smallest subnormal: a tie, to even (0)
        >>> above = half + ctx.mpf(2) ** -1130
        >>> nearest_float64(np.array([above, -above, half, 0])).tolist()
        [5e-324, -5e-324, 0.0, 0.0]
        >>> float(above)  # mpmath: 53 bits first (giving the tie), then ldexp
        0.0
    """

    def one(value) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        man, exp = value.man_exp  # |value| == man * 2**exp exactly
        man = -int(man) if value < 0 else int(man)
        # int -> float and int / int are correctly rounded in CPython, subnormals included.
        return float(man << exp) if exp >= 0 else man / (1 << -exp)

    array = np.asarray(values, dtype=object)
    return np.array([one(v) for v in array.ravel()], dtype=np.float64).reshape(array.shape)


def exact_forward(
    x,
    weights: Mapping,
    config: NonLocalConfig,
    *,
    context=None,
    key_mask=None,
    training: bool = False,
    return_attention: bool = False,
    precision: int = PRECISION,
):
    """z (and the attention matrix when asked) of `nonlocal_forward`, exact, as float64.

    Same arguments and semantics as `nonlocal_core.reference.nonlocal_forward` (its float64
    inputs, weights, ``config.scale`` and ``config.norm_eps`` are taken as exact values);
    `precision` is the working precision in bits.

    Example:
        >>> from nonlocal_core import NonLocalConfig, nonlocal_forward, random_weights
        >>> cfg = NonLocalConfig(4, spatial_dims=1, subsample=True)
        >>> x = np.random.default_rng(0).normal(size=(2, 4, 6))
        >>> w = random_weights(cfg, scale=1.0)
        >>> z, a = exact_forward(x, w, cfg, training=True, return_attention=True)
        >>> z.dtype, a.shape
        (dtype('float64'), (2, 6, 3))
        >>> float(abs(z - nonlocal_forward(x, w, cfg, training=True)).max()) < 1e-13
        True
    """
    import mpmath

    x, context, mask = prepare_inputs(x, config, context, key_mask)

    # A context of our own: the global mpmath.mp precision stays as the caller set it.
    ctx = mpmath.MPContext()
    ctx.prec = precision
    mp = np.frompyfunc(ctx.mpf, 1, 1)  # float64 -> mpf is exact
    exp, sqrt = np.frompyfunc(ctx.exp, 1, 1), np.frompyfunc(ctx.sqrt, 1, 1)
    w = {name: mp(value) for name, value in prepare_weights(weights, config).items()}
    window = config.subsample

    def flat(t):
        return t.reshape(t.shape[0], -1, t.shape[-1])

    def project(grid, name: str):
        # Object-array matmul: Python mpf products and sums, each rounded at `precision` bits.
        return grid @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    def embed(name: str):
        # Max pooling only selects values, so pooling float64 or mpf arrays is exact.
        if config.pool_position == "before_projection":
            return project(mp(max_pool(ctx_grid, window)), name)
        return max_pool(project(mp(ctx_grid), name), window)

    x_grid = to_grid(x, config)
    ctx_grid = x_grid if context is None else to_grid(context, config)
    if config.instantiation == "gaussian":
        theta = flat(mp(x_grid))
        phi = flat(mp(max_pool(ctx_grid, window)))
    else:
        theta = flat(project(mp(x_grid), "theta"))
        phi = flat(embed("phi"))
    g = flat(embed("g"))

    if config.instantiation == "concatenation":
        w_f = w["concat.weight"]
        half = w_f.shape[0] // 2
        pre = (theta @ w_f[:half])[:, :, None] + (phi @ w_f[half:])[:, None, :]
    else:
        pre = theta @ np.swapaxes(phi, 1, 2)
        if config.is_softmax:
            pre = pre * ctx.mpf(config.scale)

    batch, _, num_keys = pre.shape
    valid = np.ones((batch, num_keys), dtype=bool) if mask is None else mask
    attention = np.full(pre.shape, ctx.zero, dtype=object)
    for b in range(batch):
        keys = valid[b]
        if not keys.any():
            continue  # no valid key: an all-zero attention row, so y_i = 0
        f = pre[b][:, keys]
        if config.is_softmax:
            # No max subtraction needed: mpf exponents do not overflow, and exp(l - m) / sum
            # is the same number exactly.
            e = exp(f)
            attention[b][:, keys] = e / e.sum(axis=-1, keepdims=True)
        else:
            if config.instantiation == "concatenation":
                f = np.where(f > 0, f, ctx.zero)  # ReLU
            attention[b][:, keys] = f / int(keys.sum())  # N': the valid keys only

    y = attention @ g
    u = y @ w["out.weight"].T + w["out.bias"]
    if config.norm == "batch":
        if training:
            m = u.shape[0] * u.shape[1]
            mean = u.sum(axis=(0, 1)) / m
            var = ((u - mean) ** 2).sum(axis=(0, 1)) / m  # biased: divides by B * N
        else:
            mean, var = w["norm.running_mean"], w["norm.running_var"]
        std = sqrt(var + ctx.mpf(config.norm_eps))
        u = (u - mean) * w["norm.gamma"] / std + w["norm.beta"]
    if config.residual:
        u = u + mp(to_positions(x, config))
    z = nearest_float64(from_positions(u, x.shape, config))
    return (z, nearest_float64(attention)) if return_attention else z
