"""Teacher caching: same training as the live teacher, and the refusals."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_jacobian.caching import cache_teacher
from keras_jacobian.caching import dataset_random_ops
from keras_jacobian.distiller import Distiller
from keras_jacobian.terms.jacobian import JacobianMatching
from keras_jacobian.terms.logits import LogitsDistillation
from keras_jacobian.terms.noise import NoiseDistillation

SHAPE = (6, 6, 2)
CLASSES = 4


def _net(width, seed):
    init = keras.initializers.GlorotUniform(seed)
    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(width, 3, kernel_initializer=init)(inputs)
    x = keras.layers.Activation("tanh")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(CLASSES, kernel_initializer=init)(x)
    return keras.Model(inputs, outputs)


def _data(n=12):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n,) + SHAPE).astype("float32")
    y = rng.integers(0, CLASSES, n)
    return x, y


def _distiller(terms):
    distiller = Distiller(
        _net(4, 1), _net(3, 2), terms, supervised_loss_weight=1.0
    )
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return distiller


def _terms():
    return [
        LogitsDistillation(temperature=2.0, loss="kd"),
        JacobianMatching("label"),
        JacobianMatching("top_k", k=2, normalize=False),
    ]


def test_cached_training_matches_live_teacher():
    x, y = _data()
    live = _distiller(_terms())
    cached = _distiller(_terms())
    cached.student.set_weights(live.student.get_weights())
    before = [w.copy() for w in live.student.get_weights()]

    live.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    dataset = cache_teacher(cached, (x, y), batch_size=4)
    cached.fit(dataset, epochs=2, verbose=0)

    after = live.student.get_weights()
    moved = max(np.abs(a - b).max() for a, b in zip(after, before))
    assert moved > 1e-3
    for a, b in zip(after, cached.student.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_cached_targets_are_the_teachers():
    x, y = _data(8)
    distiller = _distiller([JacobianMatching("label")])
    dataset = distiller.cache_teacher(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(3),
        shuffle=True,
        seed=3,
    )
    inputs, labels = next(iter(dataset.unbatch().batch(8)))
    xs = tf.constant(inputs["student"])
    # Independent check: the teacher's input gradient of the labelled
    # logit, from a plain tape, for the (shuffled) examples.
    with tf.GradientTape() as tape:
        tape.watch(xs)
        logits = distiller.teacher(xs)
        picked = tf.reduce_sum(logits * tf.one_hot(labels, CLASSES), axis=-1)
    expected = tape.gradient(picked, xs).numpy()
    rows = inputs["teacher_targets"][0]["rows"].numpy()
    np.testing.assert_allclose(rows[:, 0], expected, atol=1e-5)
    assert sorted(labels.numpy().tolist()) == sorted(y.tolist())


@pytest.mark.parametrize(
    "term",
    [
        JacobianMatching("random"),
        NoiseDistillation(stddev=0.1),
    ],
    ids=["random_projections", "noise"],
)
def test_refuses_terms_drawn_each_step(term):
    distiller = _distiller(
        [LogitsDistillation(temperature=4.0, loss="kd"), term]
    )
    with pytest.raises(ValueError, match="draw new random values"):
        cache_teacher(distiller, _data(), batch_size=4)


def test_refuses_random_pipeline():
    x, y = _data()
    flip = keras.layers.RandomFlip("horizontal", seed=1)
    augmented = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .batch(4)
        .map(lambda a, b: (flip(a, training=True), b))
    )
    distiller = _distiller([LogitsDistillation(temperature=4.0, loss="kd")])
    with pytest.raises(ValueError, match="random operations"):
        cache_teacher(distiller, augmented)


def test_random_op_detection():
    x, y = _data()
    base = tf.data.Dataset.from_tensor_slices((x, y))
    assert dataset_random_ops(base.shuffle(12, seed=0).batch(4)) == []
    assert dataset_random_ops(base.map(lambda a, b: (2.0 * a, b))) == []
    flipped = base.map(lambda a, b: (tf.image.random_flip_left_right(a), b))
    assert "RandomUniform" in dataset_random_ops(flipped)
    noisy = base.map(
        lambda a, b: (a + tf.random.stateless_normal(SHAPE, (1, 2)), b)
    )
    assert any("StatelessRandom" in op for op in dataset_random_ops(noisy))
    opaque = base.map(
        lambda a, b: (tf.numpy_function(lambda z: z, [a], tf.float32), b)
    )
    assert dataset_random_ops(opaque) == ["PyFunc"]
    eager = base.map(
        lambda a, b: (tf.py_function(lambda z: z, [a], tf.float32), b)
    )
    assert dataset_random_ops(eager) == ["EagerPyFunc"]
    declared_pure = base.map(
        lambda a, b: (
            tf.numpy_function(lambda z: z, [a], tf.float32, stateful=False),
            b,
        )
    )
    assert dataset_random_ops(declared_pure) == []


def test_arrays_need_batch_size():
    distiller = _distiller([LogitsDistillation(temperature=4.0, loss="kd")])
    with pytest.raises(ValueError, match="batch_size"):
        cache_teacher(distiller, _data())
