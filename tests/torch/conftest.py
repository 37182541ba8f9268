"""Fixtures of the PyTorch backend tests: devices (CUDA skips cleanly) and reference helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nonlocal_core import NonLocalConfig, nonlocal_forward, random_weights
from nonlocal_torch import NonLocalBlock

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available"),
    ),
]

EXTENTS = {1: (7,), 2: (5, 6), 3: (3, 4, 5)}


@pytest.fixture(params=DEVICES)
def device(request):
    """Each test using it runs on the CPU, and on CUDA when a GPU is present."""
    # Stated TF32 policy: tests compare float32 to float32 tolerances, so TF32 is off.
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield request.param
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def make_case(config: NonLocalConfig, *, context=False, mask=False, seed=0, batch=2):
    """Random x (and context, key mask with one all-False item) for `config`, as NumPy."""
    rng = np.random.default_rng(seed)
    extent = EXTENTS[config.spatial_dims]

    def features(channels: int) -> np.ndarray:
        if config.data_format == "channels_first":
            return rng.normal(size=(batch, channels, *extent))
        return rng.normal(size=(batch, *extent, channels))

    x = features(config.in_channels)
    ctx = features(config.context_channels) if context else None
    key_mask = None
    if mask:
        key_mask = rng.random((batch, *config.pooled_extent(extent))) > 0.4
        key_mask[-1] = False  # an item whose queries see no valid key: y = 0 there
    return x, ctx, key_mask


def block_for(config: NonLocalConfig, *, seed=1, dtype=torch.float64, device="cpu"):
    """A block holding `random_weights(config, seed)` and those weights."""
    weights = random_weights(config, seed=seed)
    block = NonLocalBlock.from_config(config, dtype=dtype, device=device)
    block.load_canonical_weights(weights)
    return block, weights


def tensor(array, device="cpu", dtype=torch.float64):
    """NumPy -> torch on `device` (bool arrays stay bool); None passes through."""
    if array is None:
        return None
    t = torch.from_numpy(np.ascontiguousarray(array))
    return t.to(device) if t.dtype == torch.bool else t.to(device, dtype)


def reference(config, weights, x, ctx=None, key_mask=None, training=False, attention=False):
    """The NumPy reference on the same inputs."""
    return nonlocal_forward(
        x,
        weights,
        config,
        context=ctx,
        key_mask=key_mask,
        training=training,
        return_attention=attention,
    )
