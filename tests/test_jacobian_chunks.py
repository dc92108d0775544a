"""Jacobian rows computed in chunks equal rows computed one by one."""

import keras
import numpy as np
import tensorflow as tf

from keras_jacobian import jacobians


def _net():
    inputs = keras.Input((5, 5, 2))
    x = keras.layers.Conv2D(3, 3, activation="tanh")(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(23)(x)
    return keras.Model(inputs, outputs)


def test_chunked_rows_match_row_by_row_gradients():
    model = _net()
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(3, 5, 5, 2)), "float32")
    v = tf.constant(rng.normal(size=(3, 23, 23)), "float32")
    assert jacobians.MAX_VECTORIZED_ROWS < 23

    def loss_and_grads(rows_fn):
        with tf.GradientTape() as outer:
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(x)
                out = model(x)
            rows = rows_fn(tape, out)
            loss = tf.reduce_sum(tf.sin(rows))
        return rows, outer.gradient(loss, model.trainable_variables)

    def one_by_one(tape, out):
        return tf.stack(
            [
                tape.gradient(out, x, output_gradients=v[:, r])
                for r in range(23)
            ],
            axis=1,
        )

    rows, grads = loss_and_grads(
        lambda tape, out: jacobians.vjp_rows(tape, out, x, v)
    )
    expected_rows, expected_grads = loss_and_grads(one_by_one)
    np.testing.assert_allclose(rows, expected_rows, atol=1e-5)
    compared = 0
    for g, e in zip(grads, expected_grads):
        # The bias of the last layer does not reach the rows: None in both.
        assert (g is None) == (e is None)
        if g is not None:
            np.testing.assert_allclose(g, e, atol=1e-4)
            compared += 1
    assert compared >= 3
