"""`capture_attention`: every non-local block's attention during ordinary calls of a model.

While the context is open, each `NonLocalBlock` of the model materialises its (B, N, N')
attention and hands it to a sink (the layer's ``_attention_sink``), which keeps a NumPy copy;
the model's outputs are what they would be otherwise (up to the last bits, as between the
layer's fused and unfused paths).

Values exist only where the layer runs eagerly: ``model(x)`` on every backend, and
``model.predict`` / ``evaluate`` of a model compiled with ``run_eagerly=True`` (``fit`` too on
TensorFlow and PyTorch; on JAX even an eager ``fit`` differentiates the step with
``jax.value_and_grad``, so the attention is a tracer there).
Inside a traced function (``tf.function``, ``jax.jit``: Keras's own ``predict`` by default
on TensorFlow and JAX) a block holds symbolic tensors, and the capture raises a RuntimeError
naming the block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from nonlocal_core.attention_maps import AttentionMaps as _CoreMaps
from nonlocal_core.attention_maps import attached, check_keep

from .layer import NonLocalBlock, to_numpy


class AttentionMaps(_CoreMaps):
    """Layer path -> the attention a_ij, ``(B, N, N')`` NumPy array, of the block there.

    A read-only mapping filled by `capture_attention` as the blocks run: by default each
    value is the block's last call's matrix (in the layer's compute dtype; bfloat16 as
    float32); with ``keep="all"`` it is the list of every call's, oldest first. Blocks that
    have not run are absent. `paths` lists every block the capture watches.
    """

    def convert(self, path: str, attention: Any) -> np.ndarray:
        try:
            return to_numpy(attention)
        except Exception as exc:  # each backend fails differently on a symbolic tensor
            raise RuntimeError(
                f"capture_attention: the block {path!r} ran traced (inside tf.function, "
                "jax.jit, a compiled predict/fit, or any fit on JAX), where its attention is "
                f"symbolic ({type(attention).__name__}): call the model eagerly, model(x), or "
                "compile it with run_eagerly=True before predict"
            ) from exc


@contextlib.contextmanager
def capture_attention(model: keras.layers.Layer, *, keep: str = "last") -> Iterator[AttentionMaps]:
    """Capture the attention of every `NonLocalBlock` in `model` while the context is open.

    Yields an `AttentionMaps`: layer path -> the ``(B, N, N')`` attention (a NumPy array) of
    that block's last call (``keep="last"``, the default), or the list of every call's
    (``keep="all"``). A path is the layer's name, prefixed by the names of the models or
    layers it is nested in, joined with ``/`` (``"resnet50/conv4_block5_out_nonlocal"``).
    The maps stay readable after the context closes. Blocks compute their attention
    explicitly while captured (no fused kernel). Nested captures both receive the maps; on
    exit, even by an exception, every block is as it was.

    Eager calls only (``model(x)``, or ``predict`` with ``run_eagerly=True``): a traced
    call raises a RuntimeError naming the block (see the module docstring).

    Example:
        >>> x = keras.Input((8, 8, 3))
        >>> h = keras.layers.Conv2D(16, 3, padding="same")(x)
        >>> model = keras.Model(x, NonLocalBlock(subsample=True, name="nl")(h))
        >>> with capture_attention(model) as maps:
        ...     z = model(np.zeros((2, 8, 8, 3), "float32"))
        >>> list(maps), maps["nl"].shape  # N = 8 * 8 queries, N' = 4 * 4 pooled keys
        (['nl'], (2, 64, 16))
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            f"model must be a Keras model or layer, got {type(model).__name__}: "
            "capture_attention watches the NonLocalBlock layers inside it"
        )
    check_keep(keep)
    blocks = list(_blocks(model, ""))
    if not blocks:
        raise ValueError(
            f"model ({type(model).__name__} {model.name!r}) holds no NonLocalBlock: "
            "expected a model with non-local blocks (see nonlocal_keras.insert_nonlocal)"
        )
    with attached(AttentionMaps(tuple(path for path, _ in blocks), keep), blocks) as maps:
        yield maps


def _blocks(layer: keras.layers.Layer, prefix: str) -> Iterator[tuple[str, NonLocalBlock]]:
    """(path, block) for every NonLocalBlock in `layer` (itself included), each once."""
    seen: set[int] = set()
    stack = [(prefix, layer)]
    while stack:
        path, current = stack.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, NonLocalBlock):
            yield path or current.name, current
            continue
        # Keras's own traversal of tracked sub-layers: a model's layers, a layer's parts.
        children = current._flatten_layers(include_self=False, recursive=False)
        stack.extend((f"{path}/{c.name}" if path else c.name, c) for c in children)
