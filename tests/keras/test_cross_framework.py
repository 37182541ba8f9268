"""nonlocal_torch and nonlocal_keras agree: the same canonical weights give the same output
on the same input (both checked against the reference), in both layouts, and weights move
between the two through the canonical layout."""

from __future__ import annotations

import numpy as np
import pytest

from nonlocal_core import INSTANTIATIONS, NonLocalConfig, nonlocal_forward, random_weights

from .conftest import make_input, to_numpy

torch = pytest.importorskip("torch")
nonlocal_torch = pytest.importorskip("nonlocal_torch")

from nonlocal_keras import NonLocalBlock  # noqa: E402


def _torch_block(cfg: NonLocalConfig, weights, training: bool):
    block = nonlocal_torch.NonLocalBlock.from_config(cfg, dtype=torch.float64)
    block.load_canonical_weights(weights)
    return block.train(training)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_same_weights_same_output(adapter, instantiation, data_format, training):
    # `adapter`: on JAX, float64 needs jax_enable_x64, which the adapter turns on.
    cfg = NonLocalConfig(
        6, spatial_dims=2, instantiation=instantiation, subsample=True, data_format=data_format
    )
    weights = random_weights(cfg, seed=11)
    x = make_input(cfg, seed=12, extent=(5, 6))
    mask = np.random.default_rng(13).random((2, 2, 3)) > 0.3

    torch_block = _torch_block(cfg, weights, training)
    z_torch = torch_block(torch.from_numpy(x), key_mask=torch.from_numpy(mask))
    z_torch = z_torch.detach().numpy()
    keras_block = NonLocalBlock.from_config(cfg, dtype="float64")
    keras_block.load_canonical_weights(weights)
    z_keras = to_numpy(keras_block(x, key_mask=mask, training=training))

    want = nonlocal_forward(x, weights, cfg, key_mask=mask, training=training)
    np.testing.assert_allclose(z_torch, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(z_keras, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(z_keras, z_torch, rtol=0, atol=1e-12)


@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_weights_move_between_frameworks(adapter, data_format):
    # torch -> canonical -> keras -> canonical -> torch is lossless, running stats included.
    cfg = NonLocalConfig(4, spatial_dims=3, instantiation="concatenation", data_format=data_format)
    source = _torch_block(cfg, random_weights(cfg, seed=14), training=False)
    exported = {k: v.numpy() for k, v in source.canonical_weights().items()}
    keras_block = NonLocalBlock.from_config(cfg, dtype="float64")
    keras_block.load_canonical_weights(exported)
    back = _torch_block(cfg, keras_block.canonical_weights(), training=False)
    for name, value in back.canonical_weights().items():
        np.testing.assert_array_equal(value.numpy(), exported[name])
    x = make_input(cfg, seed=15)
    np.testing.assert_array_equal(
        back(torch.from_numpy(x)).detach().numpy(), source(torch.from_numpy(x)).detach().numpy()
    )
    np.testing.assert_allclose(
        to_numpy(keras_block(x)), nonlocal_forward(x, exported, cfg), rtol=0, atol=1e-12
    )
