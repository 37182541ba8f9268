"""Non-finite values propagate by IEEE arithmetic, exactly as far as they reach (spec IO-4)."""

from __future__ import annotations

import numpy as np

from ..strategies import Case
from ..suite import SAFETY, Suite, assert_within


def _positions(a, channels_first: bool) -> np.ndarray:
    """A (B, C, *S) or (B, *S, C) array as (B, N, C), positions in row-major order."""
    a = np.asarray(a, dtype=np.float64)
    if channels_first:
        return np.moveaxis(a.reshape(a.shape[0], a.shape[1], -1), 1, -1)
    return a.reshape(a.shape[0], -1, a.shape[-1])


def _with_nan(a: np.ndarray, rng, channels_first: bool) -> tuple[np.ndarray, int, int]:
    """A copy of the feature map `a` with one random entry NaN: (copy, batch, position)."""
    spatial = a.shape[2:] if channels_first else a.shape[1:-1]
    b = int(rng.integers(a.shape[0]))
    i = int(rng.integers(int(np.prod(spatial))))
    c = int(rng.integers(a.shape[1] if channels_first else a.shape[-1]))
    where = np.unravel_index(i, spatial)
    out = np.array(a, copy=True)
    out[(b, c, *where) if channels_first else (b, *where, c)] = np.nan
    return out, b, i


def _assert_unreached_match(z, z_ref, bound, unreached, what: str) -> None:
    bad = unreached & ~np.isfinite(z).all(axis=-1)
    assert not bad.any(), (
        f"{what} made {int(bad.sum())} output positions it cannot reach non-finite, e.g. "
        f"(batch, position) {tuple(int(k) for k in np.argwhere(bad)[0])}"
    )
    assert_within(z[unreached], z_ref[unreached], bound[unreached], f"z where {what} cannot reach")


def test_nan_in_input_propagates_only_where_it_reaches(conformance_suite: Suite):
    """In inference without a key mask, a NaN put into one entry of x (batch element b,
    query position i):

    - makes z_i of element b non-finite (it reaches theta_i and the residual);
    - without a context and without pooling, reaches a key and a value of element b too, so
      every output position of element b is non-finite (with pooling, whether a max pool
      passes a NaN on is the framework's business);
    - leaves every output position of the other batch elements finite and equal to the
      reference, and, with a context (keys and values read x^, not x), every other query
      position of element b as well.

    With a context, a NaN put into one entry of x^ instead leaves the other batch elements
    finite and equal to the reference and, without pooling, makes every output position of
    its own element non-finite.
    """
    # spec: IO-4 OP-3
    suite = conformance_suite

    def body(case: Case):
        cf = case.config.data_format == "channels_first"
        pooled = case.config.subsample is not None
        rng = np.random.default_rng(case.seed + 2)
        ref = suite.reference(case)  # the finite input: equal wherever the NaN cannot reach
        z_ref, bound = _positions(ref.z, cf), SAFETY * _positions(ref.err_z, cf)

        x, b, i = _with_nan(case.x, rng, cf)
        z = _positions(suite.forward(case, x=x).z, cf)
        what = f"a NaN in x at batch element {b}, position {i}"
        assert not np.isfinite(z[b, i]).all(), f"{what} left z there finite: {z[b, i]}"
        if case.context is None and not pooled:
            finite = np.flatnonzero(np.isfinite(z[b]).all(axis=-1))
            assert finite.size == 0, (
                f"{what} (a key and a value too, no pooling) left {finite.size} of the "
                f"{z.shape[1]} output positions of its batch element finite, e.g. "
                f"position {int(finite[0]) if finite.size else None}"
            )
        unreached = np.ones(z.shape[:2], dtype=bool)
        unreached[b] = case.context is not None
        unreached[b, i] = False
        _assert_unreached_match(z, z_ref, bound, unreached, what)

        if case.context is None:
            return
        context, b, j = _with_nan(case.context, rng, cf)
        z = _positions(suite.forward(case, context=context).z, cf)
        what = f"a NaN in the context at batch element {b}, position {j}"
        if not pooled:
            finite = np.flatnonzero(np.isfinite(z[b]).all(axis=-1))
            assert finite.size == 0, (
                f"{what} (a key and a value, no pooling) left {finite.size} of the "
                f"{z.shape[1]} output positions of its batch element finite"
            )
        unreached = np.ones(z.shape[:2], dtype=bool)
        unreached[b] = False
        _assert_unreached_match(z, z_ref, bound, unreached, what)

    suite.check(suite.cases(context=None, key_mask=False, training=False), body)
