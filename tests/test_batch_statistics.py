"""Jacobian terms of a student whose BatchNorm runs in training mode.

Each example's Jacobian is taken with the batch's statistics held constant.
The reference computes it another way: an inference-mode copy of the
student whose moving statistics are set, layer by layer, to the NumPy
moments of its training-mode inputs, differentiated with
`GradientTape.batch_jacobian`. Every estimator must give its value, and
the weight gradient must equal central differences of that reference,
whose statistics move with the weights.
"""

import json
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_jacobian as kj

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "distributed_jobs"))

import cluster  # noqa: E402

SHAPE = (6, 6, 1)
CLASSES = 3
SIZE = int(np.prod(SHAPE))
# Projections spanning every class (vjp) or every input value (the
# input-direction estimators): the estimates are then exact.
ESTIMATORS = {
    "exact": {},
    "vjp": {"num_projections": CLASSES},
    "jvp": {"num_projections": SIZE},
    "finite_difference": {"num_projections": SIZE},
    "forward_difference": {"num_projections": SIZE},
}
TOLERANCE = {"finite_difference": 2e-4, "forward_difference": 2e-4}


def teacher():
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input(SHAPE),
            keras.layers.Conv2D(3, 3, padding="same", activation="tanh"),
            keras.layers.Flatten(),
            keras.layers.Dense(CLASSES),
        ],
        name="teacher",
    )


def student(seed=2, synchronized=False):
    """Two BatchNorm layers, one inside a nested model."""
    keras.utils.set_random_seed(seed)
    block = keras.Sequential(
        [
            keras.Input(SHAPE),
            keras.layers.Conv2D(3, 3, padding="same"),
            keras.layers.BatchNormalization(synchronized=synchronized),
            keras.layers.Activation("tanh"),
        ],
        name="block",
    )
    x = keras.Input(SHAPE)
    h = block(x)
    h = keras.layers.Conv2D(4, 3)(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("tanh")(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(x, keras.layers.Dense(CLASSES)(h), name="student")


def batch_norm_layers(model):
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def held_copy(model, x):
    """An inference-mode copy normalising with `x`'s batch statistics."""
    copy = student()
    copy.set_weights(model.get_weights())
    inputs = tf.convert_to_tensor(x)
    for layer in batch_norm_layers(copy):
        seen = {}
        original = layer.call

        def spy(h, *args, _seen=seen, _call=original, **kwargs):
            _seen["h"] = keras.ops.convert_to_numpy(h).astype("float64")
            return _call(h, *args, **kwargs)

        layer.call = spy
        copy(inputs, training=False)
        layer.call = original
        h = seen["h"]
        axes = tuple(range(h.ndim - 1))
        layer.moving_mean.assign(h.mean(axis=axes))
        layer.moving_variance.assign(h.var(axis=axes))
    return copy


def jacobians(model, x):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = model(x, training=False)
    rows = tape.batch_jacobian(y, x).numpy().astype("float64")
    return rows.reshape(len(x), CLASSES, -1)


def reference_loss(t, s, x):
    copy = held_copy(s, x)
    diff = jacobians(t, x) - jacobians(copy, x)
    return np.mean(np.sum(diff**2, axis=(1, 2)))


def distiller(t, s, estimator, learning_rate=0.0):
    term = kj.JacobianMatching(
        "all", estimator=estimator, normalize=False, **ESTIMATORS[estimator]
    )
    d = kj.Distiller(t, s, [term], seed=0)
    d.compile(optimizer=keras.optimizers.SGD(learning_rate))
    return d


def batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n,) + SHAPE).astype(keras.config.floatx())


def test_held_copy_reproduces_the_training_pass():
    s, x = student(), batch()
    np.testing.assert_allclose(
        held_copy(s, x)(x, training=False),
        s(x, training=True),
        atol=1e-5,
    )


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_every_estimator_gives_the_held_statistics_jacobian(estimator):
    t, s, x = teacher(), student(), batch()
    expected = reference_loss(t, s, x)
    logs = distiller(t, s, estimator).train_on_batch(x, return_dict=True)
    np.testing.assert_allclose(
        logs["jacobian_matching_loss"],
        expected,
        rtol=TOLERANCE.get(estimator, 2e-5),
    )


@pytest.mark.parametrize("estimator", ["vjp", "finite_difference"])
def test_weight_gradient_is_that_of_the_held_statistics_jacobian(estimator):
    keras.config.set_floatx("float64")
    try:
        t, s, x = teacher(), student(3), batch(5, seed=1)
        before = s.get_weights()
        # SGD at rate 1 moves the trainable weights by minus the gradient
        # of the total loss, half of which is the term (Keras' default
        # student_loss_weight=0.5 without labels).
        distiller(t, s, estimator, learning_rate=1.0).train_on_batch(x)
        rng = np.random.default_rng(5)
        direction = [rng.normal(size=w.shape) for w in before]
        moved = sum(
            np.sum((w - v.numpy()) * d)
            for v, w, d in zip(s.weights, before, direction)
            if v.trainable
        )
        eps = 1e-5
        losses = []
        for sign in (1, -1):
            shifted = student(3)
            shifted.set_weights(
                [w + sign * eps * d for w, d in zip(before, direction)]
            )
            losses.append(reference_loss(t, shifted, x))
        central = (losses[0] - losses[1]) / (2 * eps)
        np.testing.assert_allclose(2 * moved, central, rtol=1e-6)
    finally:
        keras.config.set_floatx("float32")


@pytest.mark.parametrize(
    "estimator, num_projections",
    [("exact", 1), ("vjp", CLASSES), ("jvp", SIZE)],
)
def test_regularized_penalty_is_the_held_statistics_norm(
    estimator, num_projections
):
    s, x = student(), batch()
    model = kj.JacobianRegularizedModel(
        s,
        target="all",
        estimator=estimator,
        num_projections=num_projections,
        seed=0,
    )
    penalty, _ = model.jacobian_penalty(x, training=True)
    expected = np.sum(jacobians(held_copy(s, x), x) ** 2, axis=(1, 2))
    np.testing.assert_allclose(penalty, expected, rtol=2e-5)


def test_wrapped_student_saves_and_reloads(tmp_path):
    t, s, x = teacher(), student(), batch()
    distiller(t, s, "vjp").train_on_batch(x)
    path = str(tmp_path / "student.keras")
    s.save(path)
    reloaded = keras.saving.load_model(path)
    for mode in (False, True):
        np.testing.assert_allclose(
            reloaded(x, training=mode), s(x, training=mode), atol=1e-6
        )


@pytest.mark.slow
def test_two_replicas_hold_their_own_statistics(tmp_path):
    stderr_path = tmp_path / "stderr.txt"
    process = cluster.start("batch_norm_job.py", [], stderr_path=stderr_path)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, stderr_path.read_text()[-3000:]
    line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT ") :])
    t, s, x = teacher(), student(), batch(8)
    halves = [reference_loss(t, s, x[:4]), reference_loss(t, s, x[4:])]
    assert halves[0] != pytest.approx(halves[1], rel=1e-2)
    assert set(result) == {"vjp", "jvp", "finite_difference"}
    for estimator, loss in result.items():
        np.testing.assert_allclose(
            loss,
            np.mean(halves),
            rtol=TOLERANCE.get(estimator, 2e-5),
            err_msg=estimator,
        )


def test_noisy_copies_are_normalised_with_the_clean_batch_statistics():
    t, s, x = teacher(), student(), batch()
    model = kj.Distiller(t, s, kj.NoiseDistillation(0.3, num_samples=2))
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    state = model.seed_generator.state.numpy()
    logs = model.train_on_batch(x, return_dict=True)
    model.seed_generator.state.assign(state)
    targets = model.teacher_targets(x)[0]
    noisy = targets["noisy_inputs"].numpy()
    errors = np.sum(
        (targets["noisy_logits"].numpy() - held_copy(s, x)(noisy).numpy()) ** 2,
        axis=-1,
    )
    np.testing.assert_allclose(
        logs["noise_distillation_loss"], np.mean(errors), rtol=1e-5
    )


def renorm_student(renorm):
    keras.utils.set_random_seed(4)
    return keras.Sequential(
        [
            keras.Input(SHAPE),
            keras.layers.Conv2D(3, 3, padding="same"),
            keras.layers.BatchNormalization(renorm=renorm, name="bn"),
            keras.layers.Activation("tanh"),
            keras.layers.Flatten(),
            keras.layers.Dense(CLASSES),
        ]
    )


def renorm_reference(t, s, x):
    """The function Keras trains with renorm, `((h - mean) / std * r + d)
    * gamma + beta` with every statistic held: a plain BatchNorm in
    inference mode with the batch's moments, gamma r and gamma d + beta."""
    bn = s.get_layer("bn")
    h = keras.ops.convert_to_numpy(s.layers[0](x)).astype("float64")
    mean, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
    std = np.sqrt(var + bn.epsilon)
    renorm_std = np.maximum(bn.renorm_stddev.numpy(), np.sqrt(bn.epsilon))
    r = std / renorm_std
    d = (mean - bn.renorm_mean.numpy()) / renorm_std
    copy = renorm_student(False)
    weights = {id(v): v.numpy() for v in s.weights}
    for layer, original in zip(copy.layers, s.layers):
        if layer.name != "bn":
            layer.set_weights(original.get_weights())
    copy_bn = copy.get_layer("bn")
    copy_bn.gamma.assign(weights[id(bn.gamma)] * r)
    copy_bn.beta.assign(weights[id(bn.gamma)] * d + weights[id(bn.beta)])
    copy_bn.moving_mean.assign(mean)
    copy_bn.moving_variance.assign(var)
    diff = jacobians(t, x) - jacobians(copy, x)
    return np.mean(np.sum(diff**2, axis=(1, 2)))


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_renorm_corrections_are_held_as_the_step_computed_them(estimator):
    t, s, x = teacher(), renorm_student(True), batch()
    bn = s.get_layer("bn")
    bn.renorm_mean.assign(np.array([0.3, -0.2, 0.1], "float32"))
    bn.renorm_stddev.assign(np.array([0.5, 1.5, 0.8], "float32"))
    expected = renorm_reference(t, s, x)
    logs = distiller(t, s, estimator).train_on_batch(x, return_dict=True)
    np.testing.assert_allclose(
        logs["jacobian_matching_loss"],
        expected,
        rtol=TOLERANCE.get(estimator, 2e-5),
    )


@pytest.mark.parametrize("estimator", ["finite_difference", "jvp"])
def test_synchronized_statistics_are_no_kink_of_the_differences(estimator):
    # Keras clamps the synchronized variance at zero (a maximum): it acts
    # on the step's statistics, which every pass of the step shares.
    t, x = teacher(), batch()
    s = student(synchronized=True)
    expected = reference_loss(t, s, x)
    logs = distiller(t, s, estimator).train_on_batch(x, return_dict=True)
    np.testing.assert_allclose(
        logs["jacobian_matching_loss"],
        expected,
        rtol=TOLERANCE.get(estimator, 2e-5),
    )
