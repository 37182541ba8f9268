"""`NonLocalBlock.from_pretrained` on every Keras backend: published checkpoints (no PyTorch
needed to read them) become layers computing what the reference computes with their weights;
conv-kernel-shaped canonical weights load."""

from __future__ import annotations

import numpy as np
import pytest

from nonlocal_core import WeightError, nonlocal_forward, profile, random_weights
from nonlocal_core.convert import to_state_dict
from nonlocal_keras import NonLocalBlock

from .conftest import make_input, to_numpy


@pytest.mark.parametrize(
    ("source", "arguments", "told", "data_format"),
    [
        ("slowfast", {"dim": 8, "dim_inner": 4, "pool_size": [1, 2, 2]}, {"pool_size": [1, 2, 2]},
         "channels_first"),
        ("mmcv", {"in_channels": 6, "mode": "gaussian", "spatial_dims": 2, "sub_sample": True}, {},
         "channels_last"),
        ("timm", {"in_channels": 16, "use_scale": False}, {"use_scale": False}, "channels_last"),
    ],
    ids=["slowfast", "mmcv", "timm"],
)  # fmt: skip
def test_from_pretrained_matches_the_reference(adapter, source, arguments, told, data_format):
    config = profile(source, **arguments)
    weights = random_weights(config, seed=7)
    state = to_state_dict(weights, source, config, prefix="model.block.")
    block = NonLocalBlock.from_pretrained(
        state, source, data_format=data_format, dtype="float64", **told
    )
    config = config.replace(data_format=data_format)
    assert block.nonlocal_config == config
    x = make_input(config, seed=8)
    z = to_numpy(block(x))
    np.testing.assert_allclose(z, nonlocal_forward(x, weights, config), rtol=1e-10, atol=1e-12)


def test_torch_tensors_and_kernel_shapes_load():
    torch = pytest.importorskip("torch")
    config = profile("alexhex7", in_channels=8, instantiation="concatenation", spatial_dims=2)
    weights = random_weights(config, seed=9)
    # State-dict-shaped values: (C', C, 1, 1) conv kernels, w_f as (1, 2C', 1, 1), tensors.
    kernels = {
        name: torch.from_numpy(value.reshape(*value.shape, 1, 1) if value.ndim == 2 else value)
        for name, value in weights.items()
    }
    kernels["concat.weight"] = kernels["concat.weight"].reshape(1, -1, 1, 1)
    block = NonLocalBlock(**config.to_dict(), dtype="float64")
    block.load_canonical_weights(kernels)
    for name, value in block.canonical_weights().items():
        np.testing.assert_array_equal(value, weights[name])
    kernels["g.weight"] = torch.zeros(8, 4, 1, 1)  # transposed: not a reshape of (4, 8)
    with pytest.raises(WeightError, match=r"'g.weight' has shape \(8, 4, 1, 1\)"):
        block.load_canonical_weights(kernels)


def test_one_call_each_way_between_torch_and_keras(adapter):
    torch = pytest.importorskip("torch")
    import nonlocal_torch

    config = profile("slowfast", dim=6, dim_inner=3, pool_size=[1, 2, 2])
    weights = random_weights(config, seed=10)
    torch_block = nonlocal_torch.NonLocalBlock.from_config(config, dtype=torch.float64).eval()
    torch_block.load_canonical_weights(weights)
    layer = NonLocalBlock.from_block(torch_block, dtype="float64")
    back = nonlocal_torch.NonLocalBlock.from_block(layer, dtype=torch.float64)
    assert layer.nonlocal_config == config.replace(data_format="channels_last")
    assert back.config == config
    x = make_input(config, seed=11)
    expected = nonlocal_forward(x, weights, config)
    z_keras = to_numpy(layer(np.moveaxis(x, 1, -1)))
    np.testing.assert_allclose(np.moveaxis(z_keras, -1, 1), expected, rtol=1e-10, atol=1e-12)
    z_torch = back(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(z_torch, expected, rtol=1e-10, atol=1e-12)
