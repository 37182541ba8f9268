"""Properties every implementation has, whatever its internals: identity at initialisation,
layout equivalence, batch independence, permutation equivariance, context = x."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from nonlocal_core import INSTANTIATIONS

from ..strategies import Case
from ..suite import SAFETY, Suite, assert_within


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_block_is_the_identity_at_initialisation(conformance_suite: Suite, instantiation):
    """With the spec's initial weights (BN gamma = beta = 0, or W_z = 0 without a norm),
    z = x exactly: 0 * finite = 0 and x + 0 = x in every dtype."""
    # spec: INIT-1
    suite = conformance_suite
    suite.require(instantiation=instantiation)

    def body(case: Case):
        z = suite.forward(case).z
        assert np.array_equal(_f64(z), _f64(case.x)), (
            f"z != x at initialisation: max |z - x| = {np.abs(_f64(z) - _f64(case.x)).max()}"
        )

    suite.check(
        suite.cases(instantiation=instantiation, init=True, residual=True, training=None), body
    )


def _other_layout(case: Case) -> Case:
    """The same case in the other data format (axes moved, nothing else changed)."""
    to_last = case.config.data_format == "channels_first"
    move = (lambda a: np.moveaxis(a, 1, -1)) if to_last else (lambda a: np.moveaxis(a, -1, 1))
    fmt = "channels_last" if to_last else "channels_first"
    return dataclasses.replace(
        case,
        config=case.config.replace(data_format=fmt),
        x=np.ascontiguousarray(move(case.x)),
        context=None if case.context is None else np.ascontiguousarray(move(case.context)),
    )


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_channels_last_equals_channels_first(conformance_suite: Suite, instantiation):
    # spec: IO-1
    suite = conformance_suite
    suite.require(instantiation=instantiation)
    for fmt in ("channels_first", "channels_last"):
        suite.require(data_format=fmt)

    def body(case: Case):
        other = _other_layout(case)
        z_first = _f64(suite.forward(case).z)
        z_last = np.moveaxis(_f64(suite.forward(other).z), -1, 1)
        bound = 2 * SAFETY * suite.reference(case).err_z
        assert_within(z_last, z_first, bound, "channels_last z (moved to channels_first)")

    suite.check(
        suite.cases(
            instantiation=instantiation,
            data_format="channels_first",
            context=None,
            key_mask=None,
            training=None,
        ),
        body,
    )


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_batch_elements_are_independent_in_inference(conformance_suite: Suite, instantiation):
    """In inference, element b of a batch gives what it gives alone (no batch statistics,
    no keys from other elements)."""
    # spec: OP-3
    suite = conformance_suite
    suite.require(instantiation=instantiation)

    def body(case: Case):
        stacked = _f64(suite.forward(case).z)
        bound = 2 * SAFETY * suite.reference(case).err_z
        block = suite.build(case)
        for b in range(case.x.shape[0]):
            one = slice(b, b + 1)
            alone = suite.forward(
                case,
                block,
                x=case.x[one],
                context=None if case.context is None else case.context[one],
                key_mask=None if case.key_mask is None else case.key_mask[one],
            )
            assert_within(_f64(alone.z), stacked[one], bound[one], f"batch element {b} alone")

    suite.check(
        suite.cases(
            instantiation=instantiation, context=None, key_mask=None, training=False
        ).filter(lambda c: c.x.shape[0] > 1),
        body,
    )


def _permute_positions(a: np.ndarray, perm: np.ndarray, channels_first: bool) -> np.ndarray:
    if channels_first:
        flat = a.reshape(a.shape[0], a.shape[1], -1)[:, :, perm]
    else:
        flat = a.reshape(a.shape[0], -1, a.shape[-1])[:, perm, :]
    return flat.reshape(a.shape)


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_output_is_equivariant_to_position_permutations(conformance_suite: Suite, instantiation):
    """Without pooling, permuting query positions permutes z the same way, and permuting
    key positions (with their mask entries) changes nothing."""
    # spec: OP-1 IO-1
    suite = conformance_suite
    suite.require(instantiation=instantiation)

    def body(case: Case):
        cf = case.config.data_format == "channels_first"
        rng = np.random.default_rng(case.seed)
        n = int(np.prod(case.x.shape[2:] if cf else case.x.shape[1:-1]))
        perm_q = rng.permutation(n)
        z = _f64(suite.forward(case).z)
        bound = 2 * SAFETY * suite.reference(case).err_z
        overrides = {"x": _permute_positions(case.x, perm_q, cf)}
        if case.context is not None:
            src = case.context
            n_keys = int(np.prod(src.shape[2:] if cf else src.shape[1:-1]))
            perm_k = rng.permutation(n_keys)
            overrides["context"] = _permute_positions(src, perm_k, cf)
            if case.key_mask is not None:
                mask = case.key_mask.reshape(case.key_mask.shape[0], -1)[:, perm_k]
                overrides["key_mask"] = mask.reshape(case.key_mask.shape)
        elif case.key_mask is not None:
            mask = case.key_mask.reshape(case.key_mask.shape[0], -1)[:, perm_q]
            overrides["key_mask"] = mask.reshape(case.key_mask.shape)
        z_perm = _f64(suite.forward(case, **overrides).z)
        expected = _permute_positions(z, perm_q, cf)
        assert_within(
            z_perm, expected, _permute_positions(bound, perm_q, cf), "z of permuted positions"
        )

    suite.check(
        suite.cases(
            instantiation=instantiation, pooled=False, context=None, key_mask=None, training=None
        ),
        body,
    )


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_context_equal_to_input_equals_no_context(conformance_suite: Suite, instantiation):
    # spec: OP-2
    suite = conformance_suite
    suite.require(instantiation=instantiation, context=True)

    def body(case: Case):
        z = _f64(suite.forward(case).z)
        z_ctx = _f64(suite.forward(case, context=case.x).z)
        bound = 2 * SAFETY * suite.reference(case).err_z
        assert_within(z_ctx, z, bound, "z with context=x (against no context)")

    suite.check(
        suite.cases(instantiation=instantiation, context=False, key_mask=None, training=None),
        body,
    )
