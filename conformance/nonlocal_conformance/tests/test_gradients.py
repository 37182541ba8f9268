"""Gradients of sum(z * cotangent) against the analytic float64 backward of the reference."""

from __future__ import annotations

import pytest

from nonlocal_core import INSTANTIATIONS, weight_shapes

from ..backward import NOT_TRAINABLE, gradient_bounds
from ..strategies import Case
from ..suite import Suite, assert_within


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_gradients_match_reference(conformance_suite: Suite, instantiation):
    suite = conformance_suite
    suite.require(instantiation=instantiation, gradients=True)
    context_ok = not suite.missing(instantiation=instantiation, context=True)
    mask_ok = not suite.missing(instantiation=instantiation, key_mask=True)

    def body(case: Case):
        cotangent = case.cotangent()
        got = suite.adapter.gradients(suite.build(case), case.x, cotangent, **case.kwargs())
        want, bounds = gradient_bounds(
            case.x,
            case.weights,
            case.config,
            cotangent,
            precision=suite.precision,
            **case.kwargs(),
        )
        names = {"x"} | {n for n in weight_shapes(case.config) if n not in NOT_TRAINABLE}
        if case.context is not None:
            names.add("context")
        assert set(got) == names, f"gradient names {sorted(got)}, expected {sorted(names)}"
        for name in sorted(names):
            assert_within(got[name], want[name], bounds[name], f"d loss / d {name}")

    suite.check(
        suite.cases(
            instantiation=instantiation,
            context=None if context_ok else False,
            key_mask=None if mask_ok else False,
            training=None,
            max_batch=2,
        ),
        body,
    )
