"""The golden vectors of spec/vectors replayed (rules: spec/conformance.md, "Golden vectors")."""

from __future__ import annotations

import numpy as np

from ..suite import SAFETY, Suite, assert_within
from ..vectors import VectorCase


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
    # The vector's inputs rounded to the dtype under test move the exact answer by
    # |ref(rounded) - expected|: measured with the reference, and added to the bound.
    moved = np.abs(ref.z - vec.expected_z)
    out = suite.forward(case, return_attention=vec.expected_attention is not None)
    assert_within(out.z, vec.expected_z, SAFETY * ref.err_z + moved, f"z of {vec.name}")
    if vec.expected_attention is not None and not suite.missing(attention=True):
        moved = np.abs(ref.attention - vec.expected_attention)
        bound = SAFETY * ref.err_attention + moved
        assert_within(out.attention, vec.expected_attention, bound, f"attention of {vec.name}")
