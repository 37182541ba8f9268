"""`nonlocal_keras.capture_attention`: every block's attention during ordinary eager calls of a
model, keyed by layer path, with every block restored on exit; traced calls are refused with
an error that names the block."""

from __future__ import annotations

import doctest
import importlib

import keras
import numpy as np
import pytest

from nonlocal_keras import NonLocalBlock, capture_attention

from .conftest import BACKEND, to_numpy


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    h = NonLocalBlock(subsample=True, name="first")(h)
    h = keras.layers.Conv2D(6, 3, strides=2, padding="same")(h)
    h = NonLocalBlock(instantiation="dot_product", name="second")(h)
    model = keras.Model(inputs, h)
    for block in _blocks(model):  # blocks that compute something (not the identity)
        block.gamma.assign(np.linspace(0.5, 1.5, block.gamma.shape[0]))
    return model


def _blocks(model: keras.Model) -> list[NonLocalBlock]:
    return [layer for layer in model.layers if isinstance(layer, NonLocalBlock)]


def _x(batch: int = 2) -> np.ndarray:
    return np.random.default_rng(batch).normal(size=(batch, 8, 8, 3)).astype("float32")


def test_maps_are_each_blocks_attention_keyed_by_name():
    model = _model()
    x = _x()
    plain = to_numpy(model(x))
    with capture_attention(model) as maps:
        out = to_numpy(model(x))
    np.testing.assert_allclose(out, plain, rtol=1e-5, atol=1e-5)  # what the model computes
    assert sorted(maps) == ["first", "second"] and maps.paths == ("first", "second")
    assert isinstance(maps["first"], np.ndarray)
    assert maps["first"].shape == (2, 64, 16) and maps["second"].shape == (2, 16, 16)
    # The same matrix as the block's own return_attention=True.
    features = model.layers[1](x)
    _, want = model.get_layer("first")(features, return_attention=True)
    np.testing.assert_allclose(maps["first"], to_numpy(want), rtol=1e-5, atol=1e-6)


def test_last_call_or_every_call_and_nesting():
    model = _model()
    with capture_attention(model) as last, capture_attention(model, keep="all") as every:
        model(_x(batch=2))
        model(_x(batch=3))
    assert last["first"].shape[0] == 3
    assert [a.shape[0] for a in every["first"]] == [2, 3]
    np.testing.assert_array_equal(every["second"][-1], last["second"])


def test_blocks_are_restored_on_exit_even_after_an_error():
    model = _model()
    with pytest.raises(RuntimeError, match="boom"), capture_attention(model) as maps:
        model(_x())
        raise RuntimeError("boom")
    assert all(block._attention_sink is None for block in _blocks(model))
    model(_x(batch=4))
    assert maps["first"].shape[0] == 2  # nothing captured after exit


def test_nested_models_have_paths():
    inner_in = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 1, name="conv")(inner_in)
    backbone = keras.Model(inner_in, NonLocalBlock(name="conv_nonlocal")(h), name="backbone")
    inputs = keras.Input((8, 8, 3))
    classifier = keras.Model(inputs, keras.layers.Dense(2)(backbone(inputs)))
    with capture_attention(classifier) as maps:
        classifier(_x())
    assert list(maps) == ["backbone/conv_nonlocal"]
    assert maps["backbone/conv_nonlocal"].shape == (2, 64, 64)


def test_predict_runs_eagerly_or_is_refused():
    model = _model()
    x = _x(batch=3)
    model.compile(run_eagerly=True)
    with capture_attention(model) as maps:
        model.predict(x, batch_size=2, verbose=0)
    assert maps["first"].shape == (1, 64, 16)  # the last batch

    traced = _model()
    if BACKEND == "torch":
        return  # Keras's torch backend predicts eagerly: nothing is traced
    with pytest.raises(RuntimeError, match=r"the block 'first' ran traced .*run_eagerly=True"):
        with capture_attention(traced):
            traced.predict(x, verbose=0)


def test_bad_arguments_are_named():
    model = _model()
    with capture_attention(model) as maps:
        pass
    with pytest.raises(KeyError, match=r"no attention for 'third': the blocks watched are"):
        maps["third"]
    with pytest.raises(TypeError, match="model must be a Keras model or layer, got str"):
        with capture_attention("model"):
            pass
    with pytest.raises(ValueError, match=r"keep='first' is invalid"):
        with capture_attention(model, keep="first"):
            pass
    with pytest.raises(ValueError, match=r"holds no NonLocalBlock"):
        with capture_attention(keras.layers.Dense(2)):
            pass


def test_docstring_examples():
    module = importlib.import_module("nonlocal_keras.attention")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
