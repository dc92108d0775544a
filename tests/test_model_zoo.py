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
