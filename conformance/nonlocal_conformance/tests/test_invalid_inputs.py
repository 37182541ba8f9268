"""Invalid inputs raise a clear error (ValueError/TypeError naming the argument) instead of
returning numbers (spec: ERR-1)."""

from __future__ import annotations

import numpy as np
import pytest

from nonlocal_core import weight_shapes

from ..strategies import Case, feature_shape
from ..suite import Suite

ERRORS = (ValueError, TypeError)


def _rejects(suite: Suite, case: Case, names: tuple[str, ...], **overrides) -> None:
    try:
        out = suite.forward(case, **overrides)
    except ERRORS as exc:
        message = str(exc)
        assert any(n in message for n in names), (
            f"the error does not name the argument ({' or '.join(names)}): {message!r}"
        )
        return
    raise AssertionError(
        f"invalid {'/'.join(names)} accepted: returned z of shape {np.shape(out.z)}"
    )


def _spatial(case: Case, a: np.ndarray) -> tuple[int, ...]:
    return a.shape[2:] if case.config.data_format == "channels_first" else a.shape[1:-1]


def test_input_of_wrong_rank_is_rejected(conformance_suite: Suite):
    # spec: ERR-1
    suite = conformance_suite
    suite.require(input_errors=True)

    def body(case: Case):
        _rejects(suite, case, ("x",), x=case.x[..., None])
        _rejects(suite, case, ("x",), x=case.x[0])

    suite.check(suite.cases(), body)


def test_input_with_wrong_channel_count_is_rejected(conformance_suite: Suite):
    suite = conformance_suite
    suite.require(input_errors=True)

    def body(case: Case):
        cfg = case.config
        shape = feature_shape(cfg, case.x.shape[0], _spatial(case, case.x), cfg.in_channels + 1)
        _rejects(suite, case, ("x",), x=np.zeros(shape, dtype=case.x.dtype))

    suite.check(suite.cases(), body)


def test_key_mask_of_wrong_shape_is_rejected(conformance_suite: Suite):
    suite = conformance_suite
    suite.require(input_errors=True, key_mask=True)

    def body(case: Case):
        mask = case.key_mask
        flat = mask.reshape(mask.shape[0], -1)
        _rejects(
            suite, case, ("key_mask",), key_mask=np.ones((flat.shape[0], flat.shape[1] + 1), bool)
        )
        _rejects(
            suite, case, ("key_mask",), key_mask=np.ones((flat.shape[0] + 1, *mask.shape[1:]), bool)
        )

    suite.check(suite.cases(key_mask=True), body)


def test_context_of_wrong_shape_is_rejected(conformance_suite: Suite):
    suite = conformance_suite
    suite.require(input_errors=True, context=True)

    def body(case: Case):
        cfg, ctx = case.config, case.context
        batch, extent = ctx.shape[0], _spatial(case, ctx)
        wrong_channels = feature_shape(cfg, batch, extent, cfg.context_channels + 1)
        _rejects(suite, case, ("context",), context=np.zeros(wrong_channels, ctx.dtype))
        wrong_batch = feature_shape(cfg, batch + 1, extent, cfg.context_channels)
        _rejects(suite, case, ("context",), context=np.zeros(wrong_batch, ctx.dtype))

    suite.check(suite.cases(context=True, key_mask=False), body)


def test_subsample_window_larger_than_extent_is_rejected(conformance_suite: Suite):
    # spec: POOL-2
    suite = conformance_suite
    suite.require(input_errors=True)

    def body(case: Case):
        cfg = case.config
        extent = list(_spatial(case, case.x))
        axis = int(np.argmax(cfg.subsample))
        extent[axis] = cfg.subsample[axis] - 1
        shape = feature_shape(cfg, case.x.shape[0], extent, cfg.in_channels)
        _rejects(suite, case, ("x", "subsample"), x=np.zeros(shape, case.x.dtype))

    suite.check(
        suite.cases(pooled=True, context=False, key_mask=False).filter(
            lambda c: max(c.config.subsample) > 1
        ),
        body,
    )


def test_mismatched_weights_are_rejected(conformance_suite: Suite):
    # spec: W-1
    suite = conformance_suite
    suite.require(input_errors=True)

    def body(case: Case):
        shapes = weight_shapes(case.config)
        name = sorted(shapes)[case.seed % len(shapes)]
        missing = {k: v for k, v in case.weights.items() if k != name}
        extra = {**case.weights, "phi.extra": case.weights[name]}
        bad = {**case.weights, name: np.zeros((*shapes[name], 2), case.weights[name].dtype)}
        for label, weights, mentioned in (
            ("missing", missing, name),
            ("unexpected", extra, "phi.extra"),
            ("mis-shaped", bad, name),
        ):
            with pytest.raises(ERRORS) as info:
                suite.build(case, weights)
            assert mentioned in str(info.value), (
                f"the error for a {label} weight does not name {mentioned!r}: {info.value}"
            )
        if "norm.running_var" in shapes:
            negative = {
                **case.weights,
                "norm.running_var": -np.abs(case.weights["norm.running_var"]),
            }
            with pytest.raises(ERRORS) as info:
                suite.build(case, negative)
            assert "norm.running_var" in str(info.value), (
                f"the error for a negative running variance does not name it: {info.value}"
            )

    suite.check(suite.cases(), body)


def test_empty_batch_or_extent_is_rejected(conformance_suite: Suite):
    suite = conformance_suite
    suite.require(input_errors=True)

    def body(case: Case):
        _rejects(suite, case, ("x",), x=case.x[:0])
        cfg = case.config
        extent = list(_spatial(case, case.x))
        extent[0] = 0
        shape = feature_shape(cfg, case.x.shape[0], extent, cfg.in_channels)
        _rejects(suite, case, ("x",), x=np.zeros(shape, case.x.dtype))

    suite.check(suite.cases(context=False, key_mask=False), body)


def test_non_boolean_key_mask_is_rejected(conformance_suite: Suite):
    suite = conformance_suite
    suite.require(input_errors=True, key_mask=True)

    def body(case: Case):
        _rejects(suite, case, ("key_mask",), key_mask=case.key_mask.astype(np.float32))

    suite.check(suite.cases(key_mask=True), body)


def test_non_real_input_dtype_is_rejected(conformance_suite: Suite):
    suite = conformance_suite
    suite.require(input_errors=True)

    def body(case: Case):
        _rejects(suite, case, ("x",), x=case.x.astype(np.complex64))

    suite.check(suite.cases(key_mask=False), body)
