"""The vectorised reference against the literal loops, hand-checked cases and identity at init."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nonlocal_core import (
    INSTANTIATIONS,
    NonLocalConfig,
    init_weights,
    nonlocal_forward,
    random_weights,
)
from nonlocal_core.reference import max_pool, normalise

from .loop_reference import loop_forward


def random_case(rng: np.random.Generator):
    """A random small config with inputs covering every option of the spec."""
    dims = int(rng.integers(1, 4))
    inst = str(rng.choice(INSTANTIATIONS))
    c = int(rng.integers(1, 6))
    use_context = rng.random() < 0.3
    ctx_c = c if (inst == "gaussian" or not use_context) else int(rng.integers(1, 6))
    subsample = [False, True, tuple(int(w) for w in rng.integers(1, 3, size=dims))][
        int(rng.integers(0, 3))
    ]
    fields = dict(
        in_channels=c,
        spatial_dims=dims,
        instantiation=inst,
        inter_channels=int(rng.integers(1, 5)) if rng.random() < 0.5 else None,
        context_channels=ctx_c,
        subsample=subsample,
        pool_position=str(rng.choice(["after_projection", "before_projection"])),
        norm=None if rng.random() < 0.3 else "batch",
        norm_eps=float(rng.choice([1e-5, 1.0000001e-5, 0.1])),
        residual=bool(rng.random() < 0.7),
        data_format=str(rng.choice(["channels_first", "channels_last"])),
    )
    if inst in ("gaussian", "embedded_gaussian"):
        fields["logit_scale"] = [None, False, 0.37][int(rng.integers(0, 3))]
    cfg = NonLocalConfig(**fields)
    batch = int(rng.integers(1, 4))
    extent = tuple(int(e) for e in rng.integers(2, 5 if dims < 3 else 4, size=dims))
    ctx_extent = (
        tuple(int(e) for e in rng.integers(2, 5 if dims < 3 else 4, size=dims))
        if use_context
        else extent
    )

    def feat(ext, ch):
        shape = (batch, ch, *ext) if cfg.data_format == "channels_first" else (batch, *ext, ch)
        return rng.normal(size=shape)

    x = feat(extent, c)
    context = feat(ctx_extent, ctx_c) if use_context else None
    key_mask = None
    if rng.random() < 0.3:
        key_mask = rng.random((batch, *cfg.pooled_extent(ctx_extent))) < 0.5
    training = bool(rng.random() < 0.4)
    weights = random_weights(cfg, seed=int(rng.integers(0, 2**31)), scale=1.5)
    return cfg, weights, x, context, key_mask, training


@pytest.mark.parametrize("seed", range(300))
def test_vectorised_reference_equals_literal_double_loop(seed):
    # spec: OP-1 OUT-1 OUT-2 OUT-4 ATT-1 POOL-3
    cfg, weights, x, context, key_mask, training = random_case(np.random.default_rng(seed))
    z, a = nonlocal_forward(
        x,
        weights,
        cfg,
        context=context,
        key_mask=key_mask,
        training=training,
        return_attention=True,
    )
    z_loop, a_loop = loop_forward(x, weights, cfg.to_dict(), context, key_mask, training)
    np.testing.assert_allclose(a, a_loop, rtol=0, atol=1e-12)
    np.testing.assert_allclose(z, z_loop, rtol=1e-12, atol=1e-12)


def test_random_cases_cover_every_option():
    """The 300 seeds above exercise every value of every field, and every input option."""
    seen: dict[str, set] = {}
    for seed in range(300):
        cfg, _, _, context, mask, training = random_case(np.random.default_rng(seed))
        for key, value in cfg.to_dict().items():
            seen.setdefault(key, set()).add(str(value))
        seen.setdefault("options", set()).update(
            {f"context={context is not None}", f"mask={mask is not None}", f"train={training}"}
        )
    assert seen["instantiation"] == set(INSTANTIATIONS)
    assert seen["spatial_dims"] == {"1", "2", "3"}
    assert seen["pool_position"] == {"after_projection", "before_projection"}
    assert seen["data_format"] == {"channels_first", "channels_last"}
    assert seen["norm"] == {"batch", "None"} and seen["residual"] == {"True", "False"}
    assert {"None", "1.0", "0.37"} <= seen["logit_scale"]
    assert len(seen["subsample"]) > 4
    assert len(seen["options"]) == 6


# Hand-checkable cases --------------------------------------------------------------------


def two_position_block(instantiation, **extra):
    """C = C' = 1, two positions, identity projections: every number can be done by hand."""
    cfg = NonLocalConfig(
        1,
        spatial_dims=1,
        instantiation=instantiation,
        inter_channels=1,
        norm=None,
        **extra,
    )
    w = {
        "g.weight": np.ones((1, 1)),
        "g.bias": np.zeros(1),
        "out.weight": np.ones((1, 1)),
        "out.bias": np.zeros(1),
    }
    if instantiation != "gaussian":
        w.update({k: np.ones((1, 1)) for k in ("theta.weight", "phi.weight")})
        w.update({k: np.zeros(1) for k in ("theta.bias", "phi.bias")})
    if instantiation == "concatenation":
        w["concat.weight"] = np.array([1.0, -2.0])
    return cfg, w


X2 = np.array([[[1.0, 2.0]]])  # B = 1, C = 1, L = 2: x_0 = 1, x_1 = 2


def test_two_positions_embedded_gaussian_by_hand():
    # spec: INST-3
    cfg, w = two_position_block("embedded_gaussian", logit_scale=False)
    z, a = nonlocal_forward(X2, w, cfg, return_attention=True)
    # Row 0 logits (1, 2); row 1 logits (2, 4).
    e0 = np.array([math.e**1, math.e**2]) / (math.e**1 + math.e**2)
    e1 = np.array([math.e**2, math.e**4]) / (math.e**2 + math.e**4)
    np.testing.assert_allclose(a[0], [e0, e1], rtol=1e-15)
    y = [e0 @ [1, 2], e1 @ [1, 2]]
    np.testing.assert_allclose(z[0, 0], np.add(y, [1.0, 2.0]), rtol=1e-15)


def test_two_positions_gaussian_default_scale_is_one_over_sqrt_c():
    # spec: INST-1 INST-3
    # d = C = 4: 1/sqrt(C) = 1/2 differs from 1/C = 1/4 and from no scale at all.
    cfg = NonLocalConfig(4, spatial_dims=1, instantiation="gaussian", norm=None)
    x = np.array([[[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, -1.0]]])  # x_0 = (1, 1, 1, 1)
    # x_0 . x_0 = 4, x_0 . x_1 = 2: row 0's logits are (4, 2) / sqrt(4) = (2, 1).
    _, a = nonlocal_forward(x, random_weights(cfg, seed=0), cfg, return_attention=True)
    np.testing.assert_allclose(a[0, 0, 1], math.e**1 / (math.e**2 + math.e**1), rtol=1e-15)
    for wrong_scale in (1 / 4, 1.0):  # what the test must tell apart
        wrong = math.exp(2 * wrong_scale) / (math.exp(4 * wrong_scale) + math.exp(2 * wrong_scale))
        assert abs(a[0, 0, 1] - wrong) > 0.05


def test_two_positions_dot_product_divides_by_key_count():
    # spec: INST-4
    cfg, w = two_position_block("dot_product")
    z, a = nonlocal_forward(X2, w, cfg, return_attention=True)
    np.testing.assert_allclose(a[0], [[0.5, 1.0], [1.0, 2.0]])
    np.testing.assert_allclose(z[0, 0], [0.5 * 1 + 1.0 * 2 + 1, 1.0 * 1 + 2.0 * 2 + 2])


def test_two_positions_concatenation_theta_half_first():
    # spec: INST-5
    cfg, w = two_position_block("concatenation")
    _, a = nonlocal_forward(X2, w, cfg, return_attention=True)
    # f_ij = ReLU(1 * x_i - 2 * x_j) / 2
    expected = [[max(0, 1 - 2) / 2, max(0, 1 - 4) / 2], [max(0, 2 - 2) / 2, max(0, 2 - 4) / 2]]
    np.testing.assert_allclose(a[0], expected)
    w["concat.weight"] = np.array([2.0, -1.0])
    _, a = nonlocal_forward(X2, w, cfg, return_attention=True)
    np.testing.assert_allclose(a[0], [[0.5, 0.0], [1.5, 1.0]])


def test_max_pool_drops_remainder_and_takes_window_max():
    # spec: POOL-1
    grid = np.arange(7.0).reshape(1, 7, 1)
    np.testing.assert_array_equal(max_pool(grid, (3,))[0, :, 0], [2.0, 5.0])
    grid2 = np.arange(20.0).reshape(1, 4, 5, 1)
    np.testing.assert_array_equal(max_pool(grid2, (2, 2))[0, :, :, 0], [[6, 8], [16, 18]])


def test_softmax_subtracts_row_max_so_huge_logits_stay_finite():
    # spec: INST-2
    cfg = NonLocalConfig(2, spatial_dims=1)
    a = normalise(np.array([[[1000.0, 1000.0, -1000.0]]]), cfg, None)
    np.testing.assert_allclose(a[0, 0], [0.5, 0.5, 0.0])


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_query_with_no_valid_key_gets_zero(instantiation):
    # spec: MASK-2
    cfg = NonLocalConfig(2, spatial_dims=1, instantiation=instantiation, norm=None, residual=False)
    w = random_weights(cfg, seed=1)
    x = np.random.default_rng(0).normal(size=(2, 2, 3))
    mask = np.array([[True, False, True], [False, False, False]])
    z, a = nonlocal_forward(x, w, cfg, key_mask=mask, return_attention=True)
    assert np.all(a[1] == 0) and np.all(a[0][:, 1] == 0)
    # y = 0, so z = W_z 0 + b_z
    np.testing.assert_allclose(z[1], np.broadcast_to(w["out.bias"][:, None], (2, 3)))


@pytest.mark.parametrize("instantiation", ["dot_product", "concatenation"])
def test_key_mask_divides_by_valid_key_count(instantiation):
    # spec: MASK-1 INST-4
    cfg = NonLocalConfig(2, spatial_dims=1, instantiation=instantiation, norm=None)
    w = random_weights(cfg, seed=2)
    x = np.random.default_rng(1).normal(size=(1, 2, 4))
    mask = np.array([[True, True, False, True]])
    _, a_masked = nonlocal_forward(x, w, cfg, key_mask=mask, return_attention=True)
    _, a_full = nonlocal_forward(x, w, cfg, return_attention=True)
    np.testing.assert_allclose(a_masked[0][:, [0, 1, 3]], a_full[0][:, [0, 1, 3]] * 4 / 3)


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
@pytest.mark.parametrize("norm", ["batch", None])
@pytest.mark.parametrize("training", [False, True])
def test_new_block_is_the_identity(instantiation, norm, training):
    # spec: INIT-1
    cfg = NonLocalConfig(6, spatial_dims=3, instantiation=instantiation, norm=norm, subsample=True)
    x = np.random.default_rng(3).normal(size=(2, 6, 2, 4, 4))
    z = nonlocal_forward(x, init_weights(cfg, seed=4), cfg, training=training)
    np.testing.assert_array_equal(z, x)


def test_training_with_one_value_per_channel_is_defined():
    # spec: OUT-5
    """B * N = 1: the batch variance is 0, the normalised value 0, so z = beta + x."""
    cfg = NonLocalConfig(2, spatial_dims=1)
    w = random_weights(cfg, seed=5)
    x = np.array([[[0.3], [-0.7]]])
    z = nonlocal_forward(x, w, cfg, training=True)
    np.testing.assert_allclose(z[0, :, 0], w["norm.beta"] + x[0, :, 0])


def test_integer_input_is_computed_in_float64():
    # spec: IO-3
    cfg = NonLocalConfig(2, spatial_dims=1)
    w = random_weights(cfg, seed=6)
    xi = np.arange(6).reshape(1, 2, 3)
    z = nonlocal_forward(xi, w, cfg)
    assert z.dtype == np.float64
    np.testing.assert_array_equal(z, nonlocal_forward(xi.astype(float), w, cfg))


def test_nan_in_x_propagates_and_is_not_hidden():
    # spec: IO-4
    cfg = NonLocalConfig(2, spatial_dims=1)
    x = np.random.default_rng(7).normal(size=(1, 2, 3))
    x[0, 0, 1] = np.nan
    z = nonlocal_forward(x, random_weights(cfg, seed=8), cfg)
    assert np.isnan(z).any()


def test_context_equal_to_x_is_no_context():
    # spec: OP-2
    cfg = NonLocalConfig(4, subsample=True, instantiation="concatenation")
    w = random_weights(cfg, seed=9)
    x = np.random.default_rng(10).normal(size=(2, 4, 4, 6))
    np.testing.assert_array_equal(
        nonlocal_forward(x, w, cfg), nonlocal_forward(x, w, cfg, context=x)
    )


def test_key_mask_flat_and_grid_forms_agree():
    # spec: MASK-1
    cfg = NonLocalConfig(4, subsample=True)
    w = random_weights(cfg, seed=11)
    rng = np.random.default_rng(12)
    x = rng.normal(size=(2, 4, 4, 6))
    mask = rng.random((2, 2, 3)) < 0.5
    np.testing.assert_array_equal(
        nonlocal_forward(x, w, cfg, key_mask=mask),
        nonlocal_forward(x, w, cfg, key_mask=mask.reshape(2, 6)),
    )


def test_batch_elements_are_independent_in_inference():
    # spec: OP-3
    cfg = NonLocalConfig(4, instantiation="concatenation", subsample=True)
    w = random_weights(cfg, seed=13)
    x = np.random.default_rng(14).normal(size=(3, 4, 4, 4))
    stacked = nonlocal_forward(x, w, cfg)
    for b in range(3):
        np.testing.assert_allclose(stacked[b : b + 1], nonlocal_forward(x[b : b + 1], w, cfg))
    # In training the batch statistics couple the elements.
    assert not np.allclose(
        nonlocal_forward(x, w, cfg, training=True)[:1],
        nonlocal_forward(x[:1], w, cfg, training=True),
    )


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_layouts_give_the_same_values(instantiation):
    # spec: IO-1
    cf = NonLocalConfig(4, spatial_dims=3, instantiation=instantiation, subsample=True)
    cl = cf.replace(data_format="channels_last")
    w = random_weights(cf, seed=15)
    x = np.random.default_rng(16).normal(size=(2, 4, 2, 4, 6))
    z_cf = nonlocal_forward(x, w, cf)
    z_cl = nonlocal_forward(np.moveaxis(x, 1, -1), w, cl)
    np.testing.assert_allclose(np.moveaxis(z_cl, -1, 1), z_cf, rtol=1e-13, atol=1e-13)


def test_pool_positions_differ_except_for_gaussian_phi():
    # spec: POOL-3
    rng = np.random.default_rng(17)
    x = rng.normal(size=(1, 4, 4, 4))
    after = NonLocalConfig(4, subsample=True, norm=None)
    before = after.replace(pool_position="before_projection")
    w = random_weights(after, seed=18)
    assert not np.allclose(nonlocal_forward(x, w, after), nonlocal_forward(x, w, before))
    g_after = NonLocalConfig(4, subsample=True, instantiation="gaussian", norm=None)
    g_before = g_after.replace(pool_position="before_projection")
    w = random_weights(g_after, seed=19)
    _, a1 = nonlocal_forward(x, w, g_after, return_attention=True)
    _, a2 = nonlocal_forward(x, w, g_before, return_attention=True)
    np.testing.assert_array_equal(a1, a2)  # phi = pool(x) either way; only g differs


def test_training_forward_does_not_touch_running_statistics():
    # spec: OUT-3 (updating them is each framework's business, not the reference's)
    cfg = NonLocalConfig(4)
    w = random_weights(cfg, seed=20)
    before = {k: v.copy() for k, v in w.items()}
    nonlocal_forward(np.ones((2, 4, 3, 3)), w, cfg, training=True)
    assert all(np.array_equal(before[k], w[k]) for k in w)
