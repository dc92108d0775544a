"""keras.applications students of whole-Jacobian matching (fast subset).

The full matrix is benchmarks/model_zoo.py (docs/model-zoo.md).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_jacobian as kj

SHAPE = (32, 32, 3)


def teacher():
    inputs = keras.Input(SHAPE)
    h = keras.layers.Conv2D(4, 3, strides=4, activation="tanh")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


def application(name, **kwargs):
    keras.utils.set_random_seed(1)
    return getattr(keras.applications, name)(
        weights=None,
        input_shape=SHAPE,
        classes=10,
        classifier_activation=None,
        **kwargs,
    )


def term(estimator):
    return kj.JacobianMatching("all", estimator=estimator, normalize=False)


def tape_jacobians(model, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = model(x, training=False)
    jac = tape.batch_jacobian(out, x).numpy()
    return jac.reshape(x.shape[0], out.shape[-1], -1)


def test_mobilenet_v2_is_refused_by_difference_estimators():
    student = application("MobileNetV2", alpha=0.35)
    with pytest.raises(ValueError, match="has kinks .*Relu6"):
        kj.Distiller(teacher(), student, [term("forward_difference")])


def test_mobilenet_v2_vjp_value_matches_tape_jacobians():
    t, student = teacher(), application("MobileNetV2", alpha=0.35)
    distiller = kj.Distiller(t, student, [term("vjp")], seed=2)
    distiller.compile(optimizer="sgd")
    x = tf.constant(np.random.default_rng(0).normal(size=(2,) + SHAPE))
    x = tf.cast(x, "float32")
    state = distiller.seed_generator.state.numpy()
    logs = distiller.evaluate(x, verbose=0, return_dict=True)
    distiller.seed_generator.state.assign(state)
    u = distiller.teacher_targets(x)[0]["cotangents"].numpy()
    # Inference mode, as in evaluate: BatchNorm uses its moving statistics.
    diff = tape_jacobians(t, x) - tape_jacobians(student, x)
    rows = np.einsum("brk,bkd->brd", u, diff.astype("float64"))
    expected = np.mean(10 / u.shape[1] * np.sum(rows**2, axis=(1, 2)))
    np.testing.assert_allclose(
        logs["jacobian_matching_loss"], expected, rtol=1e-4
    )


def test_efficientnet_b0_is_accepted_by_forward_difference():
    student = application("EfficientNetB0")
    distiller = kj.Distiller(teacher(), student, [term("forward_difference")])
    assert distiller.distillation_losses[0].estimator == "forward_difference"


def test_convnext_eager_forward_mode_names_the_fix():
    # Eagerly, TensorFlow cannot differentiate the forward-mode pass
    # through the XLA functions behind ConvNeXt's convolutions; its
    # InternalError ("returned too few gradients") said nothing useful.
    student = application("ConvNeXtTiny")
    distiller = kj.Distiller(teacher(), student, [term("jvp")], seed=2)
    distiller.compile(optimizer="sgd", run_eagerly=True)
    x = np.random.default_rng(0).normal(size=(2,) + SHAPE).astype("float32")
    with pytest.raises(RuntimeError, match="run_eagerly=True.*'vjp'"):
        distiller.train_on_batch(x)


def test_resnet50_v2_teacher_stays_put_and_its_targets_match_tape():
    # The family as the teacher: its Jacobian rows, from one projection,
    # against tape Jacobians; a training step leaves every teacher
    # variable (BatchNorm statistics included) as it was.
    t = application("ResNet50V2")
    inputs = keras.Input(SHAPE)
    h = keras.layers.Conv2D(2, 3, strides=4, activation="tanh")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    student = keras.Model(inputs, keras.layers.Dense(10)(h))
    distiller = kj.Distiller(t, student, [term("vjp")], seed=2)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = tf.constant(
        np.random.default_rng(0).normal(size=(2,) + SHAPE), "float32"
    )
    targets = distiller.teacher_targets(x)[0]
    u = targets["cotangents"].numpy().astype("float64")
    rows = np.einsum("brk,bkd->brd", u, tape_jacobians(t, x))
    np.testing.assert_allclose(
        targets["rows"].numpy().reshape(rows.shape), rows, atol=1e-6
    )
    before = [v.numpy().copy() for v in t.variables]
    loss = distiller.train_on_batch(x, return_dict=True)["loss"]
    assert np.isfinite(loss)
    for b, v in zip(before, t.variables):
        np.testing.assert_array_equal(v.numpy(), b)


def vit(width=16, heads=2):
    """A small ViT as in benchmarks/model_zoo.py (absl flags stay out of
    the test process)."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input(SHAPE)
    h = keras.layers.Conv2D(width, 4, strides=4)(inputs)
    h = keras.layers.Reshape((-1, width))(h)
    a = keras.layers.LayerNormalization()(h)
    a = keras.layers.MultiHeadAttention(heads, width // heads)(a, a)
    h = keras.layers.Add()([h, a])
    m = keras.layers.LayerNormalization()(h)
    m = keras.layers.Dense(2 * width, activation="gelu")(m)
    h = keras.layers.Add()([h, keras.layers.Dense(width)(m)])
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h), name="vit")


def test_vit_student_vjp_value_matches_tape_jacobians():
    t, student = teacher(), vit()
    distiller = kj.Distiller(t, student, [term("vjp")], seed=2)
    distiller.compile(optimizer="sgd")
    x = tf.constant(
        np.random.default_rng(0).normal(size=(2,) + SHAPE), "float32"
    )
    state = distiller.seed_generator.state.numpy()
    logs = distiller.evaluate(x, verbose=0, return_dict=True)
    distiller.seed_generator.state.assign(state)
    u = distiller.teacher_targets(x)[0]["cotangents"].numpy()
    diff = tape_jacobians(t, x) - tape_jacobians(student, x)
    rows = np.einsum("brk,bkd->brd", u, diff.astype("float64"))
    expected = np.mean(10 / u.shape[1] * np.sum(rows**2, axis=(1, 2)))
    np.testing.assert_allclose(
        logs["jacobian_matching_loss"], expected, rtol=1e-4
    )
    assert np.isfinite(distiller.train_on_batch(x, return_dict=True)["loss"])
