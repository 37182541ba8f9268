"""`NonLocalBlock.from_pretrained` and conv-kernel shapes in `load_canonical_weights`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nonlocal_core import WeightError, profile, random_weights, save
from nonlocal_core.convert import CheckpointError, to_state_dict
from nonlocal_torch import NonLocalBlock

from .conftest import make_case, reference, tensor

CASES = [
    ("slowfast", {"dim": 8, "dim_inner": 4, "pool_size": [1, 2, 2]}, {"pool_size": [1, 2, 2]}),
    ("pytorchvideo", {"dim_in": 8, "dim_inner": 4, "instantiation": "dot_product"},
     {"instantiation": "dot_product"}),
    ("caffe2", {"dim_in": 8, "dim_inner": 4}, {}),
    ("mmcv", {"in_channels": 8, "mode": "concatenation", "spatial_dims": 2, "sub_sample": True,
              "norm_cfg": {"type": "BN"}}, {"norm_cfg": {"type": "BN"}}),
    ("alexhex7", {"in_channels": 8, "instantiation": "gaussian", "spatial_dims": 1}, {}),
    ("timm", {"in_channels": 16}, {}),
    ("paper", {"in_channels": 8, "spatial_dims": 3}, {"spatial_dims": 3}),
]  # fmt: skip


@pytest.mark.parametrize(("source", "arguments", "told"), CASES, ids=[c[0] for c in CASES])
def test_from_pretrained_reads_each_source(source, arguments, told):
    # Only what the weights cannot tell is passed: channels, rank, norm come from the keys.
    config = profile(source, **arguments)
    weights = random_weights(config, seed=3)
    if source == "mmcv":
        weights["out.bias"][:] = 0  # mmcv has no W_z bias before its norm
    prefix = "nonlocal_conv3_1_" if source == "caffe2" else "backbone.layer3.0.nl."
    state = {
        key: torch.from_numpy(value)
        for key, value in to_state_dict(weights, source, config, prefix=prefix).items()
    }
    state["backbone.stem.weight"] = torch.zeros(8, 3, 1, 1)  # not a block: ignored
    block = NonLocalBlock.from_pretrained(state, source, dtype=torch.float64, **told)
    assert block.config == config and not block.training and block.g.weight.dtype == torch.float64
    x, _, _ = make_case(config, seed=4)
    z = block(tensor(x)).detach().numpy()
    np.testing.assert_array_equal(z.shape, x.shape)
    np.testing.assert_allclose(z, reference(config, weights, x), rtol=1e-10, atol=1e-12)


def test_from_pretrained_reads_files_and_picks_a_block(tmp_path):
    config = profile("slowfast", dim=8, dim_inner=4)
    state = {}
    for i, path in enumerate(("s3.pathway0_nonlocal0.", "s4.pathway0_nonlocal1.")):
        weights = to_state_dict(random_weights(config, seed=i), "slowfast", config, prefix=path)
        state.update({key: torch.from_numpy(value) for key, value in weights.items()})
    checkpoint = tmp_path / "slowfast.pyth"
    torch.save({"epoch": 1, "model_state": state, "cfg": "NONLOCAL: ..."}, checkpoint)
    with pytest.raises(CheckpointError, match=r"2 slowfast blocks .* pass block="):
        NonLocalBlock.from_pretrained(checkpoint, "slowfast")
    with pytest.raises(
        CheckpointError, match=r"no slowfast block 's5': it has .*'s4.pathway0_nonlocal1'"
    ):
        NonLocalBlock.from_pretrained(checkpoint, "slowfast", block="s5")
    block = NonLocalBlock.from_pretrained(checkpoint, "slowfast", block="s4.pathway0_nonlocal1")
    expected = random_weights(config, seed=1)
    for name, value in block.canonical_weights().items():
        np.testing.assert_array_equal(value.numpy(), expected[name].astype(np.float32))
    # The canonical file: no source needed, the config travels in it.
    saved = tmp_path / "block.safetensors"
    save(saved, config, expected)
    again = NonLocalBlock.from_pretrained(saved, data_format="channels_last")
    assert again.config == config.replace(data_format="channels_last")
    saved_last = tmp_path / "last.safetensors"
    save(saved_last, config.replace(data_format="channels_last"), expected)
    assert NonLocalBlock.from_pretrained(saved_last).config.data_format == "channels_last"
    with pytest.raises(TypeError, match="source="):
        NonLocalBlock.from_pretrained(state)
    with pytest.raises(TypeError, match=r"\['block', 'pool_size'\]|\['pool_size', 'block'\]"):
        NonLocalBlock.from_pretrained(saved, block="s3", pool_size=[1, 2, 2])


def test_load_canonical_weights_takes_conv_kernel_shapes():
    block = NonLocalBlock(8, spatial_dims=2, instantiation="concatenation", dtype=torch.float64)
    weights = random_weights(block.config, seed=5)
    # The block's own parameter shapes: (C', C, 1, 1) kernels and a (1, 2C') w_f.
    kernels = {name: value.reshape(tuple(slot.shape)) for (name, value), slot in zip(
        weights.items(), block._canonical_slots().values())}  # fmt: skip
    assert kernels["theta.weight"].shape == (4, 8, 1, 1)
    block.load_canonical_weights(kernels)
    for name, value in block.canonical_weights().items():
        np.testing.assert_array_equal(value.numpy(), weights[name])
    kernels["theta.weight"] = np.zeros((4, 8, 3, 3))
    with pytest.raises(WeightError, match=r"'theta.weight' has shape \(4, 8, 3, 3\)"):
        block.load_canonical_weights(kernels)
    kernels["theta.weight"] = np.zeros((8, 4, 1, 1))  # transposed: not a reshape
    with pytest.raises(WeightError, match=r"'theta.weight' has shape \(8, 4, 1, 1\)"):
        block.load_canonical_weights(kernels)
