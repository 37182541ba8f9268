"""examples/keras_train.py keeps working on this process's Keras backend."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "keras_train.py"


def test_example_trains_a_few_steps(capsys):
    spec = importlib.util.spec_from_file_location("keras_train_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.train(steps=3, batch_size=8)
    line = capsys.readouterr().out
    assert "3 steps" in line and "test accuracy" in line
    x, y = module.make_data(6)
    assert x.shape == (6, 12, 12, 3) and set(y.tolist()) <= {0, 1}
