"""Hostile values for the fuzzing tests of every backend: junk, broken weights, broken inputs.

Each strategy draws either something an entry point must reject - then with the name the
error must mention - or something it must accept (NaN and infinity in weights, integer
weights, any float width). The tests of each backend (``tests/*/test_fuzz*.py``) feed these to
their entry points and check the outcome with `expect_error`.

Example:
    >>> from nonlocal_core import NonLocalConfig, random_weights
    >>> cfg = NonLocalConfig(4, norm=None)
    >>> weights = random_weights(cfg)
    >>> bad = Hostile("drop 'g.bias'", {k: v for k, v in weights.items() if k != "g.bias"},
    ...               "g.bias")
    >>> from nonlocal_core import check_weights
    >>> expect_error(lambda: check_weights(bad.value, cfg), bad.names)  # doctest: +ELLIPSIS
    WeightError(...)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from nonlocal_core import INSTANTIATIONS, NonLocalConfig, weight_shapes

# The errors bad input may raise (spec ERR-1): ValueError or TypeError, subclasses included.
CLEAN_ERRORS = (ValueError, TypeError)

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


class Hostile:
    """One drawn value: what was done, the value, and the names a rejection must mention
    (empty when the value is valid and must be accepted). Not a dataclass: Hypothesis prints
    dataclass fields, and the value may be kilobytes of arrays."""

    __slots__ = ("names", "value", "what")

    def __init__(self, what: str, value: Any, names: str | Sequence[str] = ()) -> None:
        self.what = what
        self.value = value
        self.names = (names,) if isinstance(names, str) else tuple(names)

    @property
    def valid(self) -> bool:
        """Whether the value must be accepted."""
        return not self.names

    def __repr__(self) -> str:
        return f"Hostile({self.what!r})"


def expect_error(call: Callable[[], Any], names: Sequence[str]) -> BaseException:
    """Run `call`; it must raise ValueError/TypeError whose message mentions one of `names`.

    Any other exception (from deep inside: IndexError, AttributeError, a framework's own
    RuntimeError) fails the test with that exception as the cause, as does returning.

    Example:
        >>> expect_error(lambda: int("x"), ["'x'"])  # doctest: +ELLIPSIS
        ValueError(...)
    """
    try:
        call()
    except CLEAN_ERRORS as exc:
        message = str(exc)
        if not any(name in message for name in names):
            raise AssertionError(
                f"{type(exc).__name__} does not name {' or '.join(map(repr, names))}: {message!r}"
            ) from exc
        return exc
    except Exception as exc:
        raise AssertionError(
            f"expected ValueError/TypeError naming {' or '.join(map(repr, names))}, got "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    raise AssertionError(f"accepted; expected an error naming {' or '.join(map(repr, names))}")


# Configs the fuzz tests of the reference and of nonlocal_torch draw from: every
# instantiation, pooled or not, 1D to 3D, both layouts, without norm or residual.
CONFIGS = [
    NonLocalConfig(4, spatial_dims=2, instantiation=inst, subsample=inst != "gaussian")
    for inst in INSTANTIATIONS
] + [
    NonLocalConfig(3, spatial_dims=1, instantiation="concatenation", data_format="channels_last"),
    NonLocalConfig(2, spatial_dims=3, instantiation="dot_product", norm=None, residual=False),
]
# Extents the default windows divide: every position reaches a key.
EXTENTS = {1: (6,), 2: (4, 4), 3: (2, 2, 4)}


def positions_finite(z: np.ndarray, config: NonLocalConfig) -> np.ndarray:
    """(B, N) booleans: every channel of the output position is finite.

    Example:
        >>> z = np.zeros((1, 2, 3)); z[0, 1, 2] = np.nan
        >>> positions_finite(z, NonLocalConfig(2, spatial_dims=1)).tolist()
        [[True, True, False]]
    """
    axis = 1 if config.data_format == "channels_first" else z.ndim - 1
    return np.isfinite(z).all(axis=axis).reshape(z.shape[0], -1)


def set_entry(x: np.ndarray, config: NonLocalConfig, batch, position, channel, value) -> None:
    """Write `value` into `x` at (batch, flat spatial position, channel), in place.

    Example:
        >>> x = np.zeros((1, 2, 3))
        >>> set_entry(x, NonLocalConfig(2, spatial_dims=1), 0, 2, 1, 7.0); x[0, 1, 2]
        np.float64(7.0)
    """
    grid = np.moveaxis(x, 1, -1) if config.data_format == "channels_first" else x
    grid[(batch, *np.unravel_index(position, grid.shape[1:-1]), channel)] = value


# Junk -------------------------------------------------------------------------------------


class Opaque:
    """An object no entry point knows: it must be rejected, never used."""

    def __repr__(self) -> str:
        return "Opaque()"


def junk() -> st.SearchStrategy[Any]:
    """Values of every Python kind, valid for nothing in particular.

    Example:
        >>> junk().example() is not Ellipsis  # doctest: +SKIP
        True
    """
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.complex_numbers(max_magnitude=1e6),
        st.text(max_size=12),
        st.binary(max_size=8),
        st.just(Opaque()),
        st.just(np.float32(np.nan)),
        st.just(np.int64(2)),
        st.just(np.True_),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.tuples(inner, inner),
            st.dictionaries(st.text(max_size=5), inner, max_size=2),
        ),
        max_leaves=6,
    )


# Weights ----------------------------------------------------------------------------------

BAD_DTYPES = {
    "object": lambda a: a.astype(object),
    "complex": lambda a: a.astype(np.complex128) + 1j,
    "string": lambda a: a.astype(str),
    "bool": lambda a: a > 0,
}


@st.composite
def weight_mutations(draw, config: NonLocalConfig, weights: dict[str, np.ndarray]) -> Hostile:
    """`weights` with one thing broken (missing, extra, mis-shaped, a bad dtype, a ragged
    list, a negative variance) or changed in a way that must be accepted (NaN, infinity,
    integers, another float width, a nested list).

    Example:
        >>> from nonlocal_core import random_weights
        >>> cfg = NonLocalConfig(4)
        >>> h = weight_mutations(cfg, random_weights(cfg)).example()  # doctest: +SKIP
    """
    names = sorted(weight_shapes(config))
    name = draw(st.sampled_from(names))
    value = np.asarray(weights[name])
    kind = draw(
        st.sampled_from(
            [
                "missing",
                "extra",
                "shape",
                "scalar",
                "ragged",
                "opaque",
                *BAD_DTYPES,
                "nonfinite",
                "integer",
                "width",
                "list",
            ]
        )
    )
    out = dict(weights)
    if kind == "missing":
        del out[name]
        return Hostile(f"{name} missing", out, name)
    if kind == "extra":
        extra = draw(st.sampled_from(["theta.weight2", "phi.extra", "norm.weight", name + "_"]))
        out[extra] = value
        return Hostile(f"extra {extra}", out, extra)
    if kind == "shape":
        shape = draw(
            st.sampled_from(
                # A trailing 1 makes a projection matrix a valid 1x1 conv kernel: not junk.
                [
                    (*value.shape, 1 if value.ndim == 1 else 2),
                    (*value.shape[::-1], 2),
                    (value.size + 1,),
                    (0, *value.shape),
                ]
            )
        )
        out[name] = np.zeros(shape)
        return Hostile(f"{name} shaped {shape}", out, name)
    if kind == "scalar":
        out[name] = draw(st.floats(-2, 2))
        return Hostile(f"{name} a scalar", out, name)
    if kind == "ragged":
        out[name] = [[0.0] * 2, [0.0]] if value.ndim == 2 else [[0.0], 0.0]
        return Hostile(f"{name} ragged", out, name)
    if kind == "opaque":
        out[name] = Opaque()
        return Hostile(f"{name} an opaque object", out, name)
    if kind in BAD_DTYPES:
        out[name] = BAD_DTYPES[kind](value)
        return Hostile(f"{name} of dtype {kind}", out, name)
    if kind == "nonfinite":
        special = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        changed = value.astype(np.float64).copy()
        changed.flat[draw(st.integers(0, value.size - 1))] = special
        out[name] = changed
        if name == "norm.running_var" and special == -np.inf:
            return Hostile(f"{name} holds -inf", out, name)
        return Hostile(f"{name} holds {special}", out)  # spec IO-4: propagates, not checked
    if kind == "integer":
        out[name] = np.round(value * 4).astype(draw(st.sampled_from([np.int8, np.int64])))
        return Hostile(f"{name} integer", out)
    if kind == "width":
        out[name] = value.astype(draw(st.sampled_from(FLOAT_DTYPES)))
        return Hostile(f"{name} {out[name].dtype}", out)
    out[name] = value.tolist()
    return Hostile(f"{name} a nested list", out)


def negative_variance(weights: dict[str, np.ndarray]) -> Hostile:
    """`weights` with one negative running variance (spec W-1: an error naming it).

    Example:
        >>> negative_variance({"norm.running_var": np.ones(2)}).names
        ('norm.running_var',)
    """
    var = np.array(weights["norm.running_var"], dtype=np.float64)
    var[-1] = -0.5
    return Hostile(
        "negative running variance", {**weights, "norm.running_var": var}, "norm.running_var"
    )


# Inputs -----------------------------------------------------------------------------------


@st.composite
def input_mutations(draw, config: NonLocalConfig, x: np.ndarray, name: str = "x") -> Hostile:
    """`x` broken (rank, channels, an empty axis, a bad dtype, junk) - each an error naming
    `name` - or valid with NaN/inf (spec IO-4) or in another float width.

    Example:
        >>> cfg = NonLocalConfig(4)
        >>> h = input_mutations(cfg, np.zeros((1, 4, 3, 3))).example()  # doctest: +SKIP
    """
    kind = draw(
        st.sampled_from(
            ["rank+", "rank-", "channels", "empty", *BAD_DTYPES, "junk", "nonfinite", "width"]
        )
    )
    if kind == "rank+":
        return Hostile(f"{name} with an extra axis", x[..., None], name)
    if kind == "rank-":
        return Hostile(f"{name} without its batch axis", x[0], name)
    channel_axis = 1 if config.data_format == "channels_first" else x.ndim - 1
    if kind == "channels":
        extra = draw(st.sampled_from([-1, 1, 3])) if x.shape[channel_axis] > 1 else 1
        shape = list(x.shape)
        shape[channel_axis] += extra
        return Hostile(f"{name} with {shape[channel_axis]} channels", np.zeros(shape), name)
    if kind == "empty":
        axes = [a for a in range(x.ndim) if a != channel_axis]
        axis = draw(st.sampled_from(axes))
        return Hostile(f"{name} empty along axis {axis}", np.take(x, [], axis=axis), name)
    if kind in BAD_DTYPES:
        return Hostile(f"{name} of dtype {kind}", BAD_DTYPES[kind](x), name)
    if kind == "junk":
        # Not None: it means "absent" for a context or a mask, which is valid.
        return Hostile(f"{name} junk", draw(st.sampled_from(["x", Opaque(), {}, 2.5])), name)
    if kind == "nonfinite":
        bad = x.astype(np.float64).copy()
        bad.flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from([np.nan, np.inf]))
        return Hostile(f"{name} with a non-finite entry", bad)
    return Hostile(f"{name} as {kind}", x.astype(draw(st.sampled_from(FLOAT_DTYPES))))


def magnitudes() -> st.SearchStrategy[float]:
    """Scales from far below to far above float32's comfortable range (log-uniform).

    Example:
        >>> 1e-30 <= magnitudes().example() <= 1e30  # doctest: +SKIP
        True
    """
    return st.floats(-30, 30).map(lambda e: math.pow(10.0, e))


# Settings ---------------------------------------------------------------------------------

# NONLOCAL_FUZZ_SCALE multiplies every fuzz test's example count for a deeper local run
# (e.g. NONLOCAL_FUZZ_SCALE=20 ./dev test unit); CI runs the bounded default.
FUZZ_SCALE = float(os.environ.get("NONLOCAL_FUZZ_SCALE", "1"))


def fuzz_settings(max_examples: int) -> settings:
    """Hypothesis settings of a fuzz test: `max_examples` (times ``NONLOCAL_FUZZ_SCALE``), no
    deadline, and under CI (``$CI`` set) derandomized, so a red CI run replays anywhere.

    Example:
        >>> fuzz_settings(10).deadline is None
        True
    """
    return settings(
        max_examples=max(1, round(max_examples * FUZZ_SCALE)),
        deadline=None,
        derandomize=bool(os.environ.get("CI")),
        database=None if os.environ.get("CI") else settings.default.database,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


@st.composite
def mask_mutations(draw, mask: np.ndarray) -> Hostile:
    """A (B, *S') boolean key mask broken (shape, batch, rank, dtype, junk) - each an error
    naming key_mask - or valid in its flat (B, N') form.

    Example:
        >>> h = mask_mutations(np.ones((2, 3, 3), bool)).example()  # doctest: +SKIP
    """
    kind = draw(st.sampled_from(["keys", "batch", "rank", "float", "int", "junk", "flat"]))
    flat = mask.reshape(mask.shape[0], -1)
    if kind == "keys":
        return Hostile(
            "key_mask with one key too many",
            np.ones((flat.shape[0], flat.shape[1] + 1), bool),
            "key_mask",
        )
    if kind == "batch":
        return Hostile(
            "key_mask for another batch",
            np.ones((mask.shape[0] + 1, *mask.shape[1:]), bool),
            "key_mask",
        )
    if kind == "rank":
        return Hostile("key_mask with an extra axis", mask[..., None], "key_mask")
    if kind in ("float", "int"):
        return Hostile(
            f"key_mask of dtype {kind}",
            mask.astype(np.float32 if kind == "float" else np.int32),
            "key_mask",
        )
    if kind == "junk":
        return Hostile("key_mask junk", draw(st.sampled_from(["all", Opaque(), 1.5])), "key_mask")
    return Hostile("key_mask flat (B, N')", flat)


def overflows(trace, dtype: str, margin: float = 16.0) -> bool:
    """Whether computing `trace` (a `nonlocal_conformance.trace.Trace`) in `dtype` may
    overflow: an intermediate, or a product of two that some formulation forms and sums
    (q . k in a fused softmax, phi g^T in the associative dot product, b g in the sorted
    concatenation), comes within `margin` times the reduction length of the dtype's range.
    Below that, an implementation must be finite and within the tolerance bound.

    Example:
        >>> import types
        >>> t = types.SimpleNamespace(
        ...     theta=np.ones((1, 2, 2)), pre=np.ones((1, 2, 2)), y=np.ones((1, 2, 2)),
        ...     u=np.ones((1, 2, 2)), z_flat=np.ones((1, 2, 2)), alpha=None, beta=None,
        ...     phi=types.SimpleNamespace(value=np.ones((1, 2, 2))),
        ...     g=types.SimpleNamespace(value=np.full((1, 2, 2), 1e38)))
        >>> overflows(t, "float32"), overflows(t, "float64")
        (True, False)
    """

    def peak(*arrays) -> float:
        finite = [np.abs(a).max() for a in arrays if a is not None and np.size(a)]
        return float(max(finite, default=0.0))

    theta, phi, g = peak(trace.theta), peak(trace.phi.value), peak(trace.g.value)
    length = max(trace.pre.shape[-1], trace.theta.shape[-1], g and trace.g.value.shape[-1])
    largest = max(
        peak(trace.pre, trace.y, trace.u, trace.z_flat, trace.alpha, trace.beta),
        theta * phi,
        phi * g,
        peak(trace.beta) * g,
        theta,
        phi,
        g,
    )
    return not float(largest) * length * margin < float(np.finfo(dtype).max)
