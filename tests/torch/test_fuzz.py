"""Fuzzing nonlocal_torch with hostile values: constructor, weights, inputs, non-finite values.

Every call either raises ValueError/TypeError naming what is wrong (and changes nothing), or
computes what the float64 reference computes, within the tolerance model's bound.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nonlocal_conformance.dtypes import Precision
from nonlocal_conformance.strategies import feature_shape
from nonlocal_conformance.suite import assert_within
from nonlocal_conformance.trace import SAFETY, trace_forward
from nonlocal_core import INSTANTIATIONS, NonLocalConfig, random_weights
from nonlocal_torch import NonLocalBlock, attention_matrix, nonlocal_attention
from nonlocal_torch.strategies import ALLOWED_STRATEGIES
from tests.hostile import (
    CONFIGS,
    EXTENTS,
    Hostile,
    expect_error,
    fuzz_settings,
    input_mutations,
    junk,
    magnitudes,
    mask_mutations,
    negative_variance,
    overflows,
    positions_finite,
    set_entry,
    weight_mutations,
)

TORCH_EXTRAS = {
    "norm_momentum": st.one_of(st.none(), st.floats(0, 1)),
    "strategy": st.just("auto"),
    "device": st.sampled_from([None, "cpu", torch.device("cpu")]),
    "dtype": st.sampled_from([None, torch.float32, torch.float64]),
}
PLAUSIBLE = {
    "spatial_dims": st.integers(1, 3),
    "instantiation": st.sampled_from(INSTANTIATIONS),
    "inter_channels": st.one_of(st.none(), st.integers(1, 3)),
    "subsample": st.booleans(),
    "norm": st.sampled_from(["batch", None]),
    "data_format": st.sampled_from(["channels_first", "channels_last"]),
    **TORCH_EXTRAS,
}


def _block(config: NonLocalConfig, dtype=torch.float32, seed: int = 1):
    """An eval-mode block and its weights, rounded to `dtype` (what the block really holds)."""
    numpy_dtype = {torch.float32: np.float32, torch.float64: np.float64}[dtype]
    weights = {
        k: v.astype(numpy_dtype).astype(np.float64)
        for k, v in random_weights(config, seed=seed).items()
    }
    block = NonLocalBlock.from_config(config, dtype=dtype).eval()
    block.load_canonical_weights(weights)
    return block, weights


def _x(config: NonLocalConfig, seed: int = 0, channels: int | None = None, extent=None):
    extent = EXTENTS[config.spatial_dims] if extent is None else extent
    channels = config.in_channels if channels is None else channels
    shape = feature_shape(config, 2, extent, channels)
    return np.random.default_rng(seed).normal(size=shape)


def _torch(value, dtype=torch.float32):
    """A NumPy array of a real or bool dtype as a tensor (float arrays in `dtype`); other
    values (text, objects, junk) as they are - the block must reject those by name."""
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiub":
        return value
    t = torch.from_numpy(np.ascontiguousarray(value))
    return t.to(dtype) if t.is_floating_point() else t


def _state(block: NonLocalBlock) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in block.state_dict().items()}


def _assert_unchanged(block: NonLocalBlock, before: dict[str, torch.Tensor]) -> None:
    after = block.state_dict()
    for name, value in before.items():
        assert torch.equal(after[name], value), f"{name} changed by a failed call"


# Construction ----------------------------------------------------------------------------


@fuzz_settings(150)
@given(st.data())
def test_constructor_keywords_with_junk_are_rejected_by_name(data):
    kwargs = {name: data.draw(strategy, label=name) for name, strategy in PLAUSIBLE.items()}
    names = [f.name for f in dataclasses.fields(NonLocalConfig)] + list(TORCH_EXTRAS)
    broken = data.draw(st.sampled_from([n for n in names if n != "in_channels"]), label="junk")
    kwargs[broken] = data.draw(junk(), label=f"junk {broken}")
    try:
        block = NonLocalBlock(4, **kwargs)
    except (ValueError, TypeError):
        expect_error(lambda: NonLocalBlock(4, **kwargs), names)
        return
    cfg = block.config
    extent = cfg.subsample or (2,) * cfg.spatial_dims  # at least one window
    if int(np.prod(extent)) > 4096:  # a huge valid window: construction was the point
        return
    dtype = block.g.weight.dtype
    x = torch.zeros(feature_shape(cfg, 1, extent, 4), dtype=dtype)
    context = torch.zeros(feature_shape(cfg, 1, extent, cfg.context_channels), dtype=dtype)
    assert block(x, context=context).shape == x.shape


def test_unavailable_devices_and_non_float_dtypes_are_rejected_at_construction():
    for device in ("nodevice", "cuda:99" if torch.cuda.is_available() else "cuda"):
        expect_error(lambda d=device: NonLocalBlock(4, device=d), ["device"])
    for dtype in ("float32", torch.int64, torch.complex64, torch.bool):
        expect_error(lambda d=dtype: NonLocalBlock(4, dtype=d), ["dtype"])
    for momentum in ("0.1", -0.1, 1.5, float("nan"), True):
        expect_error(lambda m=momentum: NonLocalBlock(4, norm_momentum=m), ["norm_momentum"])


# Weights ---------------------------------------------------------------------------------


@fuzz_settings(120)
@given(st.sampled_from(CONFIGS), st.data())
def test_a_failed_weight_load_names_the_weight_and_changes_nothing(config, data):
    block, weights = _block(config)
    mutation = data.draw(weight_mutations(config, weights))
    if data.draw(st.booleans(), label="as tensors"):
        mutation = Hostile(
            mutation.what + " (tensors)",
            {k: _torch(v, torch.float64) for k, v in mutation.value.items()},
            mutation.names,
        )
    before = _state(block)
    if mutation.valid:
        block.load_canonical_weights(mutation.value)
        return
    expect_error(lambda: block.load_canonical_weights(mutation.value), mutation.names)
    _assert_unchanged(block, before)


@pytest.mark.parametrize(
    "value, problem",
    [
        (torch.zeros(4, 2, dtype=torch.complex64), "complex64"),
        (torch.zeros(4, 2, dtype=torch.bool), "bool"),
        (torch.zeros(4, 2, device="meta"), "meta"),
    ],
)
def test_tensor_weights_of_a_bad_kind_are_rejected(value, problem):
    config = CONFIGS[0]
    block, weights = _block(config)
    before = _state(block)
    error = expect_error(
        lambda: block.load_canonical_weights({**weights, "out.weight": value}), ["out.weight"]
    )
    assert problem in str(error)
    expect_error(lambda: block.load_canonical_weights(negative_variance(weights).value), ["var"])
    expect_error(lambda: block.load_canonical_weights(list(weights.items())), ["weights"])
    _assert_unchanged(block, before)


def test_bfloat16_and_integer_weights_load_exactly():
    config = CONFIGS[0]
    block, weights = _block(config, dtype=torch.float64)
    bf16 = {k: torch.as_tensor(v).to(torch.bfloat16) for k, v in weights.items()}
    block.load_canonical_weights(bf16)
    for name, value in block.canonical_weights().items():
        assert torch.equal(value, bf16[name].to(torch.float64)), name
    integers = {k: np.round(np.asarray(v) * 8).astype(np.int16) for k, v in weights.items()}
    integers["norm.running_var"] = np.abs(integers["norm.running_var"]) + 1
    block.load_canonical_weights(integers)
    for name, value in block.canonical_weights().items():
        np.testing.assert_array_equal(value.numpy(), integers[name].astype(np.float64))


# Inputs ----------------------------------------------------------------------------------


@fuzz_settings(150)
@given(st.sampled_from(CONFIGS), st.data())
def test_inputs_are_checked_before_use(config, data):
    block, _ = _block(config)
    x = _x(config)
    mutation = data.draw(input_mutations(config, x, "x"))
    value = _torch(mutation.value)
    if mutation.valid:
        assert block(value).shape == value.shape
    else:
        expect_error(lambda: block(value), mutation.names)


@fuzz_settings(100)
@given(st.sampled_from(CONFIGS), st.data())
def test_contexts_and_key_masks_are_checked_before_use(config, data):
    cross = config.replace(context_channels=4 if config.instantiation == "gaussian" else 3)
    block, _ = _block(cross)
    x = torch.from_numpy(_x(cross)).float()
    ctx_extent = {1: (4,), 2: (2, 6), 3: (1, 2, 2)}[cross.spatial_dims]
    context = _x(cross, seed=1, channels=cross.context_channels, extent=ctx_extent)
    key_grid = cross.pooled_extent(ctx_extent) if cross.subsample else ctx_extent
    mask = np.ones((2, *key_grid), bool)
    if data.draw(st.booleans(), label="break the context (else the mask)"):
        mutation = data.draw(input_mutations(cross, context, "context"))
        kwargs = {"context": _torch(mutation.value)}
    else:
        mutation = data.draw(mask_mutations(mask))
        kwargs = {"context": _torch(context), "key_mask": _torch(mutation.value)}
    if mutation.valid:
        assert block(x, **kwargs).shape == x.shape
    else:
        expect_error(lambda: block(x, **kwargs), mutation.names)


def test_tensors_on_another_device_or_of_another_type_are_rejected():
    config = CONFIGS[0]
    block, _ = _block(config)
    x = torch.from_numpy(_x(config)).float()
    expect_error(lambda: block(x.to("meta")), ["x", "device"])
    expect_error(lambda: block(x, context=x.to("meta")), ["context"])
    expect_error(lambda: block(x.numpy()), ["x"])
    expect_error(lambda: block(x.long()), ["x"])  # torch.nn's convention: no integer inputs
    expect_error(lambda: block(x.double()), ["x"])
    expect_error(lambda: block(x, return_attention="no"), ["return_attention"])


@fuzz_settings(60)
@given(
    st.sampled_from(CONFIGS),
    st.sampled_from(["channels_last", "transposed", "expanded", "strided"]),
)
def test_any_memory_layout_gives_the_reference_result(config, layout):
    block, weights = _block(config, dtype=torch.float64)
    x = torch.from_numpy(_x(config))
    if layout == "channels_last":
        fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
        view = x.contiguous(memory_format=fmt) if fmt else x.transpose(1, 2).contiguous()
        view = view if fmt else view.transpose(1, 2)
    elif layout == "transposed":
        view = x.transpose(0, -1).contiguous().transpose(0, -1)
    elif layout == "expanded":
        view = x[:1].expand(x.shape)
    else:
        view = torch.repeat_interleave(x, 2, dim=-1)[..., ::2]
    z = block(view)
    trace = trace_forward(view.numpy(), weights, config, precision=Precision.default("float64"))
    assert_within(z.detach().numpy(), trace.z, trace.err_z * SAFETY, f"z for a {layout} input")


@fuzz_settings(100)
@given(st.sampled_from(INSTANTIATIONS), st.data())
def test_the_functional_api_checks_its_operands(instantiation, data):
    config = NonLocalConfig(4, instantiation=instantiation)
    d = 4 if instantiation == "gaussian" else 2
    ops = {
        "theta": torch.randn(2, 5, d),
        "phi": torch.randn(2, 3, d),
        "g": torch.randn(2, 3, 2),
        "concat_weight": torch.randn(2 * d) if instantiation == "concatenation" else None,
        "mask": torch.ones(2, 3, dtype=torch.bool),
    }
    name = data.draw(st.sampled_from(sorted(ops)), label="operand")
    value = ops[name]
    breakage = {
        "rank": lambda t: t[0],
        "batch": lambda t: torch.cat([t, t[:1]]),
        "width": lambda t: torch.cat([t, t], dim=-1),
        "positions": lambda t: torch.cat([t, t], dim=1) if t.dim() > 1 else t[:1],
        "int": lambda t: t.long(),
        "numpy": lambda t: t.numpy(),
        "none": lambda t: None,
    }
    kind = data.draw(st.sampled_from(sorted(breakage)), label="breakage")
    if value is None or (kind == "none" and name == "mask"):
        return  # absent operands are valid where they are optional
    if (name, kind) in {("theta", "positions"), ("g", "width")}:
        return  # N and C' are theta's and g's own: any number is valid
    ops[name] = breakage[kind](value)
    call = data.draw(st.sampled_from([nonlocal_attention, attention_matrix]), label="entry")
    if call is attention_matrix:
        ops.pop("g")
        if name == "g":
            return
    # phi fixes N': a phi with more positions disagrees with g and the mask as much.
    names = ["phi", "g", "mask"] if (name, kind) == ("phi", "positions") else [name]
    expect_error(lambda: call(config=config, **ops), names)


# Non-finite values and extreme magnitudes (spec IO-4) -----------------------------------


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@fuzz_settings(40)
@given(st.sampled_from(CONFIGS), st.sampled_from([np.nan, np.inf, -np.inf]), st.data())
def test_non_finite_values_reach_what_the_spec_says_and_nothing_else(config, special, data):
    # spec: IO-4, checked for every execution strategy of the drawn config
    block, weights = _block(config, dtype=torch.float64)
    x = _x(config)
    n = int(np.prod(EXTENTS[config.spatial_dims]))
    batch, position = data.draw(st.integers(0, 1)), data.draw(st.integers(0, n - 1))
    channel = data.draw(st.integers(0, config.in_channels - 1))
    bad = x.copy()
    set_entry(bad, config, batch, position, channel, special)
    precision = Precision.default("float64")
    in_query = trace_forward(bad, weights, config, context=x, precision=precision)
    in_key = trace_forward(x, weights, config, context=bad, precision=precision)
    others = np.ones((2, n), bool)
    others[batch, position] = False
    other_item = np.zeros((2, n), bool)
    other_item[1 - batch] = True

    for strategy in ALLOWED_STRATEGIES[config.instantiation]:
        block.strategy = strategy
        # In one query (the context stays finite): no other position; that one surely when
        # the value is NaN or the residual adds it back (ReLU(-inf) = 0 may drop an inf).
        z = block(torch.from_numpy(bad), context=torch.from_numpy(x)).detach().numpy()
        finite = positions_finite(z, config)
        assert finite[others].all(), f"{strategy}: the query's value reached other positions"
        if config.residual or np.isnan(special):
            assert not finite[batch, position], f"{strategy}: the query's value vanished"
        _assert_agrees_at(z, in_query, others, config)
        # In one key/value: the other batch element is untouched; a NaN reaches every query
        # of this one.
        z = block(torch.from_numpy(x), context=torch.from_numpy(bad)).detach().numpy()
        finite = positions_finite(z, config)
        assert finite[other_item].all(), f"{strategy}: the key's value crossed the batch"
        if np.isnan(special):
            assert not finite[batch].any(), f"{strategy}: a NaN key missed some queries"
        _assert_agrees_at(z, in_key, other_item, config)


@pytest.mark.parametrize("config", CONFIGS[:4], ids=INSTANTIATIONS)
def test_a_nan_key_reaches_every_query_under_every_strategy(config):
    # spec: IO-4 (the example the fuzzing found: the sorted concatenation missed it)
    block, _ = _block(config, dtype=torch.float64)
    x = torch.from_numpy(_x(config))
    bad = x.clone()
    bad[0, 0, 1, 1] = float("nan")
    for strategy in ALLOWED_STRATEGIES[config.instantiation]:
        block.strategy = strategy
        finite = positions_finite(block(x, context=bad).detach().numpy(), config)
        assert not finite[0].any() and finite[1].all(), strategy


def _assert_agrees_at(z, trace, positions, config) -> None:
    """z agrees with the reference at the (B, N) `positions`, within the tolerance model."""
    flat = z if config.data_format == "channels_last" else np.moveaxis(z, 1, -1)
    flat = flat.reshape(z.shape[0], -1, flat.shape[-1])
    assert_within(
        flat[positions], trace.z_flat[positions], trace.err_z_flat[positions] * SAFETY, "z"
    )


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the trace's own overflows
@fuzz_settings(60)
@given(st.sampled_from(CONFIGS), magnitudes(), st.data())
def test_extreme_magnitudes_give_the_reference_result_or_overflow_visibly(config, scale, data):
    block, weights = _block(config)
    block.strategy = data.draw(
        st.sampled_from(ALLOWED_STRATEGIES[config.instantiation]), label="strategy"
    )
    x = _x(config) * scale
    z = block(torch.from_numpy(x).float()).detach()
    assert z.shape == x.shape and z.dtype == torch.float32
    trace = trace_forward(
        x.astype(np.float32), weights, config, precision=Precision.default("float32")
    )
    if not overflows(trace, "float32"):
        assert_within(z.numpy(), trace.z, trace.err_z * SAFETY, f"z at scale {scale:.3g}")


@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_a_nan_stays_in_its_position_with_one_bfloat16_channel(data_format):
    # spec: IO-4 (found by the conformance suite: PyTorch's CPU bfloat16 1x1 convolution
    # read a one-channel, channels-last-strided input in pairs of positions)
    config = NonLocalConfig(
        1, spatial_dims=1, instantiation="concatenation", data_format=data_format
    )
    block = NonLocalBlock.from_config(config, dtype=torch.bfloat16)
    block.load_canonical_weights(random_weights(config, seed=0))
    x = torch.randn(1, 1, 6, dtype=torch.bfloat16)
    x[0, 0, 5] = float("nan")
    context = torch.randn(1, 1, 1, dtype=torch.bfloat16)
    if data_format == "channels_last":
        x, context = x.transpose(1, 2).contiguous(), context.transpose(1, 2).contiguous()
    with torch.no_grad():
        z = block.eval()(x, context=context).flatten()
    assert torch.isfinite(z[:5]).all() and torch.isnan(z[5]), z
