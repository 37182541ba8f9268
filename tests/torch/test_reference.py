"""NonLocalBlock against the NumPy reference: outputs, attention and gradients."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nonlocal_core import INSTANTIATIONS, NonLocalConfig

from .conftest import block_for, make_case, reference, tensor

POOLING = {
    "none": {},
    "after": {"subsample": True, "pool_position": "after_projection"},
    "before": {"subsample": True, "pool_position": "before_projection"},
}
NORM_MODES = {"no_norm": (None, False), "bn_eval": ("batch", False), "bn_train": ("batch", True)}

GRID = list(
    itertools.product(
        INSTANTIATIONS, (1, 2, 3), ("channels_first", "channels_last"), POOLING, NORM_MODES
    )
)


def _config(instantiation, spatial_dims, data_format, pooling, norm, context):
    wide_context = context and instantiation != "gaussian"  # Gaussian needs C_ctx == C
    return NonLocalConfig(
        4,
        spatial_dims=spatial_dims,
        instantiation=instantiation,
        data_format=data_format,
        norm=norm,
        context_channels=6 if wide_context else None,
        **POOLING[pooling],
    )


@pytest.mark.parametrize("extras", ["plain", "context_mask"])
@pytest.mark.parametrize(("instantiation", "dims", "data_format", "pooling", "norm_mode"), GRID)
def test_float64_matches_reference(instantiation, dims, data_format, pooling, norm_mode, extras):
    norm, training = NORM_MODES[norm_mode]
    both = extras == "context_mask"
    cfg = _config(instantiation, dims, data_format, pooling, norm, both)
    x, ctx, mask = make_case(cfg, context=both, mask=both)
    block, weights = block_for(cfg)
    block.train(training)
    want_z, want_a = reference(cfg, weights, x, ctx, mask, training, attention=True)

    z = block(tensor(x), context=tensor(ctx), key_mask=tensor(mask))
    z_a, a = block(tensor(x), context=tensor(ctx), key_mask=tensor(mask), return_attention=True)

    np.testing.assert_allclose(z.detach().numpy(), want_z, rtol=0, atol=1e-12)
    np.testing.assert_allclose(z_a.detach().numpy(), want_z, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.detach().numpy(), want_a, rtol=0, atol=1e-12)
    assert z.shape == x.shape and z.dtype == torch.float64


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_flat_and_grid_masks_agree(instantiation):
    cfg = NonLocalConfig(4, spatial_dims=2, instantiation=instantiation, subsample=True)
    x, _, mask = make_case(cfg, mask=True)
    block, _ = block_for(cfg)
    grid = block(tensor(x), key_mask=tensor(mask))
    flat = block(tensor(x), key_mask=tensor(mask.reshape(mask.shape[0], -1)))
    torch.testing.assert_close(grid, flat, rtol=0, atol=0)


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_all_masked_item_gets_zero_y(instantiation):
    # No valid key: y = 0, so z = BN(b_z) + x exactly, with finite gradients everywhere.
    cfg = NonLocalConfig(4, spatial_dims=1, instantiation=instantiation, norm=None)
    x, _, _ = make_case(cfg)
    block, _ = block_for(cfg)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    xt = tensor(x).requires_grad_(True)
    z = block(xt, key_mask=mask)
    expected = xt + block.out.bias[None, :, None]
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-15)
    z.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())


@pytest.mark.parametrize("device_dtype", [torch.float32])
@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_float32_on_device_matches_reference(instantiation, device, device_dtype):
    cfg = NonLocalConfig(
        8, spatial_dims=3, instantiation=instantiation, subsample=True, context_channels=None
    )
    x, _, mask = make_case(cfg, mask=True, batch=3)
    block, _ = block_for(cfg, dtype=device_dtype, device=device)
    block.eval()
    x32 = x.astype(np.float32)
    # The reference sees exactly the float32 values the block holds.
    weights = {k: v.cpu().double().numpy() for k, v in block.canonical_weights().items()}
    want = reference(cfg, weights, x32.astype(np.float64), None, mask)
    z = block(tensor(x32, device, device_dtype), key_mask=tensor(mask, device))
    assert z.dtype == device_dtype and z.device.type == device
    np.testing.assert_allclose(z.detach().cpu().numpy(), want, rtol=1e-5, atol=1e-5)


GRAD_CASES = [
    (inst, pooling, norm_mode)
    for inst in INSTANTIATIONS
    for pooling, norm_mode in (("none", "bn_train"), ("after", "no_norm"), ("before", "bn_eval"))
]


@pytest.mark.parametrize(("instantiation", "pooling", "norm_mode"), GRAD_CASES)
def test_gradients_match_finite_differences(instantiation, pooling, norm_mode):
    norm, training = NORM_MODES[norm_mode]
    cfg = _config(instantiation, 2, "channels_first", pooling, norm, context=True)
    x, ctx, mask = make_case(cfg, context=True, mask=True)
    mask[-1, 0, 0] = True  # keep one valid key in every item so every path has gradients
    block, _ = block_for(cfg, seed=3)
    block.train(training)
    params = [p for p in block.parameters()]
    mask_t = tensor(mask)

    def fn(xt, ct, *ps):
        with torch.nn.utils.stateless._reparametrize_module(
            block, dict(zip([n for n, _ in block.named_parameters()], ps))
        ):
            return block(xt, context=ct, key_mask=mask_t)

    inputs = (tensor(x).requires_grad_(True), tensor(ctx).requires_grad_(True), *params)
    if training:
        # Batch statistics change the running buffers on every call; gradcheck needs purity.
        block.norm.momentum = 0.0
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_training_with_one_value_per_channel(instantiation):
    # B = N = 1: batch statistics make u - mean = 0, so BN(u) = beta (nn.BatchNorm refuses).
    cfg = NonLocalConfig(3, spatial_dims=1, instantiation=instantiation)
    block, weights = block_for(cfg)
    x = np.random.default_rng(0).normal(size=(1, 3, 1))
    before = block.norm.running_var.clone()
    xt = tensor(x).requires_grad_(True)
    z = block.train()(xt)
    np.testing.assert_allclose(
        z.detach().numpy(), reference(cfg, weights, x, training=True), rtol=0, atol=1e-15
    )
    z.sum().backward()
    torch.testing.assert_close(xt.grad, torch.ones_like(xt))  # only the residual path
    assert torch.equal(block.norm.running_var, before)  # an unbiased variance of 1 value
