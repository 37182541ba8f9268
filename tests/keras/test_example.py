"""examples/keras_train.py keeps working on this process's Keras backend, and tells the truth:
its data has the labels it describes, the numbers it prints are the trained model's, and the
non-local block inside that model computes the float64 reference."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import keras
import numpy as np

from nonlocal_conformance.dtypes import Precision
from nonlocal_conformance.trace import SAFETY, trace_forward
from nonlocal_keras import NonLocalBlock

from .conftest import to_numpy

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "keras_train.py"
LINE = re.compile(
    r"(?P<backend>\w+): (?P<steps>\d+) steps, train loss (?P<train_loss>\d+\.\d{3}), "
    r"test loss (?P<test_loss>\d+\.\d{3}), test accuracy (?P<accuracy>\d\.\d{2})$"
)


def _example():
    spec = importlib.util.spec_from_file_location("keras_train_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_labels_say_whether_the_two_dots_share_a_channel():
    x, y = _example().make_data(64)
    assert x.shape == (64, 12, 12, 3) and x.dtype == np.float32
    assert set(y.tolist()) == {0, 1}
    for image, label in zip(x, y):
        # Dots add 3 to N(0, 0.1) noise; two dots on one pixel and channel add 6.
        _, _, channels = np.nonzero(image > 1.5)
        assert len(channels) == 2 or (len(channels) == 1 and image.max() > 4.5)
        assert (len(set(channels.tolist())) == 1) == bool(label)


def test_example_trains_a_few_steps(capsys, monkeypatch):
    trained = []
    evaluate = keras.Model.evaluate

    def recording_evaluate(model, *args, **kwargs):
        result = evaluate(model, *args, **kwargs)
        trained.append((model, result))
        return result

    monkeypatch.setattr(keras.Model, "evaluate", recording_evaluate)
    module = _example()
    module.train(steps=3, batch_size=8)
    line = LINE.search(capsys.readouterr().out.strip())
    assert line, "the example's summary line changed format"
    assert line["backend"] == keras.backend.backend() and line["steps"] == "3"
    assert np.isfinite(float(line["train_loss"])) and float(line["train_loss"]) > 0
    ((model, (loss, accuracy)),) = trained

    # The printed test loss and accuracy are those of the trained model on the test set,
    # recomputed here from its logits (printed to 3 and 2 decimals).
    x_test, y_test = module.make_data(256, seed=1)
    logits = np.asarray(model.predict(x_test, verbose=0), np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    want_loss = -log_p[np.arange(len(y_test)), y_test].mean()
    want_accuracy = (logits.argmax(axis=1) == y_test).mean()
    assert abs(float(line["test_loss"]) - want_loss) <= 5e-4 + 1e-5 * want_loss
    assert abs(float(line["accuracy"]) - want_accuracy) <= 5e-3 + 1e-6
    assert abs(loss - want_loss) <= 1e-5 * (1 + want_loss) and accuracy == want_accuracy

    # The block inside the trained model: trained (gamma moved off 0, so no longer the
    # identity) and equal to the float64 reference with its trained weights.
    (block,) = [layer for layer in model.layers if isinstance(layer, NonLocalBlock)]
    weights = block.canonical_weights()
    assert np.abs(weights["norm.gamma"]).max() > 0
    features = to_numpy(keras.Model(model.input, block.input)(x_test[:4]))
    trace = trace_forward(
        features, weights, block.nonlocal_config, precision=Precision.default("float32")
    )
    assert not np.allclose(trace.z, features)
    got = to_numpy(block(features.astype("float32")))
    assert (np.abs(got - trace.z) <= SAFETY * trace.err_z).all()
