"""`nonlocal_keras.insert_nonlocal` on ``keras.applications.ResNet50(weights=None)`` (once per
backend: it is slow to build) and on a narrow ResNet with the same names (`resnets`): the
paper's recipes and explicit names put blocks of the right width right after the right
layers, the new model computes what the original did, trains, saves and loads, and the
original is left alone."""

from __future__ import annotations

import doctest
import importlib

import keras
import numpy as np
import pytest

from nonlocal_keras import NonLocalBlock, insert_nonlocal
from nonlocal_keras.insert import recipe_layers

from .conftest import BACKEND, to_numpy
from .resnets import RES3, RES4, mini_resnet

RECIPE_LAYERS = {
    "wang2018-1": ["conv4_block5_out"],
    "wang2018-5": [RES3[1], RES3[3], RES4[1], RES4[3], RES4[5]],
    "wang2018-10": RES3 + RES4,
}


def _blocks(model: keras.Model) -> dict[str, NonLocalBlock]:
    return {layer.name: layer for layer in model.layers if isinstance(layer, NonLocalBlock)}


def _images(shape, batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, *shape)).astype("float32")


def _follows(model: keras.Model, name: str) -> bool:
    """The block after `name` is the one layer that reads that layer's output."""
    output = model.get_layer(name).output
    readers = [
        other.name
        for other in model.layers
        if not isinstance(other, keras.layers.InputLayer)
        and any(t is output for t in keras.tree.flatten(other.input))
    ]
    return readers == [f"{name}_nonlocal"]


@pytest.fixture(scope="module")
def mini():
    # insert_nonlocal leaves its model as it was, so the tests share one (on JAX each new
    # weight shape costs a compilation).
    keras.utils.set_random_seed(1)
    return mini_resnet()


@pytest.fixture(scope="module")
def resnet50():
    keras.utils.set_random_seed(0)
    return keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=4)


@pytest.mark.skipif(
    BACKEND == "jax",
    reason="eager JAX compiles each of ResNet50's weight shapes (~40 s on the CI CPU); the "
    "same model runs on TensorFlow and PyTorch, and the narrow ResNet on JAX",
)
def test_recipes_on_resnet50(resnet50):
    for recipe, names in RECIPE_LAYERS.items():
        assert recipe_layers(resnet50, recipe) == names

    new = insert_nonlocal(resnet50, "wang2018-5", subsample=True)
    blocks = _blocks(new)
    assert list(blocks) == [f"{name}_nonlocal" for name in RECIPE_LAYERS["wang2018-5"]]
    for name, block in blocks.items():
        cfg = block.nonlocal_config
        assert cfg.in_channels == (512 if name.startswith("conv3") else 1024), name
        assert cfg.spatial_dims == 2 and cfg.subsample == (2, 2)
        assert _follows(new, name.removesuffix("_nonlocal"))
    # Every layer keeps its name (inputs included: feeding by name still works).
    kept = [layer.name for layer in new.layers if not isinstance(layer, NonLocalBlock)]
    assert kept == [layer.name for layer in resnet50.layers]
    assert not _blocks(resnet50)  # the original is unchanged ...
    originals = {id(v) for v in resnet50.weights}
    assert not any(id(v) in originals for v in new.weights)  # ... and shares no variable

    x = _images((32, 32, 3))
    np.testing.assert_array_equal(to_numpy(new(x)), to_numpy(resnet50(x)))  # identity
    new.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        run_eagerly=True,
    )
    gammas = {name: b.canonical_weights()["norm.gamma"] for name, b in blocks.items()}
    new.train_on_batch(x, np.array([0, 3]))
    for name, block in blocks.items():
        assert not np.array_equal(block.canonical_weights()["norm.gamma"], gammas[name]), name


def test_recipes_on_a_narrow_resnet(mini):
    model = mini
    for recipe, names in RECIPE_LAYERS.items():
        new = insert_nonlocal(model, recipe)
        assert list(_blocks(new)) == [f"{name}_nonlocal" for name in names]
        assert all(_follows(new, name) for name in names)
    x = _images((8, 8, 3))  # the last new model: every place of every recipe
    np.testing.assert_array_equal(to_numpy(new(x)), to_numpy(model(x)))


def test_explicit_names_train_save_and_load(mini, tmp_path):
    model = mini
    new = insert_nonlocal(
        model, ["conv3_block3_out", "conv4_block1_add"], instantiation="dot_product"
    )
    widths = {name: b.nonlocal_config.in_channels for name, b in _blocks(new).items()}
    assert widths == {"conv3_block3_out_nonlocal": 8, "conv4_block1_add_nonlocal": 16}
    x, y = _images((8, 8, 3), batch=8, seed=2), np.arange(8) % 3
    np.testing.assert_array_equal(to_numpy(new(x)), to_numpy(model(x)))

    # Training (Keras's compiled train step) moves the blocks' BN gamma.
    new.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = {name: b.canonical_weights() for name, b in _blocks(new).items()}
    new.fit(x, y, batch_size=8, epochs=2, verbose=0)
    for name, block in _blocks(new).items():
        gamma = block.canonical_weights()["norm.gamma"]
        assert not np.array_equal(gamma, before[name]["norm.gamma"]), name

    path = tmp_path / "inserted.keras"
    new.save(path)
    restored = keras.models.load_model(path)
    assert list(_blocks(restored)) == list(_blocks(new))
    np.testing.assert_allclose(to_numpy(restored(x)), to_numpy(new(x)), rtol=1e-6, atol=1e-6)


def test_layers_of_a_nested_backbone():
    backbone = mini_resnet(name="backbone")
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(2, name="head")(backbone(inputs))
    classifier = keras.Model(inputs, outputs)
    new = insert_nonlocal(classifier, ["conv4_block5_out"])
    inner = new.get_layer("backbone")
    assert inner is not backbone and list(_blocks(inner)) == ["conv4_block5_out_nonlocal"]
    x = _images((8, 8, 3))
    np.testing.assert_array_equal(to_numpy(new(x)), to_numpy(classifier(x)))


def _shared_layer_model() -> keras.Model:
    inputs = keras.Input((8, 8, 4))
    conv = keras.layers.Conv2D(4, 1, name="shared")
    return keras.Model(inputs, conv(conv(inputs)))


ERRORS = [
    ("wang2018-3", ValueError, r"at='wang2018-3' is not a recipe: expected one of"),
    ([], TypeError, r"at=\[\] is invalid: expected a recipe name"),
    ([3], TypeError, r"at\[0\]=3 is invalid: expected a layer name"),
    (["conv3_block2_out", "conv3_block2_out"], ValueError, r"at\[1\]=.* is a duplicate"),
    (["conv3_block9_out"], ValueError, r"names no layer of the model; similar names: \["),
    (["input"], ValueError, r"at\[0\]='input' is an input"),
    (["predictions"], ValueError, r"'predictions', whose output has shape \(None, 3\)"),
]


@pytest.mark.parametrize(("at", "error", "match"), ERRORS)
def test_bad_at_is_named(mini, at, error, match):
    with pytest.raises(error, match=match):
        insert_nonlocal(mini, at)


def test_other_refusals(mini):
    model = mini
    new = insert_nonlocal(model, ["conv3_block2_out"])
    with pytest.raises(ValueError, match=r"already has a layer 'conv3_block2_out_nonlocal'"):
        insert_nonlocal(new, ["conv3_block2_out"])
    with pytest.raises(ValueError, match=r"is a non-local block"):
        insert_nonlocal(new, ["conv3_block2_out_nonlocal"])
    with pytest.raises(ValueError, match=r"instantiation"):
        insert_nonlocal(model, ["conv3_block2_out"], instantiation="softmax")
    with pytest.raises(TypeError, match=r"name='x' cannot be given"):
        insert_nonlocal(model, ["conv3_block2_out"], name="x")
    with pytest.raises(ValueError, match=r"'shared', which the model calls more than once"):
        insert_nonlocal(_shared_layer_model(), ["shared"])
    small = keras.Model(model.input, model.get_layer("conv3_block2_out").output)
    with pytest.raises(ValueError, match=r"at='wang2018-1' puts a block after layer 'conv4_"):
        insert_nonlocal(small, "wang2018-1")
    with pytest.raises(TypeError, match="model is a Sequential model"):
        insert_nonlocal(keras.Sequential([keras.layers.Dense(2)]), ["dense"])
    with pytest.raises(TypeError, match="model is a dict"):
        insert_nonlocal({}, ["a"])


@pytest.mark.parametrize("module", ["nonlocal_keras.insert"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
