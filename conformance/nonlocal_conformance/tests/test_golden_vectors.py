"""The golden vectors of spec/vectors replayed (rules: spec/conformance.md, "Golden vectors")."""

from __future__ import annotations

import numpy as np
import pytest

from ..adapter import Unsupported
from ..dtypes import Precision
from ..strategies import Case
from ..suite import SAFETY, Suite, assert_within, decline_reason
from ..trace import trace_forward
from ..vectors import VectorCase


def _input_rounding(vec: VectorCase, case: Case) -> tuple[np.ndarray | float, ...]:
    """How far rounding the vector's inputs to the dtype under test may move the exact z and
    attention, measured with the float64 reference and never with the stored expected values
    (a bound widened by the expected values would pass whatever a file says)."""
    pairs = [(case.x, vec.x), (case.context, vec.context)]
    pairs += [(case.weights[name], value) for name, value in vec.weights.items()]
    if all(a is None or np.array_equal(np.asarray(a, dtype=np.float64), b) for a, b in pairs):
        return 0.0, 0.0  # nothing was rounded (float64): the exact answer did not move
    f64 = Precision.default("float64")
    kwargs = {"key_mask": vec.key_mask, "training": vec.training}
    original = trace_forward(
        vec.x, vec.weights, vec.config, context=vec.context, **kwargs, precision=f64
    )
    rounded = trace_forward(
        case.x, case.weights, case.config, context=case.context, **kwargs, precision=f64
    )
    # Each float64 reference is within SAFETY * E64 of the exact answer on its own inputs.
    moved_z = np.abs(rounded.z - original.z) + SAFETY * (rounded.err_z + original.err_z)
    moved_a = np.abs(rounded.attention - original.attention) + SAFETY * (
        rounded.err_attention + original.err_attention
    )
    return moved_z, moved_a


def test_golden_vector_is_reproduced(conformance_suite: Suite, golden_vector: VectorCase):
    # spec: VEC-1 NUM-1
    suite = conformance_suite
    vec = golden_vector
    suite.require(
        vec.config,
        training=vec.training,
        context=vec.context is not None,
        key_mask=vec.key_mask is not None,
    )
    case = vec.as_case(suite.dtype)
    ref = suite.reference(case)
    moved_z, moved_a = _input_rounding(vec, case)
    try:
        attention = vec.expected_attention is not None and not suite.missing(
            vec.config, attention=True
        )
        out = suite.forward(case, return_attention=attention)
    except Unsupported as exc:
        suite.tally.declined[decline_reason(exc)] += 1
        pytest.skip(f"declined by the adapter: {decline_reason(exc)}")
    # The stored values are the exact answer on the float64 inputs, correctly rounded.
    assert_within(out.z, vec.expected_z, SAFETY * ref.err_z + moved_z, f"z of {vec.name}")
    if attention:
        bound = SAFETY * ref.err_attention + moved_a
        assert_within(out.attention, vec.expected_attention, bound, f"attention of {vec.name}")
