"""Mixed precision and XLA with double backprop.

Cost: about 40 s on 2 CPU cores (several small compiles).
"""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "distributed_jobs"))

import tiny_models  # noqa: E402

from keras_jacobian import jacobians  # noqa: E402
from keras_jacobian.distiller import Distiller  # noqa: E402
from keras_jacobian.regularized import JacobianRegularizedModel  # noqa: E402
from keras_jacobian.terms.jacobian import JacobianMatching  # noqa: E402
from keras_jacobian.terms.logits import LogitsDistillation  # noqa: E402
from keras_jacobian.terms.noise import NoiseDistillation  # noqa: E402

# Measured on this CPU (relative to float32): Jacobian terms 1e-5
# (float16) and 2e-4 (bfloat16), KD term 2e-4 and 2e-3; bounds with room.
TOLERANCE = {"mixed_float16": 1e-3, "mixed_bfloat16": 1e-2}


@pytest.fixture
def policy():
    yield
    keras.config.set_dtype_policy("float32")


def _terms():
    return [
        LogitsDistillation(temperature=2.0, loss="kd"),
        JacobianMatching("teacher_top1", name="jm_top1"),
        JacobianMatching(
            "all", estimator="exact", normalize=False, name="jm_all_raw"
        ),
    ]


def _distiller(policy_name, weights=None):
    keras.config.set_dtype_policy(policy_name)
    teacher, student = tiny_models.pair()
    if weights is not None:
        teacher.set_weights(weights[0])
        student.set_weights(weights[1])
    distiller = Distiller(
        teacher, student, _terms(), supervised_loss_weight=1.0
    )
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return distiller


def test_float16_rows_do_not_underflow():
    # Jacobian entries of ~1e-6 are float16 subnormals: unscaled, the
    # backward pass rounds v^T J to a spacing of 6e-8 (several % error).
    rng = np.random.default_rng(0)
    w16 = tf.constant(rng.uniform(1e-6, 2e-6, size=(5, 3)), "float16")
    w = tf.cast(w16, "float64").numpy()
    x = tf.constant(rng.normal(size=(2, 5)), "float32")
    v = rng.uniform(0.05, 0.2, size=(2, 4, 3)).astype("float32")
    v16 = v.astype("float16").astype("float64")
    expected = np.einsum("brc,dc->brd", v16, w)  # rows v^T dF/dx = W v
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        outputs = tf.cast(x, "float16") @ w16
    rows = jacobians.vjp_rows(tape, outputs, x, tf.constant(v))
    single = jacobians.vjp_rows(tape, outputs, x, tf.constant(v[:, :1]))
    unscaled = tape.gradient(
        outputs, x, output_gradients=tf.cast(v[:, 0], "float16")
    )
    assert rows.dtype == tf.float32
    np.testing.assert_allclose(rows.numpy(), expected, rtol=2e-3)
    np.testing.assert_allclose(single.numpy()[:, 0], expected[:, 0], rtol=2e-3)
    unscaled_error = np.max(
        np.abs(unscaled.numpy() - expected[:, 0]) / expected[:, 0]
    )
    assert unscaled_error > 1e-2, unscaled_error


@pytest.mark.slow
@pytest.mark.parametrize("policy_name", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_terms_close_to_float32(policy, policy_name):
    x, y = tiny_models.data(16)
    reference = _distiller("float32")
    weights = (
        reference.teacher.get_weights(),
        reference.student.get_weights(),
    )
    expected = reference.evaluate(
        x, y, batch_size=16, verbose=0, return_dict=True
    )
    mixed = _distiller(policy_name, weights)
    assert mixed.student.compute_dtype == policy_name.split("_")[1]
    got = mixed.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    for name in ("jm_top1_loss", "jm_all_raw_loss", "logits_distillation_loss"):
        assert np.isfinite(got[name])
        assert got[name] > 0
        np.testing.assert_allclose(
            got[name], expected[name], rtol=TOLERANCE[policy_name], err_msg=name
        )
    history = mixed.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    if policy_name == "mixed_float16":
        assert isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer)
    moved = [
        np.max(np.abs(a - b))
        for a, b in zip(mixed.student.get_weights(), weights[1])
    ]
    assert max(moved) > 1e-3
    assert all(np.all(np.isfinite(w)) for w in mixed.student.get_weights())


DETERMINISTIC_TERMS = [
    lambda: LogitsDistillation(temperature=2.0, loss="kd"),
    lambda: LogitsDistillation(loss="squared_logits", name="mse"),
    lambda: JacobianMatching("teacher_top1", name="top1"),
    lambda: JacobianMatching("label", normalize=False, name="label"),
    lambda: JacobianMatching("top_k", k=2, name="top_k"),
    lambda: JacobianMatching("all", estimator="exact", name="all"),
    lambda: JacobianMatching("teacher_top1", loss="alignment", name="align"),
]
RANDOM_TERMS = [
    lambda: JacobianMatching("random", num_projections=2, name="random"),
    lambda: NoiseDistillation(stddev=0.1, name="noise"),
]


def _model(kind):
    teacher, student = tiny_models.pair()
    if kind.startswith("regularized"):
        return JacobianRegularizedModel(
            student,
            weight=0.1,
            target=kind.split("_")[1],
            seed=3,
        )
    terms = DETERMINISTIC_TERMS if kind == "deterministic" else RANDOM_TERMS
    return Distiller(
        teacher,
        student,
        [t() for t in terms],
        seed=3,
        supervised_loss_weight=1.0,
    )


def _one_step(kind, jit_compile):
    x, y = tiny_models.data(16)
    model = _model(kind)
    initial = model.get_weights()
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    # Keras turns XLA off (with a warning) for models it cannot compile
    # and under op determinism: the comparison would then be vacuous.
    assert model.jit_compile == jit_compile
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    logs = {k: v[0] for k, v in history.history.items()}
    update = [w - w0 for w, w0 in zip(model.get_weights(), initial)]
    return logs, update


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind",
    ["deterministic", "random", "regularized_random", "regularized_all"],
)
def test_xla_matches_no_xla(kind):
    # One step on one batch: the logs are the losses at the initial
    # weights, the weights those after one update.
    logs0, w0 = _one_step(kind, False)
    logs1, w1 = _one_step(kind, True)
    assert set(logs0) == set(logs1)
    # Under XLA the same seeds give other random draws (projections,
    # noise), so random terms agree only as estimates of the same value.
    random = kind in ("random", "regularized_random")
    rtol, atol = (0.25, 1e-3) if random else (1e-4, 1e-5)
    for name in logs0:
        assert np.isfinite(logs1[name]), name
        np.testing.assert_allclose(
            logs1[name], logs0[name], rtol=rtol, atol=atol, err_msg=name
        )
    for a, b in zip(w0, w1):
        assert np.all(np.isfinite(b))
        if random:  # the update's size, not its direction
            np.testing.assert_allclose(
                np.linalg.norm(b), np.linalg.norm(a), rtol=rtol
            )
        else:
            np.testing.assert_allclose(a, b, atol=atol)


class HalfDense(keras.layers.Layer):
    """A dense layer computing in float16 inside a float32 model."""

    def build(self, input_shape):
        self.kernel = self.add_weight(
            (input_shape[-1], 8),
            initializer=keras.initializers.RandomNormal(stddev=0.3, seed=4),
        )

    def call(self, x):
        y = tf.cast(x, "float16") @ tf.cast(self.kernel, "float16")
        return tf.cast(tf.tanh(y), "float32")


def _round_to_float16(t):
    return keras.ops.cast(keras.ops.cast(t, "float16"), "float32")


def _hidden_precision_net(kind, seed=0):
    """A float32 tanh network whose values are float16 inside."""
    inputs = keras.Input((6,))
    if kind == "lambda":
        h = keras.layers.Dense(
            8,
            activation="tanh",
            kernel_initializer=keras.initializers.RandomNormal(
                stddev=0.3, seed=seed
            ),
        )(inputs)
        h = keras.layers.Lambda(_round_to_float16)(h)
    elif kind == "custom layer":
        h = HalfDense()(inputs)
    else:
        h = keras.layers.Dense(8, activation="tanh")(inputs)
    outputs = keras.layers.Dense(
        3,
        kernel_initializer=keras.initializers.RandomNormal(
            stddev=0.3, seed=seed + 1
        ),
    )(h)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("kind", ["lambda", "custom layer"])
def test_difference_steps_follow_float16_computed_inside(kind):
    # Measured: relative error 1.3 to 1.5 with the float32 step (J v up
    # to 2x the exact value), 0.017 with the float16 step.
    keras.utils.set_random_seed(0)
    teacher = _hidden_precision_net(kind)
    student = _hidden_precision_net(kind, seed=5)
    term = JacobianMatching(
        "all",
        estimator="forward_difference",
        normalize=False,
        num_projections=4,
    )
    distiller = Distiller(
        teacher, student, [term], seed=1, supervised_loss_weight=1.0
    )
    x = tf.constant(np.random.default_rng(0).normal(size=(8, 6)), "float32")
    targets = distiller.teacher_targets(x)[0]
    directions = targets["directions"].numpy().astype("float64")
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = teacher(x)
    jacobian = tape.batch_jacobian(y, x).numpy().astype("float64")
    exact = np.einsum("bkd,brd->brk", jacobian, directions)
    got = targets["derivatives"].numpy()
    error = np.linalg.norm(got - exact) / np.linalg.norm(exact)
    assert error < 0.06, error
    # The student's training pass rounds to float16 too.
    assert distiller.student_precision == "float16"


def test_step_size_below_float16_computed_inside_is_refused():
    # 1e-6 over 6 inputs shifts each by 4e-7: a float32 number, but a
    # float16 subnormal once the network casts it.
    term = JacobianMatching(
        "all", estimator="forward_difference", step_size=1e-6
    )
    with pytest.raises(ValueError, match="computes in float16"):
        Distiller(
            _hidden_precision_net("plain"),
            _hidden_precision_net("lambda"),
            [term],
            supervised_loss_weight=1.0,
        )
    with pytest.raises(ValueError, match="computes in float16"):
        JacobianRegularizedModel(
            _hidden_precision_net("lambda"),
            target="all",
            estimator="forward_difference",
            step_size=1e-6,
        )


def test_float8_computed_inside_is_refused_by_differences():
    # float8 casts have no gradient in TensorFlow, so the gradient probe
    # refuses them too, with another reason; without the probe nothing
    # else would.
    float8 = tf.dtypes.experimental.float8_e4m3fn
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    h = keras.layers.Lambda(
        lambda t: tf.cast(tf.cast(t, float8), "float32"),
        output_shape=(8,),
    )(h)
    student = keras.Model(inputs, keras.layers.Dense(3)(h))
    for estimator in ("forward_difference", "finite_difference"):
        with pytest.raises(ValueError, match="float8_e4m3fn, too coarse"):
            Distiller(
                _hidden_precision_net("plain"),
                student,
                [JacobianMatching("all", estimator=estimator)],
                supervised_loss_weight=1.0,
                check_differentiable=False,
            )
        with pytest.raises(ValueError, match="float8_e4m3fn, too coarse"):
            JacobianRegularizedModel(
                student,
                target="all",
                estimator=estimator,
                check_differentiable=False,
            )
        # With the default check, the gradient probe refuses it first.
        with pytest.raises(ValueError, match="no gradient with respect"):
            Distiller(
                _hidden_precision_net("plain"),
                student,
                [JacobianMatching("all", estimator=estimator)],
                supervised_loss_weight=1.0,
            )
        with pytest.raises(ValueError, match="no gradient with respect"):
            JacobianRegularizedModel(student, target="all", estimator=estimator)


def _quantized(mode, name):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(h), name=name)
    model.quantize(mode)
    return model


def test_int8_teacher_is_a_step_function_and_differences_refuse_it():
    teacher = _quantized("int8", "int8_teacher")
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    # Keras quantizes a layer's inputs to int8: the output jumps where a
    # rounded value changes. Measured: a difference quotient at a step
    # of 1e-2 is 0.89 times the tape's J v away from it (the float
    # network's: within 1%).
    v = np.random.default_rng(1).normal(size=(4, 6)).astype("float32")
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = teacher(xt)
    jv = np.einsum("bij,bj->bi", tape.batch_jacobian(y, xt).numpy(), v)
    quotient = (teacher(x + 1e-2 * v).numpy() - y.numpy()) / 1e-2
    assert np.linalg.norm(quotient - jv) > 0.5 * np.linalg.norm(jv)
    for estimator in ("forward_difference", "finite_difference"):
        with pytest.raises(ValueError, match="teacher 'int8_teacher' rounds"):
            Distiller(
                teacher,
                _hidden_precision_net("plain", seed=5),
                [JacobianMatching("all", estimator=estimator)],
                supervised_loss_weight=1.0,
            )
    # Autodiff takes the gradient Keras defines for the quantized layers,
    # that of their dequantized weights: the tape Jacobian.
    student = _hidden_precision_net("plain", seed=5)
    term = JacobianMatching("all", estimator="exact", normalize=False)
    distiller = Distiller(teacher, student, [term], supervised_loss_weight=1)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xt)
        yt, ys = teacher(xt), student(xt)
    expected = np.sum(
        (tape.batch_jacobian(yt, xt) - tape.batch_jacobian(ys, xt)) ** 2,
        axis=(1, 2),
    ).mean()
    distiller.compile(loss="sparse_categorical_crossentropy")
    logs = distiller.evaluate(x, np.zeros(4), verbose=0, return_dict=True)
    np.testing.assert_allclose(
        logs["jacobian_matching_loss"], expected, rtol=1e-5
    )


def test_float8_quantized_teacher_without_input_gradient_is_named():
    # Keras' float8 layers' custom gradient fails in TensorFlow
    # ("too many values to unpack") when differentiated in the input.
    with pytest.raises(ValueError, match="cannot differentiate the teacher"):
        Distiller(
            _quantized("float8", "f8"),
            _hidden_precision_net("plain"),
            [JacobianMatching()],
            supervised_loss_weight=1.0,
        )


def test_forward_mode_misses_the_quantized_gradient_and_jvp_is_refused():
    model = _quantized("int8", "int8_net")
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 6)), "float32")
    # Reverse mode (the tape) against forward mode, column by column:
    # forward mode does not take the gradient Keras defines for int8
    # layers, so the two Jacobians differ.
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = model(x)
    reverse = tape.batch_jacobian(y, x).numpy()
    forward = np.stack(
        [_forward_column(model, x, i) for i in range(6)], axis=-1
    )
    assert np.abs(forward - reverse).max() > 0.1 * np.abs(reverse).max()
    plain = _hidden_precision_net("plain", seed=5)
    for teacher, student, role in (
        (model, plain, "teacher"),
        (_hidden_precision_net("plain", seed=6), model, "student"),
    ):
        with pytest.raises(
            ValueError, match=f"{role} 'int8_net' in forward mode.*'vjp'"
        ):
            Distiller(
                teacher,
                student,
                [JacobianMatching("all", estimator="jvp")],
                supervised_loss_weight=1.0,
            )
    with pytest.raises(ValueError, match="forward mode.*int8"):
        JacobianRegularizedModel(model, target="all", estimator="jvp")
    # The difference estimators' refusal names what serves instead.
    with pytest.raises(ValueError, match="rounds") as refused:
        Distiller(
            model,
            plain,
            [JacobianMatching("all", estimator="forward_difference")],
            supervised_loss_weight=1.0,
        )
    assert "'jvp'" not in str(refused.value)


def _forward_column(model, x, i):
    direction = tf.one_hot(tf.fill([x.shape[0]], i), x.shape[1])
    with tf.autodiff.ForwardAccumulator(x, direction) as acc:
        y = model(x)
    return acc.jvp(y).numpy()
