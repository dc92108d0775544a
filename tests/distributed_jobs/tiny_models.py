"""Tiny teacher and student networks for the subprocess scripts.

Weights are set from a seeded NumPy generator, so every process and every
strategy starts from the same values, whatever the order of creation.
"""

import keras
import numpy as np

SHAPE = (8, 8, 1)
CLASSES = 3


def conv_net(name, filters=4, batch_norm=False, sync=False):
    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(filters, 3, activation="tanh", name=f"{name}_c")(
        inputs
    )
    if batch_norm:
        norm = (
            keras.layers.BatchNormalization(synchronized=True)
            if sync
            else keras.layers.BatchNormalization()
        )
        x = norm(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(CLASSES, name=f"{name}_d")(x)
    return keras.Model(inputs, outputs, name=name)


def seeded(model, seed):
    rng = np.random.default_rng(seed)
    model.set_weights(
        [
            rng.normal(scale=0.3, size=w.shape).astype(w.dtype)
            for w in model.get_weights()
        ]
    )
    return model


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n,) + SHAPE).astype("float32")
    y = rng.integers(0, CLASSES, size=(n,)).astype("int32")
    return x, y


def pair(batch_norm=False):
    teacher = seeded(conv_net("teacher", filters=6), 1)
    student = seeded(conv_net("student", batch_norm=batch_norm), 2)
    return teacher, student
