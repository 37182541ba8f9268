"""The analytic reference backward against central finite differences of nonlocal_forward."""

from __future__ import annotations

import numpy as np
import pytest

from nonlocal_conformance.backward import gradient_bounds, reference_gradients
from nonlocal_conformance.dtypes import Precision
from nonlocal_core import nonlocal_forward

from ..core.test_reference import random_case


def _directional_fd(cfg, w, x, ctx, mask, training, cotangent, name, v, h=1e-6) -> float:
    def loss(s: float) -> float:
        xx, cc, ww = x, ctx, w
        if name == "x":
            xx = x + s * v
        elif name == "context":
            cc = ctx + s * v
        else:
            ww = {**w, name: w[name] + s * v}
        z = nonlocal_forward(xx, ww, cfg, context=cc, key_mask=mask, training=training)
        return float((z * cotangent).sum())

    return (loss(h) - loss(-h)) / (2 * h)


@pytest.mark.parametrize("seed", range(40))
def test_reference_backward_matches_finite_differences(seed):
    cfg, w, x, ctx, mask, training = random_case(np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 10_000)
    cotangent = rng.normal(size=x.shape)
    grads = reference_gradients(x, w, cfg, cotangent, context=ctx, key_mask=mask, training=training)
    expected = {"x"} | ({"context"} if ctx is not None else set())
    expected |= {n for n in w if n not in ("norm.running_mean", "norm.running_var")}
    assert set(grads) == expected
    for name, grad in grads.items():
        base = {"x": x, "context": ctx}.get(name, w.get(name))
        assert grad.shape == np.shape(base), name
        v = rng.normal(size=np.shape(base))
        fd = _directional_fd(cfg, w, x, ctx, mask, training, cotangent, name, v)
        analytic = float((grad * v).sum())
        assert abs(fd - analytic) <= 1e-6 * (1 + abs(analytic)), (name, fd, analytic)


@pytest.mark.parametrize("seed", range(10))
def test_gradient_bound_holds_for_float32_rounded_gradients_and_is_tight(seed):
    """Rounding the exact gradients to float32 stays inside the bound, which is not vacuous."""
    cfg, w, x, ctx, mask, training = random_case(np.random.default_rng(seed))
    cotangent = np.random.default_rng(seed).normal(size=x.shape)
    grads, bounds = gradient_bounds(
        x,
        w,
        cfg,
        cotangent,
        context=ctx,
        key_mask=mask,
        training=training,
        precision=Precision.default("float32"),
    )
    ratios = []
    for name, grad in grads.items():
        rounded = grad.astype(np.float32).astype(np.float64)
        assert (np.abs(rounded - grad) <= bounds[name]).all(), name
        big = np.abs(grad) > 1e-3 * np.abs(grad).max()
        ratios.append(bounds[name][big] / np.abs(grad[big]))
    # Worst-case bounds through the softmax backward, whose sums cancel, are loose for theta
    # and phi (spec/conformance.md, "Gradients"); typical entries are still held to 1%.
    assert np.median(np.concatenate(ratios)) < 1e-2
