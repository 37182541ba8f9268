"""Invalid inputs raise a clear error (ValueError/TypeError naming the argument) instead of
returning numbers (spec: ERR-1).

A message names an argument when it holds the name as a whole word: "expected 4" does not
name ``x``, "x has shape" and "x=" do. Weight names contain dots, so for them a dot followed
by a letter or digit continues the name ("g.bias" is not named by "phi.g.bias.extra"),
while a full stop after it ends the sentence.
"""

from __future__ import annotations

import contextlib
import re

import numpy as np
import pytest

from nonlocal_core import weight_shapes

from ..adapter import Unsupported
from ..strategies import Case, feature_shape
from ..suite import Suite

ERRORS = (ValueError, TypeError)


def names(message: str, name: str) -> bool:
    """Whether `message` holds the argument `name` as a whole word.

    Example:
        >>> names("x has shape (2, 3)", "x"), names("expected rank 4", "x")
        (True, False)
        >>> names("too many values to unpack (expected 5)", "x")
        False
    """
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", message) is not None


def names_weight(message: str, name: str) -> bool:
    """Whether `message` holds the weight `name` (dots included) as a whole word.

    Example:
        >>> names_weight("missing weight(s) ['g.bias']", "g.bias")
        True
        >>> names_weight("unexpected: phi.g.bias.extra", "g.bias")
        False
        >>> names_weight("no g.bias.", "g.bias")
        True
    """
    pattern = rf"(?<![A-Za-z0-9_.]){re.escape(name)}(?!\.?[A-Za-z0-9_])"
    return re.search(pattern, message) is not None


@contextlib.contextmanager
def _no_decline(what):
    """An `Unsupported` for an invalid input or weight is a failure, not a decline: declining
    would turn an error check into a skip."""
    try:
        yield
    except Unsupported as exc:
        raise AssertionError(
            f"invalid {'/'.join(what) if isinstance(what, tuple) else what} raised "
            f"Unsupported ({exc}), expected ValueError or TypeError naming it"
        ) from exc


def _rejects(
    suite: Suite, case: Case, argument: tuple[str, ...], *, dtype: str | None = None, **overrides
) -> None:
    """The forward pass with `overrides` raises ValueError/TypeError whose message names one
    of the `argument` names (and, when given, the `dtype`) as a whole word."""
    block = suite.build(case)  # the adapter may decline the valid case (Unsupported)...
    try:
        with _no_decline(argument):  # ...but not the invalid input: that must be an error
            out = suite.forward(case, block, **overrides)
    except ERRORS as exc:
        message = str(exc)
        assert any(names(message, n) for n in argument), (
            f"the error does not name the argument ({' or '.join(argument)}): {message!r}"
        )
        if dtype is not None:
            assert names(message, dtype), f"the error does not name the dtype {dtype}: {message!r}"
        return
    raise AssertionError(
        f"invalid {'/'.join(argument)} accepted: returned z of shape {np.shape(out.z)}"
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
    # spec: IO-2 ERR-1
    suite = conformance_suite
    suite.require(input_errors=True, context=True)

    def body(case: Case):
        cfg, ctx = case.config, case.context
        batch, extent = ctx.shape[0], _spatial(case, ctx)
        wrong_channels = feature_shape(cfg, batch, extent, cfg.context_channels + 1)
        _rejects(suite, case, ("context",), context=np.zeros(wrong_channels, ctx.dtype))
        wrong_batch = feature_shape(cfg, batch + 1, extent, cfg.context_channels)
        _rejects(suite, case, ("context",), context=np.zeros(wrong_batch, ctx.dtype))
        _rejects(suite, case, ("context",), context=ctx[..., None])
        if cfg.context_channels != cfg.in_channels:  # keys cannot read x: a context is required
            _rejects(suite, case, ("context",), context=None)

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
    # spec: W-1 ERR-1
    suite = conformance_suite
    suite.require(weight_errors=True)

    def body(case: Case):
        suite.build(case)  # the adapter may decline the valid weights, not the invalid ones
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
            with _no_decline(label + " weight"), pytest.raises(ERRORS) as info:
                suite.build(case, weights)
            assert names_weight(str(info.value), mentioned), (
                f"the error for a {label} weight does not name {mentioned!r}: {info.value}"
            )
        if "norm.running_var" in shapes:
            negative = {
                **case.weights,
                "norm.running_var": -np.abs(case.weights["norm.running_var"]),
            }
            with _no_decline("negative running variance"), pytest.raises(ERRORS) as info:
                suite.build(case, negative)
            assert names_weight(str(info.value), "norm.running_var"), (
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


# Integer dtypes a feature map arrives in by mistake: raw pixels (uint8), token ids and
# indices (int64, int32); NumPy spells each dtype as the error must name it (spec IO-3).
INTEGER_DTYPES = (np.uint8, np.int32, np.int64)


def test_integer_or_boolean_input_is_rejected(conformance_suite: Suite):
    """An integer or bool x or context is an error naming the argument and its dtype, never
    converted silently: it is most often raw pixels or ids the network forgot to normalise."""
    # spec: IO-3 ERR-1
    suite = conformance_suite
    suite.require(input_errors=True)

    def body(case: Case):
        integer = np.dtype(INTEGER_DTYPES[case.seed % len(INTEGER_DTYPES)])
        features = {"x": case.x}
        if case.context is not None:
            features["context"] = case.context
        for argument, value in features.items():
            pixels = np.clip(np.rint(np.abs(np.asarray(value, np.float64)) * 50), 0, 127)
            pixels = pixels.astype(integer)
            _rejects(suite, case, (argument,), dtype=integer.name, **{argument: pixels})
            _rejects(suite, case, (argument,), dtype="bool", **{argument: value > 0})

    suite.check(suite.cases(context=None, key_mask=False), body)


def test_non_boolean_flag_is_rejected(conformance_suite: Suite):
    """``training="no"`` or ``return_attention=1`` raise an error naming the flag: a string
    would otherwise read as True."""
    # spec: ERR-1
    suite = conformance_suite
    suite.require(input_errors=True)
    caps = [suite.caps.for_instantiation(i) for i in (None, *suite.caps.per_instantiation)]
    if not any(c.training or c.attention for c in caps):
        pytest.skip(f"backend {suite.backend!r} declares neither training nor attention")

    def body(case: Case):
        flags = [
            f for f in ("training", "attention") if not suite.missing(case.config, **{f: True})
        ]
        if "training" in flags:
            _rejects(suite, case, ("training",), training="no")
            _rejects(suite, case, ("training",), training=1)
        if "attention" in flags:
            _rejects(suite, case, ("return_attention",), return_attention="yes")
            _rejects(suite, case, ("return_attention",), return_attention=1)

    suite.check(suite.cases(key_mask=False), body)
