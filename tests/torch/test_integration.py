"""The block inside the PyTorch toolbox: compile, export, autocast, memory formats, SyncBN,
and the memory promise (no B x 2C' x N x N' tensor, no N x N' one on the common path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nonlocal_core import INSTANTIATIONS, NonLocalConfig
from nonlocal_torch import NonLocal2d, NonLocal3d

from .conftest import block_for, make_case, reference, tensor

# Unit roundoff of the autocast dtypes (round to nearest).
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def _float32_block(instantiation: str, device: str = "cpu", spatial_dims: int = 2, **kw):
    cfg = NonLocalConfig(8, spatial_dims=spatial_dims, instantiation=instantiation, **kw)
    block, _ = block_for(cfg, dtype=torch.float32, device=device)
    return cfg, block


# torch.compile / torch.export ---------------------------------------------------------------


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_common_path_has_no_graph_breaks(instantiation):
    _, block = _float32_block(instantiation, subsample=True)
    x = torch.randn(2, 8, 6, 6)
    mask = torch.rand(2, 3, 3) > 0.3
    torch._dynamo.reset()
    explained = torch._dynamo.explain(block)(x, key_mask=mask)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_compiled_block_matches_eager_forward_and_backward():
    # One real inductor compile (slow on 2 cores): fullgraph, train mode, with gradients.
    cfg = NonLocalConfig(8, instantiation="embedded_gaussian", subsample=True)
    block, _ = block_for(cfg)  # float64: the comparison measures the compiler, not rounding
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    z_c = compiled(x)
    (g_c,) = torch.autograd.grad(z_c.square().sum(), x)
    z_e = block(x)
    (g_e,) = torch.autograd.grad(z_e.square().sum(), x)
    torch.testing.assert_close(z_c, z_e, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g_c, g_e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_torch_export(instantiation):
    _, block = _float32_block(instantiation, spatial_dims=3, subsample=True)
    block.eval()
    x = torch.randn(2, 8, 2, 4, 4)
    mask = torch.rand(2, 2, 2, 2) > 0.3
    program = torch.export.export(block, (x,), kwargs={"key_mask": mask})
    exported = program.module()
    torch.testing.assert_close(exported(x, key_mask=mask), block(x, key_mask=mask))
    x2 = torch.randn(2, 8, 2, 4, 4)  # new values, same shapes
    torch.testing.assert_close(exported(x2, key_mask=mask), block(x2, key_mask=mask))


# Autocast -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_autocast_within_tolerance(instantiation, dtype, device):
    cfg = NonLocalConfig(16, spatial_dims=2, instantiation=instantiation, subsample=True)
    block, _ = block_for(cfg, dtype=torch.float32, device=device)
    block.eval()
    weights = {k: v.cpu().double().numpy() for k, v in block.canonical_weights().items()}
    x, _, mask = make_case(cfg, mask=True)
    x32 = x.astype(np.float32)
    want = reference(cfg, weights, x32.astype(np.float64), None, mask)
    with torch.autocast(device, dtype=dtype):
        z = block(tensor(x32, device, torch.float32), key_mask=tensor(mask, device))
    assert z.dtype == torch.float32  # W_z y in low precision, plus the float32 residual
    err = np.abs(z.detach().cpu().numpy() - want).max()
    # A few roundings of O(1) values along each path: a few u (measured: 0.3-0.7 u).
    scale = np.abs(want).max()
    assert err <= 4 * UNIT_ROUNDOFF[dtype] * scale, (err, scale)
    assert err > 0  # it did run in low precision


def test_half_precision_block_runs_in_its_dtype():
    cfg = NonLocalConfig(8, instantiation="concatenation", subsample=True)
    block, _ = block_for(cfg, dtype=torch.bfloat16)
    z = block.eval()(torch.randn(2, 8, 6, 6, dtype=torch.bfloat16))
    assert z.dtype == torch.bfloat16 and torch.isfinite(z).all()


# Memory formats -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block_cls", "shape", "fmt"),
    [
        (NonLocal2d, (2, 8, 6, 5), torch.channels_last),
        (NonLocal3d, (2, 8, 2, 4, 6), torch.channels_last_3d),
    ],
)
@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_channels_last_memory_format(block_cls, shape, fmt, instantiation, device):
    block = block_cls(8, instantiation=instantiation, subsample=True, dtype=torch.float64)
    block.load_canonical_weights(
        {
            k: np.random.default_rng(0).normal(size=v.shape) * 0.3 + (k.endswith("var") and 1.0)
            for k, v in block.canonical_weights().items()
        }
    )
    block = block.to(device).eval()
    x = torch.randn(shape, dtype=torch.float64, device=device)
    x_cl = x.contiguous(memory_format=fmt)
    z, z_cl = block(x), block(x_cl)
    assert z.is_contiguous()
    assert z_cl.is_contiguous(memory_format=fmt) and not z_cl.is_contiguous()
    torch.testing.assert_close(z_cl, z, rtol=0, atol=1e-12)
    block_cl = block.to(memory_format=fmt)  # channels_last weights too
    torch.testing.assert_close(block_cl(x_cl), z, rtol=0, atol=1e-12)


# SyncBatchNorm and state_dict ---------------------------------------------------------------


def test_convert_sync_batchnorm_keeps_names_and_values():
    cfg = NonLocalConfig(8, spatial_dims=3, subsample=True)
    block, _ = block_for(cfg)
    x = torch.randn(2, 8, 2, 4, 4, dtype=torch.float64)
    want_eval = block.eval()(x)
    want_train = block.train()(x)
    names = list(block.state_dict())
    block, _ = block_for(cfg)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(block)
    assert isinstance(synced.norm, torch.nn.SyncBatchNorm)
    assert list(synced.state_dict()) == names
    # Without a process group SyncBatchNorm is plain BN: same values in both modes.
    torch.testing.assert_close(synced.eval()(x), want_eval, rtol=0, atol=0)
    torch.testing.assert_close(synced.train()(x), want_train, rtol=0, atol=0)
    assert set(synced.canonical_weights()) == set(block_for(cfg)[0].canonical_weights())


# Memory: what the largest intermediate tensor is ------------------------------------------


class _LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any aten op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_no_pairwise_tensor_on_common_path(instantiation):
    batch, c, side = 2, 16, 24  # C' = 8, N = N' = 576
    block = NonLocal2d(c, instantiation=instantiation)
    x = torch.randn(batch, c, side, side, requires_grad=True)
    mask = torch.rand(batch, side, side) > 0.2
    n = side * side
    with _LargestTensor() as probe:
        block(x, key_mask=mask).square().sum().backward()
    # Softmax through SDPA (fused CPU kernel), the associative dot product and (at this
    # size, by the cost model) the sorted concatenation: nothing beyond a few activations.
    activations = batch * n * c
    assert probe.largest <= 4 * activations < batch * n * n // 8, probe.largest


def test_return_attention_materialises_only_what_it_returns():
    block = NonLocal2d(16, instantiation="concatenation")
    x = torch.randn(2, 16, 12, 12)
    with _LargestTensor() as probe:
        _, attention = block(x, return_attention=True)
    assert attention.shape == (2, 144, 144)
    assert probe.largest == attention.numel()
