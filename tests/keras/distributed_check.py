"""One training step of a model holding the block, on one device and under
`keras.distribution.DataParallel` over two, must move every weight and BN statistic the same.

Run by `test_distributed.py` in a process of its own: the two virtual CPU devices exist only
when ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` is set before JAX starts.

    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python tests/keras/distributed_check.py embedded_gaussian auto

Prints one JSON line: the largest relative difference, the weights the step moved, and the
devices the block's statistics live on.
"""

from __future__ import annotations

import json
import sys

import keras
import numpy as np

from nonlocal_keras import NonLocalBlock


def _model(instantiation: str, strategy: str) -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 1, name="stem")(inputs)
    h = NonLocalBlock(
        instantiation=instantiation, subsample=True, strategy=strategy, name="nonlocal"
    )(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(2)(h))


def _step(instantiation: str, strategy: str, start: list, x, y) -> tuple[list, keras.Model]:
    model = _model(instantiation, strategy)
    model.set_weights(start)
    # gamma = 0 would leave theta, phi and g without gradients on this single step.
    block = model.get_layer("nonlocal")
    block.gamma.assign(np.full(block.gamma.shape, 0.5, "float32"))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
    model.train_on_batch(x, y)
    return [np.asarray(w) for w in model.get_weights()], model


def main(instantiation: str, strategy: str) -> dict:
    if strategy == "chunked":
        from nonlocal_keras import strategies

        strategies.chunk_size = lambda n, m: 3  # several chunks, the last one partial
    devices = keras.distribution.list_devices("cpu")
    assert len(devices) == 2, f"expected 2 virtual CPU devices, got {devices}"
    keras.utils.set_random_seed(0)
    start = _model(instantiation, strategy).get_weights()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    x[4:] = 3.0 * x[4:] + 5.0  # each device's half has its own statistics: BN must not use them
    y = rng.normal(size=(8, 2)).astype("float32")

    single, _ = _step(instantiation, strategy, start, x, y)
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    try:
        parallel, model = _step(instantiation, strategy, start, x, y)
        block = model.get_layer("nonlocal")
        placed = sorted(str(d) for d in block.moving_mean.value.sharding.device_set)
    finally:
        keras.distribution.set_distribution(None)
    names = [w.path for w in model.weights]
    moved = [n for n, a, b in zip(names, start, single) if not np.array_equal(a, b)]
    return {
        "devices": placed,
        # Per weight: how far the two steps' results differ, relative to how far the step
        # moved that weight (float32 reductions summed in another order differ slightly).
        # Some biases get no gradient at all (BN removes constant shifts, softmax ignores
        # phi's): their float32 noise is measured against 1e-3 of the weight's scale.
        "differences": {
            n: float(
                np.max(np.abs(b - a))
                / max(float(np.max(np.abs(a - s))), 1e-3 * max(1.0, float(np.max(np.abs(s)))))
            )
            for n, s, a, b in zip(names, start, single, parallel)
        },
        "moved": moved,
        "names": names,
    }


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:3])))
