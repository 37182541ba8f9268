"""NonLocalBlock as a module: construction, initialisation, weights, state_dict, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nonlocal_core import (
    INSTANTIATIONS,
    ConfigError,
    InputError,
    NonLocalConfig,
    WeightError,
    random_weights,
    weight_shapes,
)
from nonlocal_torch import NonLocal1d, NonLocal2d, NonLocal3d, NonLocalBlock

from .conftest import block_for, make_case, tensor


@pytest.mark.parametrize("norm", ["batch", None])
@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_new_block_is_identity_with_spec_init(instantiation, norm):
    torch.manual_seed(0)
    block = NonLocal3d(16, instantiation=instantiation, norm=norm, subsample=True)
    w = {k: v.clone() for k, v in block.canonical_weights().items()}
    x = torch.randn(2, 16, 2, 4, 4)
    assert torch.equal(block(x), x)
    assert torch.equal(block.eval()(x), x)
    for name, t in w.items():
        if name.endswith(".bias") or name in ("norm.gamma", "norm.beta", "norm.running_mean"):
            assert not t.any(), name
    if norm is None:
        assert not w["out.weight"].any()
    else:
        assert 0.005 < float(w["out.weight"].std()) < 0.02
        assert torch.equal(w["norm.running_var"], torch.ones(16))
    if instantiation != "gaussian":
        assert 0.005 < float(w["theta.weight"].std()) < 0.02


def test_init_uses_torch_rng():
    torch.manual_seed(3)
    a = NonLocal2d(8).canonical_weights()["g.weight"]
    torch.manual_seed(3)
    b = NonLocal2d(8).canonical_weights()["g.weight"]
    c = NonLocal2d(8).canonical_weights()["g.weight"]
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_canonical_weights_round_trip(instantiation):
    cfg = NonLocalConfig(6, spatial_dims=2, instantiation=instantiation, context_channels=None)
    block, weights = block_for(cfg)
    out = block.canonical_weights()
    assert {k: tuple(v.shape) for k, v in out.items()} == weight_shapes(cfg)
    for name, value in weights.items():
        np.testing.assert_array_equal(out[name].numpy(), value)
    # The theta half of w_f comes first, as in the spec.
    np.testing.assert_array_equal(
        block.concat.weight.detach()[0].numpy()[:3], weights["concat.weight"][:3]
    ) if instantiation == "concatenation" else None


def test_load_canonical_weights_accepts_tensors_and_casts():
    cfg = NonLocalConfig(4, instantiation="dot_product")
    block = NonLocalBlock.from_config(cfg, dtype=torch.bfloat16)
    weights = {k: torch.from_numpy(v) for k, v in random_weights(cfg).items()}
    block.load_canonical_weights(weights)
    got = block.canonical_weights()["theta.weight"]
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, weights["theta.weight"].bfloat16(), rtol=0, atol=0)


def test_state_dict_round_trip_and_names():
    cfg = NonLocalConfig(4, instantiation="concatenation", subsample=True)
    block, _ = block_for(cfg)
    names = set(block.state_dict())
    assert {"theta.weight", "phi.bias", "g.weight", "concat.weight", "out.bias"} <= names
    assert {"norm.weight", "norm.bias", "norm.running_mean", "norm.running_var"} <= names
    fresh = NonLocalBlock.from_config(cfg, dtype=torch.float64)
    fresh.load_state_dict(block.state_dict())
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    assert torch.equal(fresh.eval()(x), block.eval()(x))


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"drop": "g.bias"}, r"missing weight\(s\) \['g.bias'\]"),
        ({"add": "theta.extra"}, r"unexpected weight\(s\) \['theta.extra'\]"),
        ({"reshape": "out.weight"}, r"weight 'out.weight' has shape \(2, 4\), expected \(4, 2\)"),
    ],
)
def test_bad_weights_raise_weight_error(bad, match):
    cfg = NonLocalConfig(4)
    weights = random_weights(cfg)
    if "drop" in bad:
        del weights[bad["drop"]]
    if "add" in bad:
        weights[bad["add"]] = np.zeros(2)
    if "reshape" in bad:
        weights[bad["reshape"]] = weights[bad["reshape"]].T
    block = NonLocalBlock.from_config(cfg)
    before = block.canonical_weights()["g.weight"].clone()
    with pytest.raises(WeightError, match=match):
        block.load_canonical_weights(weights)
    assert torch.equal(block.canonical_weights()["g.weight"], before)  # nothing half-loaded


def test_constructors_agree_with_config():
    assert NonLocal1d(4).config.spatial_dims == 1
    assert NonLocal2d(4).config.spatial_dims == 2
    assert NonLocal3d(4, subsample=True).config.subsample == (1, 2, 2)
    cfg = NonLocalConfig(8, spatial_dims=3, instantiation="gaussian", logit_scale=0.5)
    assert NonLocalBlock.from_config(cfg).config == cfg
    assert NonLocalBlock.from_config(cfg, norm_momentum=0.3).norm.momentum == 0.3
    assert NonLocalBlock(8).config == NonLocalConfig(8)
    with pytest.raises(ConfigError, match="instantiation='dotproduct' is invalid"):
        NonLocalBlock(8, instantiation="dotproduct")
    with pytest.raises(TypeError, match="config must be a NonLocalConfig"):
        NonLocalBlock.from_config({"in_channels": 8})
    gaussian = NonLocal2d(8, instantiation="gaussian")
    assert gaussian.theta is None and gaussian.phi is None and gaussian.concat is None


def test_extra_repr_names_the_configuration():
    text = NonLocal3d(64, subsample=True, instantiation="embedded_gaussian").extra_repr()
    assert text.startswith("64, spatial_dims=3, instantiation='embedded_gaussian'")
    assert "inter_channels=32" in text and "scale=0.1768 (1/sqrt(d))" in text
    assert "subsample=(1, 2, 2)" in text and "norm='batch'" in text
    text = NonLocal1d(8, instantiation="dot_product", norm=None, data_format="channels_last")
    text = text.extra_repr()
    assert "scale" not in text and "norm=None" in text and "channels_last" in text


# Errors -----------------------------------------------------------------------------------


@pytest.fixture
def small():
    cfg = NonLocalConfig(4, spatial_dims=2, subsample=True)
    block, _ = block_for(cfg, dtype=torch.float32)
    return block, torch.randn(2, 4, 6, 6)


def test_wrong_rank_and_channels(small):
    block, _ = small
    with pytest.raises(InputError, match=r"x has shape \(2, 4, 6\) \(rank 3\): expected rank 4"):
        block(torch.randn(2, 4, 6))
    with pytest.raises(InputError, match=r"x has 5 channels .* expected 4"):
        block(torch.randn(2, 5, 6, 6))
    with pytest.raises(InputError, match="smaller than its subsample window"):
        block(torch.randn(2, 4, 1, 6))


def test_wrong_context_and_mask(small):
    block, x = small
    with pytest.raises(InputError, match=r"context has batch 3 .* expected the batch of x, 2"):
        block(x, context=torch.randn(3, 4, 6, 6))
    with pytest.raises(InputError, match=r"key_mask has shape \(2, 6, 6\): expected \(2, 3, 3\)"):
        block(x, key_mask=torch.ones(2, 6, 6, dtype=torch.bool))
    with pytest.raises(
        InputError, match=r"key_mask has dtype torch\.float32: expected torch\.bool"
    ):
        block(x, key_mask=torch.ones(2, 3, 3))


def test_wrong_dtype(small):
    block, x = small
    with pytest.raises(InputError, match=r"x has dtype torch.float64, but the block's param"):
        block(x.double())
    # spec: IO-3 (integers are refused with the conversion to make, never cast silently)
    integer = r"x has dtype torch\.uint8: expected a floating-point tensor; convert it first"
    with pytest.raises(InputError, match=integer + r", e\.g\. x\.float\(\)"):
        block(torch.ones(2, 4, 6, 6, dtype=torch.uint8))
    with pytest.raises(InputError, match=r"context has dtype torch\.int64: expected a float"):
        block(x, context=torch.ones(2, 4, 6, 6, dtype=torch.long))
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor, got ndarray"):
        block(x.numpy())


def test_wrong_device(small):
    block, x = small
    with pytest.raises(InputError, match=r"x is on device meta, but the block's parameters are"):
        block(x.to("meta"))
    with pytest.raises(InputError, match="context is on device meta"):
        block(x, context=x.to("meta"))
    with pytest.raises(InputError, match="key_mask is on device meta"):
        block(x, key_mask=torch.ones(2, 9, dtype=torch.bool, device="meta"))


def test_channels_last_data_format_matches_channels_first():
    cf = NonLocalConfig(4, spatial_dims=3, instantiation="concatenation", subsample=True)
    cl = cf.replace(data_format="channels_last")
    block_cf, weights = block_for(cf)
    block_cl = NonLocalBlock.from_config(cl, dtype=torch.float64)
    block_cl.load_canonical_weights(weights)
    x, _, mask = make_case(cf, mask=True)
    z_cf = block_cf(tensor(x), key_mask=tensor(mask))
    z_cl = block_cl(tensor(x).movedim(1, -1), key_mask=tensor(mask))
    assert z_cl.is_contiguous() and z_cl.shape == (2, 3, 4, 5, 4)
    torch.testing.assert_close(z_cl, z_cf.movedim(1, -1), rtol=0, atol=1e-13)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_w_z_and_bn_run_in_the_layout_of_x(spatial_dims):
    # A channels-first x must not send W_z and BN through a channels_last view (BN is
    # several times slower there on CPU, issue 18); a channels_last x keeps its format.
    block = NonLocalBlock(8, spatial_dims=spatial_dims, subsample=True)
    seen = []
    for module in (block.out, block.norm):
        module.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    x = torch.randn(2, 8, *(4,) * spatial_dims)
    z = block(x)
    assert all(t.is_contiguous() for t in seen) and z.is_contiguous()
    fmt = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
    seen.clear()
    z = block(x.contiguous(memory_format=fmt))
    # W_z gets y in x's format; what its conv returns is PyTorch's choice (a 3D conv with one
    # thread returns contiguous), and z is put back into x's format either way.
    assert seen[0].is_contiguous(memory_format=fmt)
    assert z.is_contiguous(memory_format=fmt)
