"""Fuzzing the reference's entry points with hostile values (the spec's ERR-1 and IO-4).

Every call either raises ValueError/TypeError naming what is wrong, or - for values that are
valid however odd (NaN, infinity, integers, other float widths, nested lists) - computes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonlocal_conformance.strategies import feature_shape
from nonlocal_core import (
    INSTANTIATIONS,
    NonLocalConfig,
    check_weights,
    nonlocal_forward,
    random_weights,
)
from tests.hostile import (
    CONFIGS,
    EXTENTS,
    Hostile,
    expect_error,
    fuzz_settings,
    input_mutations,
    junk,
    mask_mutations,
    negative_variance,
    positions_finite,
    set_entry,
    weight_mutations,
)

FIELDS = [f.name for f in dataclasses.fields(NonLocalConfig)]
# Plausible values, so that a junk value in one field is often the only thing wrong.
PLAUSIBLE = {
    "in_channels": st.integers(1, 8),
    "spatial_dims": st.integers(1, 3),
    "instantiation": st.sampled_from(INSTANTIATIONS),
    "inter_channels": st.one_of(st.none(), st.integers(1, 4)),
    "context_channels": st.one_of(st.none(), st.integers(1, 4)),
    "logit_scale": st.one_of(st.none(), st.just("none"), st.floats(0.1, 2.0)),
    "subsample": st.one_of(st.booleans(), st.integers(1, 2)),
    "pool_position": st.sampled_from(["after_projection", "before_projection"]),
    "norm": st.sampled_from(["batch", None]),
    "norm_eps": st.floats(1e-6, 1e-2),
    "residual": st.booleans(),
    "data_format": st.sampled_from(["channels_first", "channels_last"]),
}


def _case(config: NonLocalConfig, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=feature_shape(config, 2, EXTENTS[config.spatial_dims], config.in_channels))
    return x, random_weights(config, seed=seed)


@fuzz_settings(300)
@given(st.data())
def test_config_fields_with_junk_are_rejected_by_name(data):
    kwargs = {name: data.draw(strategy, label=name) for name, strategy in PLAUSIBLE.items()}
    broken = data.draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True))
    for name in broken:
        kwargs[name] = data.draw(junk(), label=f"junk {name}")
    try:
        config = NonLocalConfig(**kwargs)
    except (ValueError, TypeError):
        # The error names one of the fields that were given junk, or one that junk made
        # inconsistent; the message check is in expect_error below.
        expect_error(lambda: NonLocalConfig(**kwargs), FIELDS)
        return
    assert NonLocalConfig.from_dict(config.to_dict()) == config


@fuzz_settings(100)
@given(junk())
def test_from_dict_with_junk_is_rejected(value):
    try:
        NonLocalConfig.from_dict(value)
    except (ValueError, TypeError) as exc:
        assert "NonLocalConfig" in str(exc) or any(f in str(exc) for f in FIELDS), exc
        return
    # Only a dict of valid fields can get here.
    assert isinstance(value, dict) and "in_channels" in value


@fuzz_settings(150)
@given(st.sampled_from(CONFIGS), st.data())
def test_weights_are_checked_before_use(config, data):
    x, weights = _case(config)
    mutation = data.draw(weight_mutations(config, weights))
    if mutation.valid:
        check_weights(mutation.value, config)
        z = nonlocal_forward(x, mutation.value, config)
        assert z.shape == x.shape and z.dtype == np.float64
    else:
        expect_error(lambda: check_weights(mutation.value, config), mutation.names)
        expect_error(lambda: nonlocal_forward(x, mutation.value, config), mutation.names)


def test_negative_running_variance_is_rejected():
    config = CONFIGS[0]
    x, weights = _case(config)
    mutation = negative_variance(weights)
    expect_error(lambda: nonlocal_forward(x, mutation.value, config), mutation.names)


def test_weights_and_config_of_the_wrong_type_are_rejected():
    config = CONFIGS[0]
    x, weights = _case(config)
    expect_error(lambda: nonlocal_forward(x, list(weights.values()), config), ["weights"])
    expect_error(lambda: nonlocal_forward(x, weights, config.to_dict()), ["config"])
    expect_error(lambda: check_weights(weights, "embedded_gaussian"), ["config"])


@fuzz_settings(150)
@given(st.sampled_from(CONFIGS), st.data())
def test_inputs_are_checked_before_use(config, data):
    x, weights = _case(config)
    mutation = data.draw(input_mutations(config, x, "x"))
    _check_outcome(mutation, lambda: nonlocal_forward(mutation.value, weights, config), x.shape)


@fuzz_settings(100)
@given(st.sampled_from(CONFIGS), st.data())
def test_contexts_and_key_masks_are_checked_before_use(config, data):
    cross = config.replace(context_channels=3 if config.instantiation != "gaussian" else 4)
    x, weights = _case(cross)
    ctx_extent = {1: (4,), 2: (2, 5), 3: (1, 2, 2)}[cross.spatial_dims]
    context = np.random.default_rng(1).normal(
        size=feature_shape(cross, 2, ctx_extent, cross.context_channels)
    )
    key_grid = cross.pooled_extent(ctx_extent) if cross.subsample else ctx_extent
    mask = np.random.default_rng(2).random((2, *key_grid)) < 0.7
    mask[:, (0,) * cross.spatial_dims] = True
    if data.draw(st.booleans(), label="break the context (else the mask)"):
        mutation = data.draw(input_mutations(cross, context, "context"))
        kwargs = {"context": mutation.value, "key_mask": None}
    else:
        mutation = data.draw(mask_mutations(mask))
        kwargs = {"context": context, "key_mask": mutation.value}
    _check_outcome(mutation, lambda: nonlocal_forward(x, weights, cross, **kwargs), x.shape)


@fuzz_settings(40)
@given(junk(), st.sampled_from(["training", "return_attention"]))
def test_flags_accept_only_booleans(value, flag):
    # spec: ERR-1 (flags)
    config = CONFIGS[0]
    x, weights = _case(config)
    if isinstance(value, bool | np.bool_):
        nonlocal_forward(x, weights, config, **{flag: value})
    else:
        expect_error(lambda: nonlocal_forward(x, weights, config, **{flag: value}), [flag])


def _check_outcome(mutation: Hostile, call, shape) -> None:
    if mutation.valid:
        z = call()
        assert z.shape == shape and z.dtype == np.float64
    else:
        expect_error(call, mutation.names)


# Non-finite values (spec IO-4) ----------------------------------------------------------


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's "invalid value" notes
@fuzz_settings(40)
@given(st.sampled_from(CONFIGS), st.sampled_from([np.nan, np.inf, -np.inf]), st.data())
def test_non_finite_values_reach_exactly_the_queries_that_attend_to_them(config, special, data):
    # spec: IO-4
    # Without the residual, z_i = BN(W_z y_i): a non-finite y_i cannot hide behind x_i.
    config = config.replace(residual=False)
    x, weights = _case(config)
    batch = data.draw(st.integers(0, x.shape[0] - 1))
    position = data.draw(st.integers(0, int(np.prod(EXTENTS[config.spatial_dims])) - 1))
    channel = data.draw(st.integers(0, config.in_channels - 1))
    bad = x.copy()
    set_entry(bad, config, batch, position, channel, special)
    # In a query only (the context stays finite): no other output position. A NaN always
    # reaches its own position; an infinity may legitimately vanish (ReLU(-inf) = 0).
    finite = positions_finite(nonlocal_forward(bad, weights, config, context=x), config)
    others = np.ones_like(finite)
    others[batch, position] = False
    assert finite[others].all()
    if np.isnan(special):
        assert not finite[batch, position]
    # A NaN in the keys and values (no mask): every query of that batch element attends to
    # it. (An infinity may be dropped by a max pool, so its pattern is left to the backends'
    # comparisons with this reference.)
    bad[batch] = np.where(np.isfinite(bad[batch]), bad[batch], np.nan)
    finite = positions_finite(nonlocal_forward(x, weights, config, context=bad), config)
    expected = np.ones_like(finite)
    expected[batch] = False
    np.testing.assert_array_equal(finite, expected)
