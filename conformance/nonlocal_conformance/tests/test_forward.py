"""Forward equivalence with the float64 reference: shapes, z, attention, options."""

from __future__ import annotations

import numpy as np
import pytest

from nonlocal_core import INSTANTIATIONS

from ..suite import SAFETY, Suite, assert_within

DIMS = (1, 2, 3)


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_output_shape_and_dtype_are_preserved(conformance_suite: Suite, instantiation):
    # spec: OP-1 IO-1 IO-3
    suite = conformance_suite
    suite.require(instantiation=instantiation)

    def body(case):
        out = suite.forward(case)
        assert out.z.shape == case.x.shape, f"z has shape {out.z.shape}, x {case.x.shape}"
        assert out.dtype == suite.dtype, f"z returned as {out.dtype}, input was {suite.dtype}"

    suite.check(
        suite.cases(instantiation=instantiation, context=None, pooled=None),
        body,
        suite.examples(instantiation=instantiation),
    )


@pytest.mark.parametrize("spatial_dims", DIMS)
@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_output_matches_reference_in_inference(
    conformance_suite: Suite, instantiation, spatial_dims
):
    # spec: NUM-1 NUM-2 INST-1 INST-2 INST-3 INST-4 INST-5 POOL-1 POOL-3 OUT-1 OUT-2 OUT-4 CFG-2
    suite = conformance_suite
    suite.require(instantiation=instantiation, spatial_dims=spatial_dims)

    def body(case):
        ref = suite.reference(case)
        assert_within(suite.forward(case).z, ref.z, SAFETY * ref.err_z, "z (inference)")

    suite.check(
        suite.cases(instantiation=instantiation, spatial_dims=spatial_dims),
        body,
        suite.examples(instantiation=instantiation, spatial_dims=spatial_dims),
    )


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_output_matches_reference_in_training(conformance_suite: Suite, instantiation):
    # spec: OUT-2 (batch statistics, biased variance)
    suite = conformance_suite
    suite.require(instantiation=instantiation, training=True)

    def body(case):
        ref = suite.reference(case)
        assert_within(suite.forward(case).z, ref.z, SAFETY * ref.err_z, "z (training)")

    suite.check(suite.cases(instantiation=instantiation, training=True), body)


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_attention_matches_reference(conformance_suite: Suite, instantiation):
    # spec: ATT-1
    suite = conformance_suite
    suite.require(instantiation=instantiation, attention=True)

    def body(case):
        ref = suite.reference(case)
        out = suite.forward(case, return_attention=True)
        assert out.attention is not None, "attention was asked for but not returned"
        bound = SAFETY * ref.err_attention
        assert_within(out.attention, ref.attention, bound, "attention a_ij = f / C")
        assert_within(out.z, ref.z, SAFETY * ref.err_z, "z (with attention returned)")

    suite.check(
        suite.cases(instantiation=instantiation, pooled=None),
        body,
        suite.examples(instantiation=instantiation),
    )


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_output_matches_reference_with_context(conformance_suite: Suite, instantiation):
    # spec: OP-2 IO-2
    suite = conformance_suite
    suite.require(instantiation=instantiation, context=True)

    def body(case):
        ref = suite.reference(case)
        assert_within(suite.forward(case).z, ref.z, SAFETY * ref.err_z, "z (with context)")

    suite.check(suite.cases(instantiation=instantiation, context=True, training=None), body)


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_output_and_attention_match_reference_with_key_mask(
    conformance_suite: Suite, instantiation
):
    # spec: MASK-1
    suite = conformance_suite
    suite.require(instantiation=instantiation, key_mask=True)
    attention = not suite.missing(instantiation=instantiation, attention=True)

    def body(case):
        ref = suite.reference(case)
        out = suite.forward(case, return_attention=attention)
        assert_within(out.z, ref.z, SAFETY * ref.err_z, "z (with key mask)")
        if attention:
            bound = SAFETY * ref.err_attention
            assert_within(out.attention, ref.attention, bound, "attention (with key mask)")

    suite.check(
        suite.cases(instantiation=instantiation, key_mask=True, context=None, training=None),
        body,
    )


def test_query_without_valid_key_gets_zero_aggregate(conformance_suite: Suite):
    """A batch element whose mask is all False has y = 0, so z = BN(b_z) + x (no NaN)."""
    # spec: MASK-2
    suite = conformance_suite
    suite.require(key_mask=True)

    def body(case):
        case.key_mask[0] = False
        ref = suite.reference(case)
        z = suite.forward(case).z
        assert np.isfinite(np.asarray(z, dtype=np.float64)).all(), "NaN/inf for an empty mask"
        assert_within(z, ref.z, SAFETY * ref.err_z, "z (batch element with no valid key)")

    suite.check(suite.cases(key_mask=True, training=False), body)
