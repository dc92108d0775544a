"""Difference estimators and networks with kinks.

The difference of two passes has the right value on any network, but its
weight gradient is the derivative of `J v` only where the network's
derivative is continuous. Networks with kinks are refused, read from the
graph (custom layers and nested models included); the networks accepted
train with the gradient of plain-tape Jacobians.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_jacobian as kj
from keras_jacobian import kinks
from tests import tiny

DIFFERENCES = ("forward_difference", "finite_difference")


class Maximum(keras.layers.Layer):
    """A leaky ReLU written by hand."""

    def call(self, x):
        return keras.ops.maximum(x, 0.1 * x)


class Block(keras.layers.Layer):
    """Dropout and a ReLU inside a custom layer."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(4)
        self.dropout = keras.layers.Dropout(0.3, seed=1)

    def call(self, x, training=None):
        return keras.ops.relu(self.dropout(self.dense(x), training=training))


def flat(*layers, dtype="float32"):
    inputs = keras.Input((6,), dtype=dtype)
    h = keras.layers.Dense(5, activation="tanh", dtype=dtype)(inputs)
    for layer in layers:
        h = layer(h)
    return keras.Model(inputs, keras.layers.Dense(3, dtype=dtype)(h))


def nested_relu():
    inner = flat(keras.layers.ReLU())
    inputs = keras.Input((6,))
    return keras.Model(inputs, inner(inputs))


KINKED = {
    "relu activation": lambda: flat(keras.layers.Dense(4, activation="relu")),
    "ReLU layer": lambda: flat(keras.layers.ReLU()),
    "leaky ReLU": lambda: flat(keras.layers.LeakyReLU()),
    "hard swish": lambda: flat(keras.layers.Activation("hard_swish")),
    "maximum in a custom layer": lambda: flat(Maximum()),
    "relu and dropout in a custom layer": lambda: flat(Block()),
    "nested model": nested_relu,
    "max pooling": lambda: _pooled(keras.layers.MaxPooling2D(2)),
    "leaky ReLU by where": lambda: flat(
        keras.layers.Lambda(lambda t: keras.ops.where(t > 0, t, 0.1 * t))
    ),
    "sign": lambda: flat(keras.layers.Lambda(lambda t: keras.ops.sign(t) * t)),
    "top k": lambda: flat(
        keras.layers.Lambda(lambda t: keras.ops.top_k(t, 2)[0])
    ),
    "rounding, straight through": lambda: flat(
        keras.layers.Lambda(
            lambda t: t + keras.ops.stop_gradient(keras.ops.floor(t) - t)
        )
    ),
    "global max pooling": lambda: _pooled(keras.layers.GlobalMaxPooling2D()),
}


def _pooled(pool):
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(3, 3, activation="tanh")(inputs)
    h = pool(h)
    if len(h.shape) > 2:
        h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def _input(model):
    shape = model.inputs[0].shape[1:]
    return tiny.images(4, tuple(shape))


@pytest.mark.parametrize("case", sorted(KINKED))
@pytest.mark.parametrize("estimator", DIFFERENCES)
def test_students_with_kinks_are_refused(case, estimator):
    student = KINKED[case]()
    teacher = KINKED[case]()  # a teacher may have kinks
    term = kj.JacobianMatching("all", estimator=estimator)
    with pytest.raises(ValueError, match="has kinks.*estimator='vjp'"):
        kj.Distiller(teacher, student, [term])
    with pytest.raises(ValueError, match="has kinks"):
        kj.JacobianRegularizedModel(student, target="all", estimator=estimator)
    # Autodiff estimators take the same networks.
    for autodiff in ("vjp", "jvp"):
        term = kj.JacobianMatching("all", estimator=autodiff)
        kj.Distiller(teacher, student, [term])


SMOOTH = {
    "tanh": lambda: flat(),
    "gelu, swish, softplus": lambda: flat(
        keras.layers.Activation("gelu"),
        keras.layers.Activation("swish"),
        keras.layers.Dense(4, activation="softplus"),
    ),
    "layer norm": lambda: flat(keras.layers.LayerNormalization()),
    # Without BatchNorm: in training mode it couples the examples of a
    # batch, which per-example tape Jacobians leave out.
    "average pooling": lambda: _pooled(keras.layers.AveragePooling2D(2)),
}


def test_kinks_are_read_from_the_graph_not_from_constants():
    # Normalization clamps its variance by a maximum that does not
    # depend on the input.
    normalization = keras.layers.Normalization(mean=0.0, variance=1.0)
    model = flat(normalization)
    ops = kinks.graph_ops(model, (6,), "float32", training=True)
    assert not ops & kinks.KINK_OPS, ops & kinks.KINK_OPS
    kinks.check_smooth(model, (6,), "float32", "student", "forward_difference")
    with pytest.raises(ValueError, match="maximum"):
        kinks.check_smooth(
            flat(Maximum()), (6,), "float32", "student", "forward_difference"
        )


def _tape_gradient(teacher, student, x, directions):
    """The weight gradient of the mean over examples of
    `sum_r ||(J_T - J_S) v_r||^2 * D / R`, from plain-tape Jacobians."""
    x = tf.constant(x)
    n = x.shape[0]
    v = tf.reshape(
        tf.cast(directions, x.dtype), (n, -1, int(np.prod(x.shape[1:])))
    )
    variables = [v.value for v in student.trainable_variables]
    with tf.GradientTape() as outer:
        jacobians = []
        for model in (teacher, student):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = model(x, training=False)
            jacobians.append(tf.reshape(tape.batch_jacobian(y, x), (n, 3, -1)))
        diff = jacobians[0] - jacobians[1]
        moved = tf.einsum("bkd,brd->brk", diff, v)
        size = v.shape[-1]
        loss = tf.reduce_mean(
            size * tf.reduce_mean(tf.reduce_sum(moved**2, -1), -1)
        )
    return loss, outer.gradient(loss, variables)


@pytest.mark.parametrize("case", sorted(SMOOTH))
@pytest.mark.parametrize("estimator", DIFFERENCES)
def test_accepted_students_train_with_the_tape_gradient(case, estimator):
    keras.utils.set_random_seed(0)
    teacher, student = SMOOTH[case](), SMOOTH[case]()
    term = kj.JacobianMatching(
        "all", estimator=estimator, normalize=False, num_projections=2
    )
    distiller = kj.Distiller(
        teacher, student, [term], seed=3, supervised_loss_weight=1.0
    )
    distiller.compile(optimizer=keras.optimizers.SGD(1.0))
    x = _input(student)
    state = distiller.seed_generator.state.numpy()
    before = [v.numpy() for v in student.trainable_variables]
    distiller.fit(x, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
    steps = [b - v.numpy() for b, v in zip(before, student.trainable_variables)]
    for v, b in zip(student.trainable_variables, before):
        v.assign(b)
    distiller.seed_generator.state.assign(state)
    targets = distiller.teacher_targets(tf.constant(x))[0]
    _, expected = _tape_gradient(teacher, student, x, targets["directions"])
    got = np.concatenate([s.ravel() for s in steps])
    want = np.concatenate(
        [
            np.zeros(v.shape).ravel() if g is None else g.numpy().ravel()
            for g, v in zip(expected, student.trainable_variables)
        ]
    )
    cosine = got @ want / np.linalg.norm(got) / np.linalg.norm(want)
    assert cosine > 0.999, cosine
    np.testing.assert_allclose(
        np.linalg.norm(got), np.linalg.norm(want), rtol=0.02
    )


def test_random_layers_are_no_kinks():
    # Their masks are drawn in the input's shape, not from its values.
    for layer in (keras.layers.Dropout(0.3), keras.layers.GaussianNoise(0.1)):
        model = flat(layer)
        found = kinks.graph_ops(model, (6,), "float32", True) & kinks.KINK_OPS
        assert not found, found
        teacher = flat()
        term = kj.JacobianMatching("all", estimator="forward_difference")
        kj.Distiller(teacher, model, [term])
