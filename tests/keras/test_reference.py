"""NonLocalBlock against the NumPy reference, in float64 on every Keras backend: outputs,
attention, masks and gradients (checked against finite differences of the reference)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nonlocal_conformance.backward import reference_gradients
from nonlocal_core import INSTANTIATIONS, NonLocalConfig, nonlocal_forward, random_weights

from .conftest import make_input

POOLING = {
    "none": {},
    "after": {"subsample": True, "pool_position": "after_projection"},
    "before": {"subsample": True, "pool_position": "before_projection"},
}
GRID = list(itertools.product(INSTANTIATIONS, (1, 2, 3), ("channels_first", "channels_last")))


def _case(cfg: NonLocalConfig, context: bool, mask: bool, seed: int = 0):
    rng = np.random.default_rng(seed + 100)
    x = make_input(cfg, seed=seed)
    ctx_extent = tuple(
        e + 1 for e in (x.shape[2:] if cfg.data_format == "channels_first" else x.shape[1:-1])
    )
    ctx = make_input(cfg, seed=seed + 1, extent=ctx_extent, channels=cfg.context_channels)
    ctx = ctx if context else None
    source = ctx if context else x
    extent = source.shape[2:] if cfg.data_format == "channels_first" else source.shape[1:-1]
    key_grid = cfg.pooled_extent(extent)
    key_mask = rng.random((x.shape[0], *key_grid)) > 0.4 if mask else None
    return x, ctx, key_mask


@pytest.mark.parametrize("pooling", POOLING)
@pytest.mark.parametrize(("instantiation", "dims", "data_format"), GRID)
def test_float64_matches_reference(adapter, instantiation, dims, data_format, pooling):
    plain = NonLocalConfig(
        4,
        spatial_dims=dims,
        instantiation=instantiation,
        data_format=data_format,
        **POOLING[pooling],
    )
    wide = plain.replace(context_channels=4 if instantiation == "gaussian" else 6, norm=None)
    for cfg, context, training in ((plain, False, False), (plain, False, True), (wide, True, True)):
        weights = random_weights(cfg, seed=dims)
        block = adapter.build(cfg, weights, dtype="float64", device="cpu")
        x, ctx, mask = _case(cfg, context=context, mask=context, seed=dims)
        want_z, want_a = nonlocal_forward(
            x, weights, cfg, context=ctx, key_mask=mask, training=training, return_attention=True
        )
        out = adapter.forward(block, x, context=ctx, key_mask=mask, training=training)
        with_a = adapter.forward(
            block, x, context=ctx, key_mask=mask, training=training, return_attention=True
        )
        assert out.dtype == "float64" and out.z.shape == x.shape
        np.testing.assert_allclose(out.z, want_z, rtol=0, atol=1e-12)
        np.testing.assert_allclose(with_a.z, want_z, rtol=0, atol=1e-12)
        np.testing.assert_allclose(with_a.attention, want_a, rtol=0, atol=1e-12)


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_flat_and_grid_masks_agree(adapter, instantiation):
    cfg = NonLocalConfig(4, instantiation=instantiation, subsample=True)
    x, _, mask = _case(cfg, context=False, mask=True)
    block = adapter.build(cfg, random_weights(cfg), dtype="float64", device="cpu")
    grid = adapter.forward(block, x, key_mask=mask).z
    flat = adapter.forward(block, x, key_mask=mask.reshape(mask.shape[0], -1)).z
    np.testing.assert_array_equal(grid, flat)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_item_without_valid_key_gets_zero_y(adapter, instantiation, dtype):
    # y = 0 for every query of item 0, so z = W_z-bias + x there; item 1 is unaffected.
    cfg = NonLocalConfig(4, spatial_dims=1, instantiation=instantiation, norm=None)
    weights = random_weights(cfg, seed=3)
    x = make_input(cfg)
    mask = np.ones((2, 7), dtype=bool)
    mask[0] = False
    mask[1, :3] = False
    block = adapter.build(cfg, weights, dtype=dtype, device="cpu")
    out = adapter.forward(block, x, key_mask=mask, return_attention=True)
    want_z, want_a = nonlocal_forward(x, weights, cfg, key_mask=mask, return_attention=True)
    np.testing.assert_array_equal(out.attention[0], 0.0)
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(out.z, want_z, rtol=0, atol=tol)
    np.testing.assert_allclose(out.attention, want_a, rtol=0, atol=tol)
    fused = adapter.forward(block, x, key_mask=mask).z  # the path without the matrix
    np.testing.assert_allclose(fused, want_z, rtol=0, atol=tol)
    grads = adapter.gradients(block, x, np.ones_like(x), key_mask=mask)
    assert all(np.isfinite(g).all() for g in grads.values())


def _loss(cfg, weights, x, ctx, mask, training, cotangent):
    z = nonlocal_forward(x, weights, cfg, context=ctx, key_mask=mask, training=training)
    return float(np.sum(z * cotangent))


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_gradients_match_finite_differences(adapter, instantiation):
    # d/dh L(p + h v) at h = 0 equals <grad_p, v>; central differences in float64 are
    # accurate to ~1e-9 here, far below any real bug.
    cfg = NonLocalConfig(
        4,
        spatial_dims=2,
        instantiation=instantiation,
        subsample=True,
        context_channels=None if instantiation == "gaussian" else 5,
    )
    weights = random_weights(cfg, seed=7)
    x, ctx, mask = _case(cfg, context=True, mask=True, seed=7)
    rng = np.random.default_rng(8)
    cotangent = rng.normal(size=x.shape)
    block = adapter.build(cfg, weights, dtype="float64", device="cpu")
    grads = adapter.gradients(block, x, cotangent, context=ctx, key_mask=mask, training=True)
    trainable = sorted(n for n in weights if n not in ("norm.running_mean", "norm.running_var"))
    assert sorted(grads) == sorted(["x", "context", *trainable])

    h = 1e-6
    for name, grad in grads.items():
        v = rng.normal(size=grad.shape)

        def loss_at(step, name=name, v=v):
            w = dict(weights)
            xx, cc = x, ctx
            if name == "x":
                xx = x + step * v
            elif name == "context":
                cc = ctx + step * v
            else:
                w[name] = weights[name] + step * v
            return _loss(cfg, w, xx, cc, mask, True, cotangent)

        numeric = (loss_at(h) - loss_at(-h)) / (2 * h)
        analytic = float(np.sum(grad * v))
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-7), name


@pytest.mark.parametrize("pool_position", ["after_projection", "before_projection"])
@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_gradients_through_a_3d_pooling_window_match_the_analytic_backward(
    adapter, instantiation, pool_position
):
    # A (2, 2, 2) window splits three axes at once; TensorFlow once failed to differentiate
    # that. Central differences are too noisy for the 3-D training case (roundoff ~4e-7 on
    # exactly-zero gradients), so this compares with the conformance suite's float64
    # backward, itself checked against finite differences in tests/conformance_meta.
    cfg = NonLocalConfig(
        4,
        spatial_dims=3,
        instantiation=instantiation,
        subsample=(2, 2, 2),
        pool_position=pool_position,
        context_channels=None if instantiation == "gaussian" else 5,
    )
    weights = random_weights(cfg, seed=3)
    x, ctx, mask = _case(cfg, context=True, mask=True, seed=3)
    cotangent = np.random.default_rng(4).normal(size=x.shape)
    block = adapter.build(cfg, weights, dtype="float64", device="cpu")
    got = adapter.gradients(block, x, cotangent, context=ctx, key_mask=mask, training=True)
    want = reference_gradients(
        x, weights, cfg, cotangent, context=ctx, key_mask=mask, training=True
    )
    assert sorted(got) == sorted(want)
    # Some gradients are exactly zero (BN in training cancels out.bias) and come out as
    # float64 cancellation noise, ~eps times the largest gradient (hundreds here).
    scale = max(float(np.max(np.abs(value))) for value in want.values())
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-9, atol=1e-12 * scale, err_msg=name)
