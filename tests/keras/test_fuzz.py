"""NonLocalBlock under hostile input (issue 19): junk arguments, broken weights, broken inputs,
NaN and infinity, huge and tiny magnitudes.

Bad input must raise ValueError or TypeError naming the argument, and change nothing; valid
input (non-finite values, integer or narrower arrays) must run. Values are checked against
the float64 reference with the tolerance model (`trace_forward`), never a hand-picked
tolerance. Eager calls on a few fixed shapes keep the file fast on every backend.
"""

from __future__ import annotations

import dataclasses
import re

import keras
import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from keras import ops

from nonlocal_conformance.dtypes import Precision, cast
from nonlocal_conformance.suite import assert_within
from nonlocal_conformance.trace import SAFETY, trace_forward
from nonlocal_core import INSTANTIATIONS, InputError, NonLocalConfig, random_weights
from nonlocal_keras import NonLocalBlock
from tests.hostile import (
    BAD_DTYPES,
    Hostile,
    Opaque,
    expect_error,
    fuzz_settings,
    input_mutations,
    junk,
    magnitudes,
    mask_mutations,
    negative_variance,
    overflows,
    weight_mutations,
)

from .conftest import make_input, to_numpy

# Few examples each: every one is an eager call (NONLOCAL_FUZZ_SCALE runs more).
FUZZ = fuzz_settings(30)
FEW = fuzz_settings(8)

F32 = Precision.default("float32")
# x only (keys pooled from x), and a context of other channels and extent. One spatial axis
# and few shapes throughout: eager JAX compiles every operation once per new shape.
PLAIN = NonLocalConfig(4, spatial_dims=1, subsample=True, data_format="channels_last")
WITH_CONTEXT = NonLocalConfig(
    4, spatial_dims=1, instantiation="dot_product", context_channels=6, subsample=True
)
CONTEXT_EXTENT = (6,)  # WITH_CONTEXT's context: 3 keys after pooling
WEIGHT_CONFIGS = [
    (NonLocalConfig(4, spatial_dims=1, instantiation="concatenation"), "float32"),
    (NonLocalConfig(4, spatial_dims=1, instantiation="gaussian", norm=None), "float32"),
    (WITH_CONTEXT, "float32"),
    (PLAIN, "float16"),
]
_BLOCKS: dict = {}


def _block(config: NonLocalConfig, dtype: str = "float32"):
    """A cached block holding `random_weights(config)` (reloaded by every caller), weights."""
    key = (config, dtype)
    if key not in _BLOCKS:
        block = NonLocalBlock(**config.to_dict(), dtype=dtype)
        weights = random_weights(config, seed=1)
        block.load_canonical_weights(weights)
        _BLOCKS[key] = block, weights
    block, weights = _BLOCKS[key]
    block.load_canonical_weights(weights)
    return block, weights


def _inputs(config: NonLocalConfig) -> tuple[np.ndarray, np.ndarray | None]:
    x = make_input(config).astype("float32")
    if config.context_channels == config.in_channels:
        return x, None
    ctx = make_input(config, seed=1, extent=CONTEXT_EXTENT, channels=config.context_channels)
    return x, ctx.astype("float32")


def _names(exc: BaseException, names) -> None:
    """The message (Keras's own frame around it removed) names one of `names` as a word."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split("Arguments received by")[0]
    words = [rf"(?<!\w){re.escape(n)}(?!\w)" for n in names]
    assert any(re.search(w, text) for w in words), f"{names} not named as a word: {text!r}"


def expect_named(call, names) -> BaseException:
    """`expect_error`, and the name must stand as a word ("x" is in every "expected")."""
    exc = expect_error(call, names)
    _names(exc, names)
    return exc


def _same_bits(before: dict, after: dict) -> None:
    assert sorted(before) == sorted(after)
    for name, value in before.items():
        assert value.dtype == after[name].dtype and value.shape == after[name].shape, name
        assert value.tobytes() == after[name].tobytes(), f"{name} changed"


def _flat(z: np.ndarray, config: NonLocalConfig) -> np.ndarray:
    """(B, N, C): z's positions, each with all of its channels."""
    if config.data_format == "channels_first":
        z = np.moveaxis(z, 1, -1)
    return z.reshape(z.shape[0], -1, z.shape[-1])


def _rounded(weights: dict) -> dict:
    """Weights as a float32 block holds them, in float64 carriers for the reference."""
    return {k: np.asarray(cast(v, "float32"), np.float64) for k, v in weights.items()}


# Constructor -------------------------------------------------------------------------------

_FIELDS = [field.name for field in dataclasses.fields(NonLocalConfig)]

KEYWORDS = [*_FIELDS, "norm_momentum", "use_fused_attention", "dtype"]
# Values next to the valid ones, drawn as often as junk: flags, bounds, a string that reads
# as true.
EDGES = [True, False, None, "no", "", 0, 1, 2, 0.5, -1, 1.5, float("nan"), np.float32(0.5)]
# The fields the layer may leave to its input (None) or to Keras (data_format).
KERAS_NONE = ("in_channels", "spatial_dims", "data_format")


def _should_accept(keyword: str, value) -> bool | None:
    """Whether NonLocalBlock(in_channels=4, spatial_dims=1, keyword=value) is valid; None
    where only Keras knows (the dtype policy)."""
    if keyword == "dtype":
        return None
    if keyword == "use_fused_attention":
        return isinstance(value, bool | np.bool_)
    if keyword == "norm_momentum":
        real = isinstance(value, int | float | np.integer | np.floating)
        return bool(real and not isinstance(value, bool) and 0.0 <= value <= 1.0)
    if value is None and keyword in KERAS_NONE:
        return True
    fields = {"in_channels": 4, "spatial_dims": 1, "data_format": "channels_last"}
    try:
        NonLocalConfig(**{**fields, keyword: value})  # the reference's own validation
    except (ValueError, TypeError):
        return False
    return True


@pytest.mark.parametrize("keyword", KEYWORDS)
@FEW
@given(value=st.one_of(st.sampled_from(EDGES), junk()))
def test_constructor_rejects_junk_by_name_or_builds_a_working_layer(keyword, value):
    # spec: CFG-1 ERR-1
    accept = _should_accept(keyword, value)
    make = lambda: NonLocalBlock(**{"in_channels": 4, "spatial_dims": 1, keyword: value})  # noqa: E731
    if accept is False:
        event("rejected")
        expect_named(make, [keyword])
        return
    try:
        block = make()
    except (ValueError, TypeError) as exc:
        assert accept is None, f"{keyword}={value!r} is valid, but: {exc}"
        event("rejected")
        _names(exc, [keyword])
        return
    event("accepted")
    fields = {name: block.get_config()[name] for name in _FIELDS}
    fields["in_channels"] = fields["in_channels"] or 4  # None: read from the input
    fields["spatial_dims"] = fields["spatial_dims"] or 1
    config = NonLocalConfig(**fields)
    if max(config.in_channels, config.inter_channels, config.context_channels) > 16:
        return  # valid, but too wide for a test input
    x = make_input(config).astype("float32")
    context = None
    if config.context_channels != config.in_channels:
        context = make_input(config, channels=config.context_channels).astype("float32")
    extent = _to_grid(x, config).shape[1:-1]
    if any(w > e for w, e in zip(config.subsample or (), extent)):
        expect_named(lambda: block(x, context=context), ["x", "context"])  # spec: POOL-2
        return
    z = block(x, context=context)
    assert tuple(z.shape) == x.shape
    assert keras.backend.standardize_dtype(z.dtype) == block.compute_dtype


@pytest.mark.parametrize("dtype", ["int32", "uint8", "complex64", "bool", "int8_from_float32"])
def test_constructor_rejects_a_non_floating_dtype_policy(dtype):
    # Once accepted, then failing inside the first call (TensorFlow InvalidArgumentError,
    # NotImplementedError on torch).
    exc = expect_named(lambda: NonLocalBlock(4, spatial_dims=1, dtype=dtype), ["dtype"])
    assert isinstance(exc, ValueError)


def test_a_mixed_policy_stays_valid():
    block = NonLocalBlock(4, spatial_dims=1, dtype="mixed_bfloat16")  # float32 variables
    z = block(make_input(block.nonlocal_config).astype("float32"))
    assert keras.backend.standardize_dtype(z.dtype) == block.compute_dtype


@pytest.mark.parametrize("value", ["no", "", 1, 0.0, None, np.int64(1)])
def test_use_fused_attention_must_be_a_bool(value):
    # bool("no") is True: a string once switched the fused path on.
    exc = expect_named(lambda: NonLocalBlock(use_fused_attention=value), ["use_fused_attention"])
    assert isinstance(exc, TypeError)


# Weights -----------------------------------------------------------------------------------


def _check_load(block: NonLocalBlock, hostile: Hostile) -> None:
    before = block.canonical_weights()
    if hostile.valid:
        block.load_canonical_weights(hostile.value)
        loaded = block.canonical_weights()
        for name, value in hostile.value.items():
            want = np.asarray(value).astype(before[name].dtype)
            assert loaded[name].tobytes() == want.tobytes(), name
        return
    expect_named(lambda: block.load_canonical_weights(hostile.value), hostile.names)
    _same_bits(before, block.canonical_weights())  # nothing assigned before the error


@FUZZ
@given(data=st.data())
def test_load_canonical_weights_rejects_by_name_and_changes_nothing(data):
    # spec: W-1 ERR-1
    config, dtype = data.draw(st.sampled_from(WEIGHT_CONFIGS), label="config, dtype")
    block, weights = _block(config, dtype)
    mutations = weight_mutations(config, weights)
    if config.norm == "batch":
        mutations = st.one_of(mutations, st.just(negative_variance(weights)))
    hostile = data.draw(mutations)
    event("accepted" if hostile.valid else "rejected")
    _check_load(block, hostile)


@pytest.mark.parametrize("kind", [*BAD_DTYPES, "ragged"])
def test_weights_of_a_bad_dtype_or_ragged_are_rejected_before_any_assign(kind):
    # Complex weights once lost their imaginary part; object arrays loaded on TensorFlow and
    # JAX; strings and ragged lists failed inside NumPy without naming the weight. The bad
    # weight is the last one, so that a loader assigning as it goes would have changed the
    # others.
    config, dtype = WEIGHT_CONFIGS[0]
    block, weights = _block(config, dtype)
    name = sorted(weights)[-1]
    value = weights[name]
    bad = [[0.0, 0.0], [0.0]] if kind == "ragged" else BAD_DTYPES[kind](value)
    changed = {k: v + 1.0 for k, v in weights.items() if k != name}
    _check_load(block, Hostile(kind, {**changed, name: bad}, name))


# Calls -------------------------------------------------------------------------------------


def _check_call(block: NonLocalBlock, hostile: Hostile, like: np.ndarray, **kwargs) -> None:
    """A valid call returns z shaped like `like`; a rejected one names the argument and
    changes no weight (with `training=True`, the running statistics)."""
    before = block.canonical_weights()
    if hostile.valid:
        z = block(**kwargs)
        z = z[0] if kwargs.get("return_attention") else z
        assert tuple(z.shape) == like.shape
        assert keras.backend.standardize_dtype(z.dtype) == block.compute_dtype
        return
    expect_named(lambda: block(**kwargs), hostile.names)
    _same_bits(before, block.canonical_weights())


@FUZZ
@given(data=st.data(), training=st.booleans())
def test_call_with_hostile_x_or_context(data, training):
    # spec: ERR-1 IO-2 IO-4
    target = data.draw(st.sampled_from(["x", "context", "x with context"]), label="argument")
    config = PLAIN if target == "x" else WITH_CONTEXT
    block, _ = _block(config)
    x, ctx = _inputs(config)
    if target == "context":
        hostile = data.draw(input_mutations(config, ctx, "context"))
        event("accepted" if hostile.valid else "rejected")
        _check_call(block, hostile, x, x=x, context=hostile.value, training=training)
    else:
        hostile = data.draw(input_mutations(config, x, "x"))
        event("accepted" if hostile.valid else "rejected")
        _check_call(block, hostile, hostile.value, x=hostile.value, context=ctx, training=training)


@st.composite
def more_mask_mutations(draw, grid: np.ndarray) -> Hostile:
    """What `mask_mutations` leaves out: the valid grid form, a missing batch axis, other
    widths and more junk (each reaches Keras's own conversion of arguments first)."""
    kind = draw(st.sampled_from(["grid", "rank-", "float64", "int8", "junk"]))
    if kind == "grid":
        return Hostile("grid mask", grid)
    if kind == "rank-":
        return Hostile("mask without its batch axis", grid[0], "key_mask")
    if kind != "junk":
        return Hostile(f"mask of dtype {kind}", grid.astype(kind), "key_mask")
    value = draw(st.sampled_from(["x", Opaque(), {}, None, True, [[1, 0]], b"\x01"]))
    return Hostile(f"mask {value!r}", value, () if value is None else "key_mask")


@FUZZ
@given(data=st.data(), training=st.booleans())
def test_call_with_hostile_key_mask(data, training):
    # spec: MASK-1 ERR-1
    block, _ = _block(WITH_CONTEXT)
    x, ctx = _inputs(WITH_CONTEXT)
    key_grid = WITH_CONTEXT.pooled_extent(CONTEXT_EXTENT)
    seed = data.draw(st.integers(0, 2**16), label="seed")
    grid = np.random.default_rng(seed).random((x.shape[0], *key_grid)) > 0.3
    hostile = data.draw(st.one_of(mask_mutations(grid), more_mask_mutations(grid)))
    event("accepted" if hostile.valid else "rejected")
    _check_call(block, hostile, x, x=x, context=ctx, key_mask=hostile.value, training=training)


@FUZZ
@given(data=st.data())
def test_call_flags_must_be_bools(data):
    # spec: ERR-1 ("no" once read as True)
    block, _ = _block(PLAIN)
    x, _ = _inputs(PLAIN)
    flag = data.draw(st.sampled_from(["training", "return_attention"]), label="flag")
    value = data.draw(
        st.one_of(
            st.booleans(), st.none(), junk(), st.sampled_from(["no", "False", 0, 1, np.int64(0)])
        )
    )
    valid = isinstance(value, bool | np.bool_) or (value is None and flag == "training")
    hostile = Hostile(f"{flag}={value!r}", value, () if valid else flag)
    event("accepted" if hostile.valid else "rejected")
    other = {"training": True} if flag == "return_attention" else {}
    _check_call(block, hostile, x, x=x, **{flag: value}, **other)


def test_a_rejected_first_call_leaves_the_block_unconfigured():
    # The first input fixes in_channels and spatial_dims, but only once every argument fits.
    block = NonLocalBlock(subsample=True, data_format="channels_last")
    x6 = np.zeros((2, 5, 5, 6), "float32")
    expect_named(lambda: block(x6, context=np.zeros((2, 5, 5, 3), "float32")), ["context"])
    assert not block.built
    x, _ = _inputs(PLAIN)  # (2, 7, 4): PLAIN's config
    assert tuple(block(x).shape) == x.shape
    assert block.nonlocal_config == PLAIN


@pytest.mark.parametrize("kind", ["string", "object"])
def test_string_and_object_arrays_of_numbers_are_rejected(kind):
    # JAX once parsed "0.125" and computed; torch said "Invalid dtype: str1024"; TensorFlow
    # failed inside its converter for object arrays. None named x.
    block, _ = _block(PLAIN)
    x, _ = _inputs(PLAIN)
    bad = x.astype(str) if kind == "string" else x.astype(object)
    exc = expect_named(lambda: block(bad), ["x"])
    assert isinstance(exc, InputError)
    ctx_block, _ = _block(WITH_CONTEXT)
    x, ctx = _inputs(WITH_CONTEXT)
    bad = ctx.astype(str) if kind == "string" else ctx.astype(object)
    expect_named(lambda: ctx_block(x, context=bad), ["context"])


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int32", "int64"])
@pytest.mark.parametrize("as_tensor", [False, True], ids=["numpy", "tensor"])
def test_integer_inputs_are_rejected_with_the_fix(dtype, as_tensor):
    # spec: IO-3 (integer inputs are an error naming the argument, in every backend)
    block, _ = _block(WITH_CONTEXT)
    x, ctx = _inputs(WITH_CONTEXT)
    x_int = np.round(np.abs(x) * 20).astype(dtype)
    ctx_int = np.round(np.abs(ctx) * 20).astype(dtype)
    if as_tensor:
        x_int, ctx_int = ops.convert_to_tensor(x_int), ops.convert_to_tensor(ctx_int)
    for args, name in (((x_int, ctx), "x"), ((x, ctx_int), "context")):
        with pytest.raises(
            InputError,
            match=rf"^{name} has dtype u?int\d+: expected a float.*"
            rf"keras\.ops\.cast\({name}, \"float32\"\)",
        ):
            block(args[0], context=args[1])


# NaN and infinity (spec IO-4) --------------------------------------------------------------


@st.composite
def io4_configs(draw, instantiation: str) -> NonLocalConfig:
    subsample = draw(st.booleans())
    return NonLocalConfig(
        4,
        spatial_dims=1,  # one rank: each new shape costs eager JAX a compile per operation
        instantiation=instantiation,
        context_channels=4 if instantiation == "gaussian" else 6,
        subsample=subsample,
        pool_position=draw(st.sampled_from(["after_projection", "before_projection"])),
        data_format=draw(st.sampled_from(["channels_first", "channels_last"])),
    )


def _io4_case(config: NonLocalConfig):
    x = make_input(config, seed=2).astype("float32")  # extent 7
    ctx = make_input(config, seed=3, extent=CONTEXT_EXTENT, channels=config.context_channels)
    return x, ctx.astype("float32")


def _to_grid(a: np.ndarray, config: NonLocalConfig) -> np.ndarray:
    return np.moveaxis(a, 1, -1) if config.data_format == "channels_first" else a


def _compare_io4(block, config, x, ctx, weights, nonfinite: np.ndarray) -> None:
    """z's non-finite positions are exactly `nonfinite` (B, N), as in the float64 reference;
    every other position agrees with the reference within the tolerance model."""
    z = _flat(to_numpy(block(x, context=ctx, training=False)), config)
    with np.errstate(all="ignore"):
        ref = trace_forward(x, _rounded(weights), config, context=ctx, precision=F32)
    ref_bad = ~np.isfinite(ref.z_flat).all(axis=-1)
    np.testing.assert_array_equal(ref_bad, nonfinite, "the reference's non-finite positions")
    got_bad = ~np.isfinite(z).all(axis=-1)
    np.testing.assert_array_equal(got_bad, nonfinite, "non-finite output positions")
    ok = ~nonfinite
    assert_within(z[ok], ref.z_flat[ok], SAFETY * ref.err_z_flat[ok], "z at finite positions")


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
@FEW
@given(data=st.data())
def test_non_finite_query_reaches_only_its_own_position(instantiation, data):
    # spec: IO-4
    config = data.draw(io4_configs(instantiation), label="config")
    block, weights = _block(config)
    x, ctx = _io4_case(config)
    grid = _to_grid(x, config)  # a view: writes reach x
    batch, *extent, channels = grid.shape
    where = tuple(data.draw(st.integers(0, n - 1)) for n in (batch, *extent, channels))
    grid[where] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]), label="value")
    nonfinite = np.zeros((batch, int(np.prod(extent))), bool)
    nonfinite[where[0], np.ravel_multi_index(where[1:-1], extent)] = True
    _compare_io4(block, config, x, ctx, weights, nonfinite)


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
@FEW
@given(data=st.data())
def test_nan_in_context_reaches_every_position_of_its_batch_element(instantiation, data):
    # spec: IO-4 OP-3
    config = data.draw(io4_configs(instantiation), label="config")
    block, weights = _block(config)
    x, ctx = _io4_case(config)
    grid = _to_grid(ctx, config)
    batch, *extent, channels = grid.shape
    windows = config.subsample or (1,) * len(extent)
    kept = [e // w * w for e, w in zip(extent, windows)]  # floor pooling drops the rest
    where = tuple(data.draw(st.integers(0, n - 1)) for n in (batch, *kept, channels))
    grid[where] = np.nan
    nonfinite = np.zeros((batch, int(np.prod(_to_grid(x, config).shape[1:-1]))), bool)
    nonfinite[where[0]] = True
    _compare_io4(block, config, x, ctx, weights, nonfinite)


# Magnitudes --------------------------------------------------------------------------------


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
@FUZZ
@given(scale=magnitudes(), data_format=st.sampled_from(["channels_first", "channels_last"]))
def test_huge_and_tiny_magnitudes(instantiation, scale, data_format):
    # spec: IO-4 NUM-1
    config = NonLocalConfig(
        4, spatial_dims=1, instantiation=instantiation, subsample=True, data_format=data_format
    )
    block, weights = _block(config)
    with np.errstate(over="ignore"):
        x = (make_input(config, seed=4) * scale).astype("float32")
    z = block(x, training=False)
    assert tuple(z.shape) == x.shape
    assert keras.backend.standardize_dtype(z.dtype) == block.compute_dtype
    z = to_numpy(z)
    with np.errstate(all="ignore"):
        ref = trace_forward(x, _rounded(weights), config, precision=F32)
    # No intermediate, nor a product some formulation sums, near float32's range (with a
    # margin of the reduction length): then z must be finite and within the bound.
    if not overflows(ref, "float32"):
        event("no overflow: z checked against the reference")
        assert np.isfinite(z).all(), "finite intermediates, non-finite output"
        assert_within(z, ref.z, SAFETY * ref.err_z, f"z at scale {scale:g}")
    else:
        # Overflow: the outputs it reaches become non-finite, never a wrong finite number.
        event("overflow")
        ok = np.isfinite(z)
        with np.errstate(all="ignore"):
            assert_within(z[ok], ref.z[ok], SAFETY * ref.err_z[ok], f"finite z at {scale:g}")
