"""Train a tiny Keras model containing a non-local block for a few steps.

The task needs long-range context: each 12x12 image holds two bright dots, and the label says
whether they have the same colour channel. A 1x1-conv network sees one position at a time;
the non-local block lets every position read every other one.

    KERAS_BACKEND=jax python examples/keras_train.py          # one backend
    python examples/keras_train.py --all-backends             # tensorflow, jax, torch in turn

Each backend runs in its own process: Keras reads KERAS_BACKEND once, at import.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np

BACKENDS = ("tensorflow", "jax", "torch")


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images (12, 12, 3) with two dots each; label 1 when both dots share a channel.

    Example:
        >>> x, y = make_data(4)
        >>> x.shape, sorted(set(y.tolist())) <= [0, 1]
        ((4, 12, 12, 3), True)
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.1, size=(n, 12, 12, 3)).astype("float32")
    y = rng.integers(0, 2, size=n).astype("int32")
    for i in range(n):
        first = rng.integers(0, 3)
        second = first if y[i] else (first + rng.integers(1, 3)) % 3
        (r1, c1), (r2, c2) = rng.integers(0, 12, size=(2, 2))
        x[i, r1, c1, first] += 3.0
        x[i, r2, c2, second] += 3.0
    return x, y


def train(steps: int, batch_size: int) -> None:
    """Build, train for `steps` steps and report, on the current Keras backend."""
    import keras

    from nonlocal_keras import NonLocalBlock

    keras.utils.set_random_seed(0)
    backend = keras.backend.backend()
    inputs = keras.Input((None, None, 3))  # any batch, any image size
    h = keras.layers.Conv2D(16, 1, activation="relu")(inputs)
    h = NonLocalBlock(instantiation="embedded_gaussian", subsample=True)(h)
    h = keras.layers.GlobalMaxPooling2D()(h)
    outputs = keras.layers.Dense(2)(h)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        # XLA on TensorFlow and JAX; torch.compile would take longer than this whole demo.
        jit_compile=backend in ("tensorflow", "jax"),
    )
    x, y = make_data(steps * batch_size)
    history = model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
    x_test, y_test = make_data(256, seed=1)
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(
        f"{backend:>10}: {steps} steps, train loss {history.history['loss'][-1]:.3f}, "
        f"test loss {loss:.3f}, test accuracy {accuracy:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps (default 40)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--all-backends",
        action="store_true",
        help="run once per Keras backend, each in a subprocess",
    )
    args = parser.parse_args(argv)
    if not args.all_backends:
        train(args.steps, args.batch_size)
        return 0
    failed = []
    for backend in BACKENDS:
        env = {**os.environ, "KERAS_BACKEND": backend}
        cmd = [sys.executable, __file__, "--steps", str(args.steps)]
        cmd += ["--batch-size", str(args.batch_size)]
        if subprocess.run(cmd, env=env, check=False).returncode != 0:
            failed.append(backend)
    if failed:
        print(f"failed on: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
