"""`insert_nonlocal`: a Functional model rebuilt with non-local blocks after named layers.

The paper's block is a plug-in: it goes after chosen residual blocks of a pretrained network
and, starting as the identity (BN gamma = beta = 0), changes nothing until it trains. Here a
block goes after each layer `at` names (``"conv4_block5_out"``), or at the places one of the
paper's recipes names for ``keras.applications.ResNet50``'s naming (`RECIPES`).

How: ``keras.models.clone_model`` replays the model's graph with a ``call_function`` that
calls a new `NonLocalBlock` on the output of each named layer. Every other layer is a copy
(``from_config``, then the original's weights), so the new model shares no layer, variable
or graph node with the original, which stays as it was, and every layer of the new one has
a single place in its graph (``new.get_layer(name).output`` works for feature extractors).
Layers keep their names; the block after ``NAME`` is the layer ``NAME_nonlocal``. Layers of
Functional models nested in the model (a ResNet50 used as the backbone of a classifier) are
found and rebuilt too. The block reads its width and rank from its input; its data format
is the named layer's ``data_format`` if it has one, else Keras's ``image_data_format()``,
and its dtype policy the named layer's.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

import keras
from keras.src.models.functional import Functional  # clone_model's own test for this

from .layer import NonLocalBlock

SUFFIX = "_nonlocal"

# Recipe -> the ResNet50 block outputs it puts blocks after: (stage, 1-based block numbers)
# pairs; "second_to_last" depends on the depth. res3 = conv3_*, res4 = conv4_*.
RECIPES: dict[str, dict[str, tuple[int, ...] | str]] = {
    # One block before the last residual block of res4 (conv4_block5_out in a ResNet50).
    "wang2018-1": {"conv4": "second_to_last"},
    # Every other block of res3 and res4, as the authors' code places them.
    "wang2018-5": {"conv3": (2, 4), "conv4": (2, 4, 6)},
    # Every block of res3 and res4 of a ResNet50 (4 + 6).
    "wang2018-10": {"conv3": (1, 2, 3, 4), "conv4": (1, 2, 3, 4, 5, 6)},
}


def recipe_layers(model: keras.Model, recipe: str) -> list[str]:
    """The names of the layers a recipe of `RECIPES` puts blocks after, in `model`.

    Example:
        >>> x = keras.Input((8, 8, 4))
        >>> outs = [keras.layers.ReLU(name=f"conv{s}_block{b}_out") for s, n in ((3, 4), (4, 6))
        ...         for b in range(1, n + 1)]
        >>> h = x
        >>> for layer in outs:
        ...     h = layer(h)
        >>> recipe_layers(keras.Model(x, h), "wang2018-5")
        ['conv3_block2_out', 'conv3_block4_out', 'conv4_block2_out', 'conv4_block4_out', 'conv4_block6_out']
        >>> recipe_layers(keras.Model(x, h), "wang2018-1")
        ['conv4_block5_out']
    """  # noqa: E501
    if recipe not in RECIPES:
        raise ValueError(f"recipe={recipe!r} is unknown: expected one of {sorted(RECIPES)}")
    names = set(_layers_by_name(_require_functional(model)))
    found = []
    for stage, places in RECIPES[recipe].items():
        pattern = re.compile(rf"{stage}_block(\d+)_out")
        blocks = sorted(int(m[1]) for m in map(pattern.fullmatch, names) if m)
        if places == "second_to_last":
            places = (blocks[-1] - 1,) if blocks else (0,)
        for number in places:
            name = f"{stage}_block{number}_out"
            if name not in names:
                raise ValueError(
                    f"at={recipe!r} puts a block after layer {name!r}, but the model has "
                    f"{len(blocks)} {stage}_block*_out layers: the recipe expects "
                    "keras.applications.ResNet50 (or deeper) naming; pass layer names instead"
                )
            found.append(name)
    return found


def insert_nonlocal(
    model: keras.Model, at: str | Sequence[str], **block_kwargs: Any
) -> keras.Model:
    """A new Functional model: `model` with a `NonLocalBlock` right after each layer `at`
    names.

    `at` is a list of layer names (``["conv3_block2_out", "conv4_block4_out"]``) or a
    recipe of `RECIPES` for ``keras.applications.ResNet50``'s naming: ``"wang2018-1"``
    (after ``conv4_block5_out``), ``"wang2018-5"`` (after ``conv3_block2_out``,
    ``conv3_block4_out``, ``conv4_block2_out``, ``conv4_block4_out``, ``conv4_block6_out``)
    or ``"wang2018-10"`` (after every ``conv3_*`` and ``conv4_*`` block). `block_kwargs` go
    to every block (``subsample=True``, ``instantiation="dot_product"``, ...).

    The block after layer ``NAME`` is named ``NAME_nonlocal``; every other layer is a copy
    of the original with its name and weights, so the new model computes exactly what
    `model` did until the blocks train. `model` is left unchanged and shares nothing with
    the new model. The new model is not compiled: compile it to train. It saves and loads
    as any model (``NonLocalBlock`` is a registered Keras serialisable).

    Example:
        >>> import numpy as np
        >>> x = keras.Input((8, 8, 3))
        >>> h = keras.layers.Conv2D(16, 3, padding="same", name="features")(x)
        >>> model = keras.Model(x, keras.layers.GlobalAveragePooling2D()(h))
        >>> new = insert_nonlocal(model, ["features"], subsample=True)
        >>> [layer.name for layer in new.layers][1:3]
        ['features', 'features_nonlocal']
        >>> new.get_layer("features_nonlocal").nonlocal_config.in_channels
        16
        >>> images = np.random.default_rng(0).normal(size=(2, 8, 8, 3))
        >>> bool(np.allclose(new.predict(images, verbose=0), model.predict(images, verbose=0)))
        True
    """
    model = _require_functional(model)
    if "name" in block_kwargs:
        raise TypeError(
            f"name={block_kwargs['name']!r} cannot be given: each block is named after the "
            f"layer it follows (NAME{SUFFIX})"
        )
    NonLocalBlock(**block_kwargs)  # a wrong keyword fails here, naming itself
    layers = _layers_by_name(model)
    names = _names(model, at, layers)
    calls = dict.fromkeys(names, 0)
    copies: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []

    def copy_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        clone = layer.__class__.from_config(layer.get_config())
        copies.append((clone, layer))
        return clone

    def call_layer(layer: keras.layers.Layer, *args: Any, **kwargs: Any) -> Any:
        outputs = layer(*args, **kwargs)
        if layer.name not in calls:
            return outputs
        calls[layer.name] += 1
        if calls[layer.name] > 1:
            raise ValueError(
                f"at names layer {layer.name!r}, which the model calls more than once (a "
                "shared layer): expected a layer with one place in the graph"
            )
        return _block_after(layer, outputs, block_kwargs)(outputs)

    new = keras.models.clone_model(
        model,
        input_tensors=_inputs_like(model),
        clone_function=copy_layer,
        call_function=call_layer,
        recursive=True,
    )
    for clone, original in copies:
        if original.weights:
            clone.set_weights(original.get_weights())
    missed = [name for name, count in calls.items() if count == 0]
    if missed:
        raise ValueError(
            f"at names {missed}, which the model never calls (layers of a nested Sequential "
            "model, or outside the graph): expected layers of the Functional graph"
        )
    return new


def _block_after(layer: keras.layers.Layer, outputs: Any, block_kwargs: dict) -> NonLocalBlock:
    """The block for `layer`'s output, checked to be one tensor with 1 to 3 spatial axes."""
    if not isinstance(outputs, keras.KerasTensor):
        raise ValueError(
            f"at names layer {layer.name!r}, whose output is a {type(outputs).__name__}: "
            "expected a layer with a single tensor output"
        )
    if not 3 <= len(outputs.shape) <= 5:
        raise ValueError(
            f"at names layer {layer.name!r}, whose output has shape {tuple(outputs.shape)}: "
            "expected (batch, 1 to 3 spatial axes, channels) or channels first"
        )
    kwargs = dict(block_kwargs)
    data_format = getattr(layer, "data_format", None)
    if data_format in ("channels_first", "channels_last"):
        kwargs.setdefault("data_format", data_format)
    kwargs.setdefault("dtype", layer.dtype_policy)
    return NonLocalBlock(name=f"{layer.name}{SUFFIX}", **kwargs)


def _inputs_like(model: Functional) -> Any:
    """New inputs with the names of `model`'s input layers (clone_model's own inputs would be
    named after their tensors, so feeding inputs by name would break)."""
    layers = {
        id(layer.output): layer
        for layer in model.layers
        if isinstance(layer, keras.layers.InputLayer)
    }

    def like(tensor: keras.KerasTensor) -> keras.KerasTensor:
        layer = layers.get(id(tensor))
        name = tensor.name if layer is None else layer.name
        optional = False if layer is None else layer.optional
        return keras.Input(
            batch_shape=tensor.shape, dtype=tensor.dtype, name=name, optional=optional
        )

    return keras.tree.map_structure(like, model.input)


def _require_functional(model: Any) -> Functional:
    if isinstance(model, Functional):
        return model
    if isinstance(model, keras.Sequential):
        kind = "a Sequential model: its layers are listed, not called in a graph"
    elif isinstance(model, keras.Model):
        kind = f"a subclassed model ({type(model).__name__}), whose graph Keras cannot see"
    else:
        kind = f"a {type(model).__name__}"
    raise TypeError(
        f"model is {kind}: expected a Functional keras.Model (keras.Model(inputs, outputs)); "
        "build one with the functional API, or add the block in the model's code"
    )


def _walk(model: Functional):
    """Every layer of `model` and of the Functional models nested in it."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, Functional):
            yield from _walk(layer)


def _layers_by_name(model: Functional) -> dict[str, list[keras.layers.Layer]]:
    found: dict[str, list[keras.layers.Layer]] = {}
    for layer in _walk(model):
        found.setdefault(layer.name, []).append(layer)
    return found


def _names(model: Functional, at: Any, layers: dict[str, list]) -> list[str]:
    """`at` as a checked list of layer names (a recipe's, or the given ones)."""
    if isinstance(at, str):
        if at in RECIPES:
            at = recipe_layers(model, at)
        else:
            raise ValueError(
                f"at={at!r} is not a recipe: expected one of {sorted(RECIPES)}, or a list of "
                f"layer names (at=[{at!r}] for a block after that layer)"
            )
    elif not isinstance(at, Sequence) or not at:
        raise TypeError(
            f"at={at!r} is invalid: expected a recipe name ({', '.join(sorted(RECIPES))}) "
            "or a non-empty list of layer names such as ['conv4_block5_out']"
        )
    seen: set[str] = set()
    for index, name in enumerate(at):
        where = f"at[{index}]={name!r}"
        if not isinstance(name, str):
            raise TypeError(f"{where} is invalid: expected a layer name (str)")
        if name in seen:
            raise ValueError(f"{where} is a duplicate: expected each layer name once")
        seen.add(name)
        matches = layers.get(name, [])
        if not matches:
            close = difflib.get_close_matches(name, list(layers), n=3)
            hint = f"; similar names: {close}" if close else ""
            raise ValueError(
                f"{where} names no layer of the model{hint}: expected the name of a layer of "
                "the model or of a Functional model nested in it (model.summary() lists them)"
            )
        if len(matches) > 1:
            raise ValueError(
                f"{where} names {len(matches)} layers (the model and a model nested in it "
                "both have one): expected a name that is unique"
            )
        if isinstance(matches[0], NonLocalBlock):
            raise ValueError(f"{where} is a non-local block: expected a layer of the network")
        if f"{name}{SUFFIX}" in layers:
            raise ValueError(
                f"{where} already has a layer {name + SUFFIX!r} after it: expected a layer "
                "without a block (was insert_nonlocal applied twice?)"
            )
        if isinstance(matches[0], keras.layers.InputLayer):
            raise ValueError(f"{where} is an input: expected a layer that computes something")
    return list(at)
