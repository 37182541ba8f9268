"""NonLocalBlock as a Keras citizen: models with unknown shapes, serialisation, canonical
weights, mixed precision, errors, running statistics and doctests."""

from __future__ import annotations

import doctest
import warnings

import keras
import numpy as np
import pytest

from nonlocal_conformance.dtypes import Precision, cast, unit_roundoff
from nonlocal_conformance.trace import SAFETY, batch_norm_step, trace_forward
from nonlocal_core import (
    INSTANTIATIONS,
    InputError,
    NonLocalConfig,
    WeightError,
    check_shapes,
    init_weights,
    nonlocal_forward,
    random_weights,
)
from nonlocal_keras import NonLocalBlock

from .conftest import loaded_block, make_input, to_numpy


def _cfg(**kwargs) -> NonLocalConfig:
    return NonLocalConfig(8, spatial_dims=2, data_format="channels_last", **kwargs)


def test_new_block_is_identity_and_infers_its_config():
    block = NonLocalBlock(subsample=True)  # in_channels, spatial_dims from the first input
    x = make_input(_cfg()).astype("float32")
    np.testing.assert_array_equal(to_numpy(block(x, training=True)), x)
    assert block.nonlocal_config == _cfg(subsample=True)
    assert keras.config.image_data_format() == "channels_last"
    got = {k: v.shape for k, v in block.canonical_weights().items()}
    assert got == {k: v.shape for k, v in init_weights(block.nonlocal_config).items()}


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_functional_model_with_unknown_batch_and_extent(data_format):
    cfg = NonLocalConfig(8, spatial_dims=2, subsample=True, data_format=data_format)
    block, weights = loaded_block(cfg)
    shape = (None, None, 8) if data_format == "channels_last" else (8, None, None)
    inputs = keras.Input(shape)
    z = block(inputs)
    assert tuple(z.shape) == (None, *shape)
    model = keras.Model(inputs, z)
    for extent in ((5, 4), (6, 7)):  # one model, two spatial extents
        x = make_input(cfg, batch=3, extent=extent).astype("float32")
        want = nonlocal_forward(x, weights, cfg)
        np.testing.assert_allclose(to_numpy(model(x)), want, atol=1e-5)
        np.testing.assert_allclose(model.predict(x, verbose=0), want, atol=1e-5)


def test_functional_model_with_context_mask_and_attention():
    cfg = _cfg(instantiation="concatenation", context_channels=6, subsample=True)
    block, weights = loaded_block(cfg)
    x_in, ctx_in = keras.Input((5, 4, 8)), keras.Input((6, 6, 6))
    mask_in = keras.Input((3, 3), dtype="bool")
    z, a = block(x_in, context=ctx_in, key_mask=mask_in, return_attention=True)
    assert tuple(z.shape) == (None, 5, 4, 8) and tuple(a.shape) == (None, 20, 9)
    model = keras.Model([x_in, ctx_in, mask_in], [z, a])
    x = make_input(cfg).astype("float32")
    ctx = make_input(cfg, extent=(6, 6), channels=6, seed=1).astype("float32")
    mask = np.random.default_rng(2).random((2, 3, 3)) > 0.3
    want_z, want_a = nonlocal_forward(
        x, weights, cfg, context=ctx, key_mask=mask, return_attention=True
    )
    got_z, got_a = model([x, ctx, mask])
    np.testing.assert_allclose(to_numpy(got_z), want_z, atol=1e-5)
    np.testing.assert_allclose(to_numpy(got_a), want_a, atol=1e-5)


def test_sequential_model_and_output_shape():
    block = NonLocalBlock(instantiation="dot_product", spatial_dims=3)
    model = keras.Sequential([keras.Input((2, 4, 4, 6)), block, keras.layers.Flatten()])
    assert model.output_shape == (None, 2 * 4 * 4 * 6)
    assert block.compute_output_shape((None, 2, 4, 4, 6)) == (None, 2, 4, 4, 6)
    assert tuple(model(np.zeros((3, 2, 4, 4, 6), "float32")).shape) == (3, 192)


def test_get_config_round_trip_and_from_nonlocal_config():
    cfg = NonLocalConfig(
        8,
        spatial_dims=3,
        instantiation="gaussian",
        subsample=(1, 2, 2),
        logit_scale=0.5,
        norm_eps=1e-3,
        data_format="channels_last",
    )
    block = NonLocalBlock.from_config(cfg)
    assert block.nonlocal_config == cfg
    clone = NonLocalBlock.from_config(block.get_config())
    assert clone.nonlocal_config == cfg and clone.name == block.name
    partial = NonLocalBlock(instantiation="dot_product", norm_momentum=0.5)  # not built yet
    again = NonLocalBlock.from_config(partial.get_config())
    assert again.get_config() == partial.get_config()
    with pytest.raises(ValueError, match=r"in_channels/spatial_dims are read from the first"):
        partial.nonlocal_config


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_saved_model_reloads_with_identical_outputs(tmp_path, instantiation):
    cfg = _cfg(instantiation=instantiation, subsample=True, pool_position="before_projection")
    block, _ = loaded_block(cfg, seed=4)
    inputs = keras.Input((None, None, 8))
    model = keras.Model(inputs, keras.layers.Dense(3)(block(inputs)))
    x = make_input(cfg).astype("float32")
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))
    reloaded_block = loaded.layers[1]
    assert isinstance(reloaded_block, NonLocalBlock)
    assert reloaded_block.nonlocal_config == cfg
    for name, value in block.canonical_weights().items():
        np.testing.assert_array_equal(reloaded_block.canonical_weights()[name], value)


def test_canonical_weights_round_trip_exactly_and_are_checked(adapter):
    # `adapter`: float64 on JAX needs jax_enable_x64, which the adapter turns on.
    cfg = _cfg(instantiation="concatenation")
    weights = random_weights(cfg, seed=5)
    block = NonLocalBlock(**cfg.to_dict(), dtype="float64")
    block.load_canonical_weights(weights)
    out = block.canonical_weights()
    assert sorted(out) == sorted(weights)
    for name in weights:
        np.testing.assert_array_equal(out[name], weights[name])
    bad = dict(weights)
    bad["theta.weight"] = bad["theta.weight"].T
    with pytest.raises(WeightError, match=r"theta\.weight.*shape \(8, 4\), expected \(4, 8\)"):
        block.load_canonical_weights(bad)
    with pytest.raises(WeightError, match="missing"):
        block.load_canonical_weights({})


def _rounded(weights: dict, dtype: str) -> dict:
    """Weights as a layer under a `dtype` compute policy reads them (float64 carriers).

    Autocast rounds every variable to the compute dtype, except the running statistics,
    which stay float32 (`autocast=False`).
    """
    running = ("norm.running_mean", "norm.running_var")
    return {k: _as64(cast(v, "float32" if k in running else dtype)) for k, v in weights.items()}


def _as64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_policies(policy):
    """Half-precision storage, float32 BN statistics (the layer's claim), float32 variables."""
    cfg = _cfg(subsample=True)
    block, weights = loaded_block(cfg, dtype=policy)
    low = block.compute_dtype
    assert low == policy.split("_")[1] and block.variable_dtype == "float32"
    assert all(w.dtype == "float32" for w in block.weights)
    # The same block without norm and residual outputs u = W_z y + b_z as the layer stores it.
    without_norm = cfg.replace(norm=None, residual=False)
    before_norm = NonLocalBlock(**without_norm.to_dict(), dtype=policy)
    before_norm.load_canonical_weights({k: v for k, v in weights.items() if k[:5] != "norm."})
    x = make_input(cfg).astype("float32")
    x_low, w_low = _as64(cast(x, low)), _rounded(weights, low)
    u = to_numpy(before_norm(x)).reshape(-1, 8)
    us = unit_roundoff(low)
    for training in (False, True):
        z = block(x, training=training)
        assert keras.backend.standardize_dtype(z.dtype) == low
        z = to_numpy(z)
        # The whole block against the float64 reference on the same rounded inputs, under the
        # tolerance model of half storage with float32 sums (a worst case: loose, per entry).
        trace = trace_forward(
            x_low, w_low, cfg, training=training, precision=Precision(low, low, "float32")
        )
        assert (np.abs(z - trace.z) <= SAFETY * trace.err_z).all()
        # and no further off than the ceiling this test always had.
        np.testing.assert_allclose(z, trace.z, atol=0.1 if low == "bfloat16" else 0.02)
        # The norm step alone, on the layer's own u: statistics and normalisation in float32
        # leave one rounding to the compute dtype (v) and one in the residual sum (z), plus
        # float32's own error. Half-precision statistics would add several more roundings.
        # The tolerance model's BN step at float32, given u exactly (err_u = 0).
        v, err_v, *_ = batch_norm_step(
            Precision.default("float32"), u, np.zeros_like(u), w_low, cfg.norm_eps, training
        )
        want = v + x_low.reshape(-1, 8)
        bound = us * (np.abs(v) + np.abs(want)) + err_v
        assert (np.abs(z.reshape(-1, 8) - want) <= SAFETY * bound).all()
    inputs = keras.Input((5, 4, 8))
    model = keras.Model(inputs, block(inputs))
    assert keras.backend.standardize_dtype(model.output.dtype) == low


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_softmax_is_computed_in_float32(policy):
    """Gaussian theta and phi are x and pooled x: exact in the compute dtype, so the logits
    and softmax are float32 work on exact inputs, rounded once to the compute dtype."""
    cfg = _cfg(instantiation="gaussian", subsample=True)
    block, weights = loaded_block(cfg, dtype=policy)
    low = block.compute_dtype
    # Logits up to ~40: storing them in half precision would move the attention by many
    # half-precision roundings.
    x = 3 * make_input(cfg).astype("float32")
    _, attention = block(x, return_attention=True)
    trace = trace_forward(
        _as64(cast(x, low)), _rounded(weights, low), cfg, precision=Precision.default("float32")
    )
    half = Precision.default(low)
    cast_error = half.u_storage * trace.attention + half.tiny  # the cast, underflow included
    bound = SAFETY * (trace.err_attention + cast_error)
    assert (np.abs(to_numpy(attention) - trace.attention) <= bound).all()


@pytest.mark.parametrize("instantiation", ["gaussian", "embedded_gaussian"])
def test_fused_attention_path_matches_plain_softmax(instantiation):
    cfg = _cfg(instantiation=instantiation, inter_channels=8, subsample=True)
    x = make_input(cfg).astype("float32")
    mask = np.ones((2, 2, 2), dtype=bool)
    mask[0] = False  # an item with no valid key
    mask[1, 0, 0] = False
    fused, weights = loaded_block(cfg, seed=6)
    plain, _ = loaded_block(cfg, seed=6, use_fused_attention=False)
    want = nonlocal_forward(x, weights, cfg, key_mask=mask)
    np.testing.assert_allclose(to_numpy(fused(x, key_mask=mask)), want, atol=1e-5)
    np.testing.assert_allclose(to_numpy(plain(x, key_mask=mask)), want, atol=1e-5)


@pytest.mark.parametrize("instantiation", ["gaussian", "embedded_gaussian"])
def test_a_single_key_is_valid_and_warns_nothing(instantiation):
    cfg = NonLocalConfig(
        4,
        spatial_dims=2,
        instantiation=instantiation,
        subsample=True,
        data_format="channels_last",
    )
    block, weights = loaded_block(cfg, seed=7)  # random weights: far from the identity
    x = make_input(cfg, 1, extent=(2, 2)).astype("float32")  # pooled 2x2: one key
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras's "softmax over an axis of size 1" warning
        z, attention = block(x, return_attention=True)
        z_fused = block(x)  # keras.ops.dot_product_attention where exact
    np.testing.assert_array_equal(to_numpy(attention), np.ones((1, 4, 1)))
    trace = trace_forward(
        x, _rounded(weights, "float32"), cfg, precision=Precision.default("float32")
    )
    assert not np.allclose(trace.z, x), "the block must not be the identity here"
    for out in (z, z_fused):
        assert (np.abs(to_numpy(out) - trace.z) <= SAFETY * trace.err_z).all()


def test_input_errors_match_the_reference_messages():
    cfg = _cfg(subsample=True, context_channels=6)
    block, _ = loaded_block(cfg)
    x = make_input(cfg).astype("float32")
    ctx = make_input(cfg, channels=6).astype("float32")
    bad_cases = [
        {"x": x[..., :5], "context": ctx},
        {"x": x, "context": ctx[:1]},
        {"x": x, "context": ctx, "key_mask": np.ones((2, 5), bool)},
        {"x": x, "context": ctx[:, :1]},
    ]
    for case in bad_cases:
        with pytest.raises(InputError) as want:
            check_shapes(
                cfg,
                case["x"].shape,
                case["context"].shape,
                None if "key_mask" not in case else case["key_mask"].shape,
            )
        with pytest.raises(InputError) as got:
            block(case["x"], context=case["context"], key_mask=case.get("key_mask"))
        assert str(want.value) in str(got.value)
    with pytest.raises(InputError, match="context is required"):
        block(x)
    with pytest.raises(InputError, match="key_mask has dtype float32: expected bool"):
        block(x, context=ctx, key_mask=np.ones((2, 2, 2), "float32"))
    with pytest.raises(InputError, match="x has dtype complex64: expected a floating-point"):
        block(x.astype("complex64"), context=ctx)
    with pytest.raises(InputError, match="context has dtype bool: expected a floating-point"):
        block(x, context=ctx > 0)
    with pytest.raises(ValueError, match=r"NonLocalConfig\.instantiation='softmax'"):
        NonLocalBlock(instantiation="softmax")
    with pytest.raises(ValueError, match="norm_momentum"):
        NonLocalBlock(norm_momentum=2.0)
    with pytest.raises(InputError, match="channels"):
        keras.Model(inputs := keras.Input((4, 4, 3)), block(inputs, context=inputs))


def test_training_updates_running_statistics_sanely(adapter):  # adapter: float64 on JAX
    cfg = _cfg(norm="batch")
    x = make_input(cfg, seed=9)
    block_64, weights = loaded_block(cfg, dtype="float64", norm_momentum=0.75)
    before = block_64.canonical_weights()
    block_64(x, training=False)
    after_eval = block_64.canonical_weights()
    np.testing.assert_array_equal(after_eval["norm.running_mean"], before["norm.running_mean"])
    block_64(x, training=True)
    after = block_64.canonical_weights()
    # u = W_z y + b_z before the norm: its batch statistics, from the reference pieces.
    no_norm = cfg.replace(norm=None, residual=False)
    u = nonlocal_forward(
        x, {k: v for k, v in weights.items() if not k.startswith("norm.")}, no_norm
    )
    u = u.reshape(-1, 8)
    np.testing.assert_allclose(
        after["norm.running_mean"],
        0.75 * before["norm.running_mean"] + 0.25 * u.mean(0),
        rtol=1e-10,
    )
    np.testing.assert_allclose(
        after["norm.running_var"],
        0.75 * before["norm.running_var"] + 0.25 * u.var(0, ddof=1),
        rtol=1e-10,
    )


@pytest.mark.parametrize(
    "module", ["nonlocal_keras", "nonlocal_keras.functional", "nonlocal_keras.layer"]
)
def test_docstring_examples(module):
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
