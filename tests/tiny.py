"""Tiny models and data shared by the tests."""

import keras
import numpy as np


def conv_net(
    input_shape=(8, 8, 1),
    classes=5,
    filters=4,
    activation="tanh",
    name=None,
    dtype=None,
    batch_norm=False,
    seed=0,
):
    """A small smooth conv net returning logits."""
    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input(input_shape, dtype=dtype)
    h = keras.layers.Conv2D(
        filters,
        3,
        padding="same",
        activation=activation,
        kernel_initializer=init,
        dtype=dtype,
        name="conv1",
    )(inputs)
    if batch_norm:
        h = keras.layers.BatchNormalization(dtype=dtype, name="bn")(h)
    h = keras.layers.Conv2D(
        filters,
        3,
        strides=2,
        padding="same",
        activation=activation,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1),
        dtype=dtype,
        name="conv2",
    )(h)
    h = keras.layers.Flatten(dtype=dtype)(h)
    outputs = keras.layers.Dense(
        classes,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 2),
        bias_initializer=keras.initializers.RandomNormal(seed=seed + 3),
        dtype=dtype,
        name="logits",
    )(h)
    return keras.Model(inputs, outputs, name=name)


def linear_net(weights, bias, name=None, dtype="float64"):
    """A linear model `x @ W + b` on flat inputs with fixed weights."""
    d, k = weights.shape
    inputs = keras.Input((d,), dtype=dtype)
    layer = keras.layers.Dense(k, dtype=dtype, name="dense")
    outputs = layer(inputs)
    layer.set_weights([weights, bias])
    return keras.Model(inputs, outputs, name=name)


def mlp(input_dim=3, classes=4, hidden=6, seed=0, dtype="float64", name=None):
    """A smooth two-layer MLP."""
    inputs = keras.Input((input_dim,), dtype=dtype)
    h = keras.layers.Dense(
        hidden,
        activation="tanh",
        dtype=dtype,
        kernel_initializer=keras.initializers.RandomNormal(
            stddev=1.0, seed=seed
        ),
        bias_initializer=keras.initializers.RandomNormal(seed=seed + 1),
    )(inputs)
    outputs = keras.layers.Dense(
        classes,
        dtype=dtype,
        kernel_initializer=keras.initializers.RandomNormal(
            stddev=1.0, seed=seed + 2
        ),
        bias_initializer=keras.initializers.RandomNormal(seed=seed + 3),
        name="logits",
    )(h)
    return keras.Model(inputs, outputs, name=name)


def images(n=6, shape=(8, 8, 1), seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n,) + shape).astype("float32")


def sparse_ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def named_conv_net(
    prefix, filters, size=8, classes=3, first_stride=1, second_stride=1
):
    """Two tanh convolutions, pooling and logits, with layers named by
    `prefix`: `{prefix}c1`, `{prefix}c2`, `{prefix}pool`, `{prefix}out`
    (the model `{prefix}net`), on `(size, size, 3)` inputs."""
    inputs = keras.Input((size, size, 3))
    h = keras.layers.Conv2D(
        filters,
        3,
        strides=first_stride,
        padding="same",
        activation="tanh",
        name=f"{prefix}c1",
    )(inputs)
    h = keras.layers.Conv2D(
        filters,
        3,
        strides=second_stride,
        padding="same",
        activation="tanh",
        name=f"{prefix}c2",
    )(h)
    h = keras.layers.GlobalAveragePooling2D(name=f"{prefix}pool")(h)
    outputs = keras.layers.Dense(classes, name=f"{prefix}out")(h)
    return keras.Model(inputs, outputs, name=f"{prefix}net")
