"""Functional models with ``keras.applications.ResNet50``'s layer names, for the insertion
and capture tests: `mini_resnet` is a narrow ResNet (res3 of 4 blocks, res4 of 6, as in
ResNet50) that builds and trains in a fraction of a second on every backend."""

from __future__ import annotations

import keras

# keras.applications.ResNet50's residual block outputs in res3 and res4.
RES3 = [f"conv3_block{b}_out" for b in range(1, 5)]
RES4 = [f"conv4_block{b}_out" for b in range(1, 7)]


def _residual_block(x, width: int, stride: int, name: str):
    h = keras.layers.Conv2D(width, 3, strides=stride, padding="same", name=f"{name}_1_conv")(x)
    h = keras.layers.BatchNormalization(name=f"{name}_1_bn")(h)
    h = keras.layers.Activation("relu", name=f"{name}_1_relu")(h)
    h = keras.layers.Conv2D(width, 3, padding="same", name=f"{name}_2_conv")(h)
    shortcut = x
    if stride != 1 or x.shape[-1] != width:
        shortcut = keras.layers.Conv2D(width, 1, strides=stride, name=f"{name}_0_conv")(x)
    h = keras.layers.Add(name=f"{name}_add")([shortcut, h])
    return keras.layers.Activation("relu", name=f"{name}_out")(h)


def mini_resnet(
    input_shape=(8, 8, 3), widths=(4, 8, 16), classes: int = 3, name: str = "mini_resnet"
) -> keras.Model:
    """conv1, res2 (1 block), res3 (4 blocks), res4 (6 blocks), pooling and a classifier."""
    inputs = keras.Input(input_shape, name="input")
    x = keras.layers.Conv2D(widths[0], 3, padding="same", name="conv1_conv")(inputs)
    for stage, blocks, width in ((2, 1, widths[0]), (3, 4, widths[1]), (4, 6, widths[2])):
        for b in range(1, blocks + 1):
            stride = 2 if b == 1 and stage > 2 else 1
            x = _residual_block(x, width, stride, f"conv{stage}_block{b}")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(classes, name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)
