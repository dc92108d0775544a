"""Tests of keras_jacobian.experiments.models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_jacobian.experiments import models

SMALL = {
    "vgg9": {"width": 8},
    "vgg4": {"width": 8},
    "resnet": {"depth": 10, "width": 1},
}


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize(
    "input_shape, num_classes", [((8, 8, 1), 10), ((32, 32, 3), 100)]
)
def test_output_shapes_and_logits(name, input_shape, num_classes):
    model = models.get_model(name, input_shape, num_classes, **SMALL[name])
    x = np.random.default_rng(0).random((3,) + input_shape).astype("float32")
    y = model(x, training=False)
    assert tuple(y.shape) == (3, num_classes)
    assert model.name == name
    logits = model.get_layer("logits")
    assert logits is model.layers[-1]
    assert logits.activation is keras.activations.linear
    assert model.get_layer("features").output.shape[0] is None
    assert not any("Resizing" in type(layer).__name__ for layer in model.layers)


def test_vgg_named_blocks_match_between_teacher_and_student():
    teacher = models.vgg9((32, 32, 3), 10, width=8)
    student = models.vgg4((32, 32, 3), 10, width=4)
    for i, size in [(1, 32), (2, 16), (3, 8)]:
        t = teacher.get_layer(f"block{i}_out").output.shape
        s = student.get_layer(f"block{i}_out").output.shape
        assert t[1:3] == s[1:3] == (size, size)
        assert t[-1] == 8 * 2 ** (i - 1)
        assert s[-1] == 4 * 2 ** (i - 1)
    convs = [
        layer
        for layer in teacher.layers
        if isinstance(layer, keras.layers.Conv2D)
    ]
    dense = [
        layer
        for layer in teacher.layers
        if isinstance(layer, keras.layers.Dense)
    ]
    assert (len(convs), len(dense)) == (7, 2)
    convs = [
        layer
        for layer in student.layers
        if isinstance(layer, keras.layers.Conv2D)
    ]
    dense = [
        layer
        for layer in student.layers
        if isinstance(layer, keras.layers.Dense)
    ]
    assert (len(convs), len(dense)) == (3, 1)


def test_small_inputs_never_pool_below_one_pixel():
    model = models.vgg9((8, 8, 1), 10, width=4)
    assert model.get_layer("block3_pool").output.shape[1:3] == (1, 1)
    tiny = models.vgg9((2, 2, 1), 3, width=4, pooling="flatten")
    assert tiny.get_layer("block3_pool").output.shape[1:3] == (1, 1)
    assert tuple(tiny(np.zeros((1, 2, 2, 1))).shape) == (1, 3)


def test_resnet_named_groups_and_variable_input():
    model = models.resnet((None, None, 3), 5, depth=16, width=1)
    for i, channels in [(1, 16), (2, 32), (3, 64)]:
        assert model.get_layer(f"group{i}_out").output.shape[-1] == channels
    assert tuple(model(np.zeros((2, 12, 12, 3))).shape) == (2, 5)
    fixed = models.resnet((32, 32, 3), 5, depth=10, width=1)
    for i, size in [(1, 32), (2, 16), (3, 8)]:
        assert fixed.get_layer(f"group{i}_out").output.shape[1:3] == (
            size,
            size,
        )


@pytest.mark.parametrize("name", sorted(SMALL))
def test_models_are_twice_differentiable(name):
    model = models.get_model(name, (8, 8, 1), 10, **SMALL[name])
    x = tf.constant(
        np.random.default_rng(1).random((4, 8, 8, 1)), dtype=tf.float32
    )
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            inner.watch(x)
            logits = model(x, training=True)
            selected = tf.reduce_sum(logits[:, 0])
        input_grad = inner.gradient(selected, x)
        penalty = tf.reduce_sum(tf.square(input_grad))
    grads = outer.gradient(penalty, model.trainable_weights)
    norms = {
        w.path: (None if g is None else float(tf.norm(g)))
        for w, g in zip(model.trainable_weights, grads)
    }
    kernels = {p: n for p, n in norms.items() if p.endswith("kernel")}
    assert kernels
    for path, norm in kernels.items():
        assert norm is not None and norm > 0, (path, norm)
    assert sum(n for n in norms.values() if n is not None) > 0


def test_errors():
    with pytest.raises(ValueError, match=r"\['resnet', 'vgg4', 'vgg9'\]"):
        models.get_model("vgg16", (32, 32, 3), 10)
    with pytest.raises(ValueError, match="input_shape"):
        models.vgg4((32, 32), 10)
    with pytest.raises(ValueError, match="num_classes"):
        models.vgg4((32, 32, 3), 0)
    with pytest.raises(ValueError, match="6 \\* n \\+ 4"):
        models.resnet((32, 32, 3), 10, depth=12)
    with pytest.raises(ValueError, match="dropout"):
        models.vgg9((32, 32, 3), 10, dropout=1.0)
    with pytest.raises(ValueError, match="pooling"):
        models.vgg9((None, None, 3), 10, pooling="flatten")


def test_recompute_batch_norm_statistics_averages_batches():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(3)
    hidden = keras.layers.BatchNormalization()(dense(inputs))
    outputs = keras.layers.BatchNormalization()(keras.layers.Dense(2)(hidden))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(n, 4)).astype("float32") + 3 for n in (5, 3)]
    labels = np.zeros((8,), "int32")
    ds = tf.data.Dataset.from_tensor_slices(
        (np.concatenate(batches), labels)
    ).batch(5)
    weights = model.get_weights()
    models.recompute_batch_norm_statistics(model, ds.repeat(), steps=2)
    # NumPy: the first layer's input, per batch, from the Dense weights.
    kernel, bias = dense.get_weights()
    z = [b @ kernel + bias for b in batches]
    first = model.layers[2]
    np.testing.assert_allclose(
        first.moving_mean, np.mean([b.mean(0) for b in z], 0), rtol=1e-5
    )
    np.testing.assert_allclose(
        first.moving_variance, np.mean([b.var(0) for b in z], 0), rtol=1e-4
    )
    assert first.momentum == 0.99
    # Only the moving statistics changed.
    for before, after, variable in zip(
        weights, model.get_weights(), model.weights
    ):
        if "moving" not in variable.path:
            np.testing.assert_array_equal(before, after)


def test_recompute_batch_norm_statistics_nested_and_bad_steps():
    inner = keras.Sequential(
        [keras.Input((2,)), keras.layers.BatchNormalization()], name="inner"
    )
    outer = keras.Sequential([keras.Input((2,)), inner])
    assert models.batch_norm_layers(outer) == [inner.layers[0]]
    x = np.array([[0.0, 1.0], [2.0, 5.0]], "float32")
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(2))).batch(2)
    models.recompute_batch_norm_statistics(outer, ds, steps=1)
    np.testing.assert_allclose(inner.layers[0].moving_mean, [1.0, 3.0])
    np.testing.assert_allclose(inner.layers[0].moving_variance, [1.0, 4.0])
    for steps in (0, 1.5, True):
        with pytest.raises(ValueError, match="Received: steps="):
            models.recompute_batch_norm_statistics(outer, ds, steps=steps)
