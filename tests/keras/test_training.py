"""Training a model that holds the block: `model.fit` (XLA-compiled on TensorFlow and JAX),
running statistics updated inside the compiled step, and inference that still equals the
reference on the trained weights."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from nonlocal_core import INSTANTIATIONS, nonlocal_forward
from nonlocal_keras import NonLocalBlock

from .conftest import BACKEND

# torch.compile of a whole train step costs minutes on 2 cores; PyTorch trains eagerly here.
JIT = BACKEND in ("tensorflow", "jax")


def _model(instantiation: str) -> tuple[keras.Model, NonLocalBlock]:
    block = NonLocalBlock(instantiation=instantiation, subsample=True, name="nonlocal")
    inputs = keras.Input((6, 6, 3))  # unknown batch
    h = keras.layers.Conv2D(8, 1, name="stem")(inputs)
    h = block(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(2)(h)
    return keras.Model(inputs, outputs), block


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_fit_trains_the_block_and_inference_matches_the_reference(instantiation):
    keras.utils.set_random_seed(0)
    model, block = _model(instantiation)
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=JIT,
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6, 6, 3)).astype("float32")
    y = (x[:, :3].mean(axis=(1, 2, 3)) > x[:, 3:].mean(axis=(1, 2, 3))).astype("int32")
    assert model.jit_compile is JIT
    before = block.canonical_weights()
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    after = block.canonical_weights()

    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    # gamma leaves 0 on the first step; theta/phi/g get gradients once it has.
    for name in after:
        assert not np.array_equal(after[name], before[name]), name
    assert np.all(after["norm.running_var"] > 0)

    # Inference (training=False, running statistics) computes the spec's function.
    stem = keras.Model(model.input, model.get_layer("stem").output)
    h = np.asarray(keras.ops.convert_to_numpy(stem(x[:4])), np.float64)
    cfg = block.nonlocal_config
    want = nonlocal_forward(h, {k: v.astype(np.float64) for k, v in after.items()}, cfg)
    inner = keras.Model(model.input, block.output)
    got = np.asarray(keras.ops.convert_to_numpy(inner.predict(x[:4], verbose=0)), np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
