"""Canonical weights: what goes in comes out, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from nonlocal_core import INSTANTIATIONS, weight_shapes

from ..strategies import Case
from ..suite import Suite


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_exported_weights_equal_the_built_weights_bit_for_bit(
    conformance_suite: Suite, instantiation
):
    # spec: W-1 W-2
    suite = conformance_suite
    suite.require(instantiation=instantiation)

    def body(case: Case):
        exported = suite.adapter.export_weights(suite.build(case))
        expected = weight_shapes(case.config)
        assert sorted(exported) == sorted(expected), (
            f"exported names {sorted(exported)}, expected exactly {sorted(expected)}"
        )
        for name, value in exported.items():
            got = np.asarray(value, dtype=np.float64)
            want = np.asarray(case.weights[name], dtype=np.float64)
            assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
            changed = got != want
            assert not changed.any(), (
                f"{name}: {int(changed.sum())} entries changed in the round trip, e.g. "
                f"{want[changed][0]!r} -> {got[changed][0]!r}"
            )

    suite.check(
        suite.cases(instantiation=instantiation, pooled=None),
        body,
        suite.examples(instantiation=instantiation),
    )
