"""Every execution strategy computes the reference's function, with bounded memory."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nonlocal_core import INSTANTIATIONS, NonLocalConfig
from nonlocal_torch import NonLocal2d, NonLocalBlock, strategies
from nonlocal_torch.strategies import (
    check_strategy,
    choose_strategy,
    chunked_softmax,
    sorted_concatenation,
)

from .conftest import block_for, make_case, reference, tensor
from .test_integration import _LargestTensor

FORCED = [
    (inst, strategy)
    for inst in INSTANTIATIONS
    for strategy in strategies.ALLOWED_STRATEGIES[inst]
    if strategy != "auto"
]


@pytest.mark.parametrize(
    ("pooling", "training", "extras"),
    list(itertools.product(["none", "after", "before"], [False, True], ["plain", "ctx_mask"])),
)
@pytest.mark.parametrize(("instantiation", "strategy"), FORCED)
def test_forced_strategy_matches_reference(instantiation, strategy, pooling, training, extras):
    both = extras == "ctx_mask"
    cfg = NonLocalConfig(
        4,
        spatial_dims=2,
        instantiation=instantiation,
        subsample=pooling != "none",
        pool_position="before_projection" if pooling == "before" else "after_projection",
        context_channels=6 if both and instantiation != "gaussian" else None,
    )
    x, ctx, mask = make_case(cfg, context=both, mask=both)
    block, weights = block_for(cfg)
    block.strategy = strategy
    block.train(training)
    z = block(tensor(x), context=tensor(ctx), key_mask=tensor(mask))
    want = reference(cfg, weights, x, ctx, mask, training)
    np.testing.assert_allclose(z.detach().numpy(), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("instantiation", "strategy"), FORCED)
def test_forced_strategy_gradients(instantiation, strategy):
    cfg = NonLocalConfig(4, spatial_dims=1, instantiation=instantiation, subsample=True)
    x, _, mask = make_case(cfg, mask=True)
    mask[-1, 0] = True
    block, _ = block_for(cfg, seed=7)
    block.strategy = strategy
    block.norm.momentum = 0.0  # gradcheck calls the block many times: keep it pure
    names = [n for n, _ in block.named_parameters()]
    mask_t = tensor(mask)

    def fn(xt, *ps):
        with torch.nn.utils.stateless._reparametrize_module(block, dict(zip(names, ps))):
            return block(xt, key_mask=mask_t)

    inputs = (tensor(x).requires_grad_(True), *block.parameters())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_sorted_concatenation_ties_match_pairwise():
    # Keys exactly at the ReLU kink (b_j = -a_i) and repeated b values, values and gradients.
    a = torch.tensor([[0.5, -1.0, 0.0, 2.0]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[-0.5, 1.0, 0.0, -0.5, 3.0]], dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, 5, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, False, True, True]])
    fast = sorted_concatenation(a, b, g, mask)
    slow = (torch.relu(a[:, :, None] + b[:, None, :]) * mask[:, None, :]) @ g
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-14)
    cot = torch.randn_like(fast)
    grads_fast = torch.autograd.grad((fast * cot).sum(), (a, b, g))
    grads_slow = torch.autograd.grad((slow * cot).sum(), (a, b, g))
    for gf, gs in zip(grads_fast, grads_slow):
        torch.testing.assert_close(gf, gs, rtol=0, atol=1e-14)


def test_chunked_softmax_with_small_chunks_and_checkpointing():
    theta, phi, g = (torch.randn(2, n, 5, dtype=torch.float64) for n in (13, 7, 7))
    mask = torch.rand(2, 7) > 0.3
    mask[:, 0] = True
    for t in (theta, phi, g):
        t.requires_grad_(True)
    fast = chunked_softmax(theta, phi, g, 0.4, mask, chunk=3)
    logits = (0.4 * theta @ phi.transpose(1, 2)).masked_fill(~mask[:, None, :], float("-inf"))
    slow = torch.softmax(logits, -1) @ g
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-14)
    cot = torch.randn_like(fast)
    for gf, gs in zip(
        torch.autograd.grad((fast * cot).sum(), (theta, phi, g)),
        torch.autograd.grad((slow * cot).sum(), (theta, phi, g)),
    ):
        torch.testing.assert_close(gf, gs, rtol=0, atol=1e-13)


@pytest.mark.parametrize(
    ("instantiation", "strategy"),
    [("concatenation", "sorted"), ("embedded_gaussian", "chunked"), ("gaussian", "sdpa")],
)
def test_memory_is_linear_in_n(instantiation, strategy, monkeypatch):
    monkeypatch.setattr(strategies, "CHUNK_ELEMENTS", 1 << 14)  # 42 chunks of 14 queries
    batch, side = 2, 24  # N = N' = 576
    block = NonLocal2d(16, instantiation=instantiation, strategy=strategy)
    x = torch.randn(batch, 16, side, side, requires_grad=True)
    mask = torch.rand(batch, side, side) > 0.2
    n = side * side
    with _LargestTensor() as probe:
        block(x, key_mask=mask).square().sum().backward()
    assert probe.largest < batch * n * n // 16, probe.largest


def test_auto_falls_back_to_chunked_when_fused_kernels_refuse(monkeypatch):
    called = []
    original = strategies.chunked_softmax

    def spy(*args, **kwargs):
        called.append(True)
        return original(*args, **kwargs)

    from nonlocal_torch import functional

    monkeypatch.setattr(functional, "chunked_softmax", spy)
    monkeypatch.setattr(functional, "_fused_kernel_accepts", lambda *a: False)
    cfg = NonLocalConfig(4, spatial_dims=1, instantiation="gaussian")
    block, weights = block_for(cfg)
    x, _, _ = make_case(cfg)
    z = block.eval()(tensor(x))
    assert called
    np.testing.assert_allclose(z.detach().numpy(), reference(cfg, weights, x), atol=1e-12)


def test_cost_model_and_validation():
    assert choose_strategy("embedded_gaussian", 10**6, 10**6, 512, 512) == "sdpa"
    assert choose_strategy("dot_product", 3136, 784, 256, 256) == "associative"
    assert choose_strategy("dot_product", 4096, 1, 64, 64) == "pairwise"
    assert choose_strategy("concatenation", 16, 16, 4, 4) == "pairwise"
    # Measured on CPU (scripts/calibrate_concatenation.py): the case, pairwise 15%
    # faster in the block; sorting wins once the matrix is large, earlier in training.
    assert choose_strategy("concatenation", 784, 196, 128, 128) == "pairwise"
    assert choose_strategy("concatenation", 4096, 1024, 64, 64) == "sorted"
    assert choose_strategy("concatenation", 3136, 784, 64, 64, training=True) == "sorted"
    assert choose_strategy("concatenation", 196, 196, 128, 128, training=True) == "pairwise"
    # The softmax keeps its linear memory even where a small matrix would be faster.
    assert choose_strategy("embedded_gaussian", 576, 576, 32, 32, training=True) == "sdpa"
    assert choose_strategy("concatenation", 10**7, 8, 1, 1) == "sorted"  # N N' over the limit
    assert check_strategy("auto", "gaussian") == "auto"
    with pytest.raises(ValueError, match="strategy='associative' is invalid for gaussian"):
        NonLocalBlock(4, instantiation="gaussian", strategy="associative")
    assert (
        "strategy='sorted'"
        in NonLocal2d(4, instantiation="concatenation", strategy="sorted").extra_repr()
    )


def test_auto_picks_the_concatenation_strategy_for_training_or_inference(monkeypatch):
    from nonlocal_torch import functional

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["training"])
        return choose_strategy(*args, **kwargs)

    monkeypatch.setattr(functional, "choose_strategy", spy)
    block = NonLocalBlock(4, instantiation="concatenation")
    x = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        block(x)
    block.eval()(x)  # eval() without no_grad still records a graph for backward
    block(x).sum().backward()
    assert seen == [False, True, True]
