"""Rounding into the dtypes under test, and the forward tolerance model."""

from __future__ import annotations

import numpy as np
import pytest

from nonlocal_conformance.dtypes import Precision, cast, round_to_bfloat16, unit_roundoff
from nonlocal_conformance.trace import SAFETY, trace_forward

from ..core.test_reference import random_case


def _nearest_bfloat16_brute_force(v: np.float32) -> float:
    bits = int(np.array(v, dtype=np.float32).view(np.uint32))
    down = bits & 0xFFFF0000
    up = down + 0x10000
    lo = float(np.array(down, dtype=np.uint32).view(np.float32))
    hi = float(np.array(up, dtype=np.uint32).view(np.float32))
    d_lo, d_hi = abs(float(v) - lo), abs(hi - float(v))
    if d_lo != d_hi:
        return lo if d_lo < d_hi else hi
    return lo if (down >> 16) % 2 == 0 else hi  # ties to even


def test_bfloat16_rounding_is_round_to_nearest_even():
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.normal(size=2000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 2000),
            np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 0.0, -0.0], dtype=np.float32),
        ]
    ).astype(np.float32)
    got = round_to_bfloat16(values)
    want = np.array([_nearest_bfloat16_brute_force(v) for v in values], dtype=np.float32)
    assert np.array_equal(got, want)
    assert np.isinf(round_to_bfloat16(np.array([np.inf])))[0]


def test_cast_rounds_once_and_keeps_booleans():
    assert cast(np.array([0.1]), "float32")[0] == np.float32(0.1)
    assert cast(np.array([True, False]), "bfloat16").dtype == np.bool_
    with pytest.raises(ValueError, match="float8"):
        cast(np.array([1.0]), "float8")


def test_unit_roundoffs_are_half_an_ulp_of_one():
    for dtype in ("float64", "float32", "float16"):
        assert unit_roundoff(dtype) == np.finfo(dtype).eps / 2
    assert unit_roundoff("bfloat16") == 2.0**-8


def _rounded_case(seed: int, dtype: str):
    """`random_case(seed)` with its inputs and weights rounded to `dtype` (as the suite does)."""
    cfg, w, x, ctx, mask, training = random_case(np.random.default_rng(seed))
    rounded = lambda a: None if a is None else cast(a, dtype)  # noqa: E731
    weights = {k: rounded(v) for k, v in w.items()}
    return cfg, weights, rounded(x), rounded(ctx), mask, training


def _float32_trace(cfg, w, x, ctx, mask, training):
    return trace_forward(
        x,
        w,
        cfg,
        context=ctx,
        key_mask=mask,
        training=training,
        precision=Precision.default("float32"),
    )


@pytest.mark.parametrize("seed", range(40))
def test_float32_evaluation_of_the_block_stays_within_the_bound(seed):
    """Every step of the reference evaluated in float32 (a real float32 implementation)."""
    case = _rounded_case(seed, "float32")
    trace = _float32_trace(*case)
    z32 = _forward_in("float32", *case)
    assert (np.abs(z32 - trace.z) <= SAFETY * trace.err_z).all()
    # Not vacuous: far below the size of the values.
    assert (trace.err_z <= 1e-3 * (1 + np.abs(trace.z))).all()


def _forward_in(dtype, cfg, w, x, ctx, mask, training):
    """The reference's own steps on arrays of `dtype`, so each one rounds to `dtype`."""
    from nonlocal_core import reference as ref

    carrier = np.dtype(dtype)
    x_grid = ref.to_grid(x, cfg)
    ctx_grid = x_grid if ctx is None else ref.to_grid(ctx, cfg)
    theta = ref.queries(x_grid, w, cfg)
    phi, g = ref.keys_and_values(ctx_grid, w, cfg)
    shapes_mask = None
    if mask is not None:
        shapes_mask = np.asarray(mask).reshape(x.shape[0], -1)
    f = ref.pairwise_function(theta, phi, w, cfg).astype(carrier)
    a = ref.normalise(f, cfg, shapes_mask).astype(carrier)
    y = ref.aggregate(a, g)
    x_flat = ref.to_positions(x, cfg)
    z = ref.output_transform(y, x_flat, w, cfg, training).astype(carrier)
    assert y.dtype == z.dtype == carrier
    return ref.from_positions(z, x.shape, cfg).astype(np.float64)


# One case per instantiation. Fixed cases and fixed perturbations: nothing below is scaled by
# the bound under test, so an inflated bound (x 100, x 1e6) or a zero bound fails here.
SEEDS_BY_INSTANTIATION = {
    "embedded_gaussian": 2,
    "gaussian": 3,
    "concatenation": 5,
    "dot_product": 6,
}


@pytest.mark.parametrize("seed", SEEDS_BY_INSTANTIATION.values(), ids=SEEDS_BY_INSTANTIATION)
def test_bound_accepts_legitimate_float32_rounding(seed):
    case = _rounded_case(seed, "float32")
    trace = _float32_trace(*case)
    # The exact result rounded once to float32: the best any float32 implementation can do.
    once = trace.z.astype(np.float32).astype(np.float64)
    assert np.any(once != trace.z), "the case must need rounding, or a zero bound would pass"
    assert (np.abs(once - trace.z) <= SAFETY * trace.err_z).all()
    z32 = _forward_in("float32", *case)
    assert (np.abs(z32 - trace.z) <= SAFETY * trace.err_z).all()


@pytest.mark.parametrize("seed", SEEDS_BY_INSTANTIATION.values(), ids=SEEDS_BY_INSTANTIATION)
def test_bound_rejects_a_perturbation_larger_than_rounding(seed):
    case = _rounded_case(seed, "float32")
    trace = _float32_trace(*case)
    within = lambda z: np.abs(z - trace.z) <= SAFETY * trace.err_z  # noqa: E731
    # A float32 implementation that lost 7 of its 24 bits: every entry 2^7 u |z| off. The
    # bound is never below u |z| (the output's own rounding), so a bound inflated 100 times
    # (SAFETY * 100 * u |z| > 2^7 u |z|) accepts it everywhere.
    lost_bits = trace.z + 2.0**7 * unit_roundoff("float32") * np.abs(trace.z)
    assert not within(lost_bits).all()
    # The same steps genuinely evaluated in float16 (2^13 times float32's unit roundoff).
    z16 = _forward_in("float16", *_rounded_case(seed, "float16"))
    assert np.isfinite(z16).all()
    assert not within(z16).all()
