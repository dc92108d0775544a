"""Whole-Jacobian estimators along random input directions.

`JacobianMatching(target="all", estimator="jvp" | "finite_difference" |
"forward_difference")` and the same estimators of
`JacobianRegularizedModel`, checked against full Jacobians from a plain
tape, closed forms, NumPy, finite differences and `NoiseDistillation`.
Cost: 92 s on 2 CPU cores at load average 1 (5.5 minutes at load 12);
the tests marked slow (XLA, mixed precision, proposition 1) take about
half. Two replicas against one device, for every estimator of both
models: `tests/test_conformance.py::test_two_replicas_equal_one_device`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_jacobian as kj
from keras_jacobian import jacobians
from tests import tiny

INPUT_ESTIMATORS = ("jvp", "finite_difference", "forward_difference")


def full_jacobians(model, x):
    """(batch, classes, D) input Jacobians with a plain tape."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = model(x, training=False)
    jac = tape.batch_jacobian(out, x)
    return jac.numpy().reshape(x.shape[0], out.shape[-1], -1)


def evaluate(teacher, student, terms, x, seed=0):
    distiller = kj.Distiller(
        teacher, student, terms, seed=seed, supervised_loss_weight=1.0
    )
    distiller.compile()
    return distiller.evaluate(x, batch_size=len(x), verbose=0, return_dict=True)


def relu_mlp(seed, input_dim=5, classes=3, dtype="float64"):
    init = keras.initializers.RandomNormal(stddev=1.0, seed=seed)
    inputs = keras.Input((input_dim,), dtype=dtype)
    h = keras.layers.Dense(
        8, activation="relu", dtype=dtype, kernel_initializer=init
    )(inputs)
    outputs = keras.layers.Dense(
        classes,
        dtype=dtype,
        kernel_initializer=keras.initializers.RandomNormal(seed=seed + 1),
    )(h)
    return keras.Model(inputs, outputs)


def random_directions(shape, count, seed):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(count,) + shape)
    flat = v.reshape(count, shape[0], -1)
    flat /= np.linalg.norm(flat, axis=-1, keepdims=True)
    return flat.reshape(v.shape)


@pytest.mark.parametrize("estimator", INPUT_ESTIMATORS)
def test_matching_is_unbiased_on_a_nonlinear_net(estimator):
    teacher = tiny.conv_net(seed=0, name="t")
    student = tiny.conv_net(seed=10, name="s")
    x = tiny.images(2)
    exact = np.sum(
        (full_jacobians(teacher, x) - full_jacobians(student, x)) ** 2,
        axis=(1, 2),
    )
    # Each of 1,500 copies of each image draws its own direction.
    copies = np.tile(x, (1500, 1, 1, 1))
    term = kj.JacobianMatching(
        "all", estimator=estimator, normalize=False, num_projections=2
    )
    logs = evaluate(teacher, student, [term], copies)
    np.testing.assert_allclose(
        logs["jacobian_matching_loss"], np.mean(exact), rtol=0.05
    )


@pytest.mark.parametrize("estimator", INPUT_ESTIMATORS)
def test_regularized_penalty_is_unbiased(estimator):
    model = tiny.conv_net(seed=2)
    x = tiny.images(3)
    robust = kj.JacobianRegularizedModel(
        model, target="all", estimator=estimator
    )
    copies = tf.constant(np.tile(x, (1500, 1, 1, 1)))
    estimate, _ = tf.function(robust.jacobian_penalty)(copies)
    per_image = np.mean(np.reshape(estimate.numpy(), (1500, 3)), axis=0)
    expected = np.sum(full_jacobians(model, x) ** 2, axis=(1, 2))
    np.testing.assert_allclose(per_image, expected, rtol=0.05)


@pytest.mark.parametrize("estimator", INPUT_ESTIMATORS)
def test_linear_models_exact_in_expectation(estimator):
    rng = np.random.default_rng(0)
    wt, ws = rng.normal(size=(2, 6, 4))
    teacher = tiny.linear_net(wt, rng.normal(size=4), name="t")
    student = tiny.linear_net(ws, rng.normal(size=4), name="s")
    # J = W^T everywhere: the estimate's mean is ||W_T - W_S||_F^2.
    x = np.tile(rng.normal(size=(1, 6)), (4000, 1))
    term = kj.JacobianMatching("all", estimator=estimator, normalize=False)
    logs = evaluate(teacher, student, [term], x)
    np.testing.assert_allclose(
        logs["jacobian_matching_loss"], np.sum((wt - ws) ** 2), rtol=0.05
    )
    # Each direction's derivative is exactly W_S^T v.
    v = random_directions((1, 6), 3, seed=1)
    derivative = jacobians.directional_derivatives(
        estimator, student, tf.constant(x[:1]), tf.constant(v)
    )
    np.testing.assert_allclose(
        derivative.numpy()[:, 0], v[:, 0] @ ws, rtol=1e-6
    )


def test_jvp_is_the_jacobian_times_the_direction():
    model = tiny.conv_net(seed=3, dtype="float64")
    x = tiny.images(3).astype("float64")
    v = random_directions(x.shape, 2, seed=2)
    got = jacobians.jvp(model, tf.constant(x), tf.constant(v))
    jac = full_jacobians(model, x)
    expected = np.einsum("bkd,rbd->rbk", jac, v.reshape(2, 3, -1))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-9)


def _difference_error(model, x, v, step, scheme="central"):
    steps = tf.fill([len(x)], tf.constant(step, "float64"))
    if scheme == "central":
        fd = jacobians.central_differences(
            model, tf.constant(x), tf.constant(v), steps
        )
    else:
        inputs = tf.constant(x)
        fd = jacobians.forward_differences(
            model, inputs, model(inputs), tf.constant(v), steps
        )
    expected = tape_jvp(model, x, v)
    return np.max(np.abs(fd.numpy() - expected)) / np.max(np.abs(expected))


def tape_jvp(model, x, v):
    """`J(x) v` for each direction, from the plain-tape Jacobians."""
    jac = full_jacobians(model, x)
    return np.einsum("bkd,rbd->rbk", jac, v.reshape(len(v), len(x), -1))


def test_finite_differences_error_shrinks_as_step_squared():
    model = tiny.mlp(input_dim=4, hidden=8, seed=5)  # tanh, float64
    x = np.random.default_rng(3).normal(size=(4, 4))
    v = random_directions(x.shape, 2, seed=4)
    errors = [_difference_error(model, x, v, s) for s in (0.4, 0.2, 0.1)]
    # Central differences: error ~ eps^2 / 6 * third derivative.
    for coarse, fine in zip(errors, errors[1:]):
        assert 3.0 < coarse / fine < 5.0, errors
    # One-sided differences: error ~ eps / 2 * second derivative.
    errors = [
        _difference_error(model, x, v, s, "forward") for s in (0.04, 0.02)
    ]
    assert 1.7 < errors[0] / errors[1] < 2.3, errors
    # The default float64 step (5e-6 ||x||) is accurate to round-off.
    default = jacobians.directional_derivatives(
        "finite_difference", model, tf.constant(x), tf.constant(v)
    )
    np.testing.assert_allclose(
        default.numpy(), tape_jvp(model, x, v), rtol=1e-7
    )


def test_finite_differences_exact_for_relu_away_from_kinks():
    model = relu_mlp(seed=6)
    x = np.random.default_rng(5).normal(size=(6, 5))
    v = random_directions(x.shape, 2, seed=6)
    # Small steps cross no kink of these random points: exact to
    # round-off, at every step size.
    for step in (1e-2, 1e-4):
        assert _difference_error(model, x, v, step) < 1e-10
        assert _difference_error(model, x, v, step, "forward") < 1e-10
    # A large step crosses kinks: no longer exact (the check can fail).
    assert _difference_error(model, x, v, 3.0) > 1e-3


@pytest.mark.parametrize(
    "estimator, bound",
    [("finite_difference", 1e-4), ("forward_difference", 2e-3)],
)
def test_default_float32_step_is_accurate(estimator, bound):
    model = tiny.conv_net(seed=7)  # tanh, float32
    x = tiny.images(4)
    v = random_directions(x.shape, 2, seed=8).astype("float32")
    got = jacobians.directional_derivatives(
        estimator, model, tf.constant(x), tf.constant(v)
    )
    expected = tape_jvp(model, x, v)
    error = np.max(np.abs(got - expected)) / np.max(np.abs(expected))
    assert error < bound, error


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["jvp", "finite_difference"])
def test_proposition_one_against_noise_as_sigma_shrinks(estimator):
    teacher = tiny.mlp(seed=0, name="t")
    student = tiny.mlp(seed=10, name="s")
    point = np.array([[0.3, -0.2, 0.5]])
    gap = teacher.predict(point, verbose=0) - student.predict(point, verbose=0)
    kernel, bias = student.get_layer(index=-1).get_weights()
    student.get_layer(index=-1).set_weights([kernel, bias + gap[0]])
    # Copies of one point: each draws its own direction and noise.
    x = np.tile(point, (20000, 1))
    errors = []
    for sigma in (1.0, 0.5, 0.05):
        logs = evaluate(
            teacher,
            student,
            [
                kj.LogitsDistillation(loss="squared_logits"),
                kj.JacobianMatching(
                    "all", estimator=estimator, normalize=False
                ),
                kj.NoiseDistillation(sigma),
            ],
            x,
        )
        assert logs["logits_distillation_loss"] < 1e-12
        first_order = sigma**2 * logs["jacobian_matching_loss"]
        errors.append(
            abs(logs["noise_distillation_loss"] - first_order) / first_order
        )
    # The first-order expansion's error is O(sigma^2), down to the Monte
    # Carlo error of both estimates (~1%) at sigma = 0.05.
    assert errors[-1] < 0.04, errors
    assert errors[0] > 4 * errors[2], errors


@pytest.mark.parametrize("estimator", INPUT_ESTIMATORS)
def test_gradient_matches_finite_differences_float64(estimator):
    teacher = tiny.mlp(seed=0, name="t")
    student = tiny.mlp(seed=10, name="s")
    x = np.random.default_rng(2).normal(size=(4, 3))
    term = kj.JacobianMatching(
        "all", estimator=estimator, normalize=False, num_projections=2
    )
    distiller = kj.Distiller(
        teacher, student, [term], seed=3, supervised_loss_weight=1.0
    )
    state = distiller.seed_generator.state.numpy()
    kernel = student.layers[1].kernel
    inputs = tf.constant(x)

    def total():
        # The same directions at every evaluation; the term's own float64
        # value (the Distiller sums its terms in float32).
        distiller.seed_generator.state.assign(state)
        teacher_ctx = distiller._context(
            distiller._teacher_forward, inputs, None, (3,)
        )
        student_ctx = distiller._context(
            lambda z: distiller._student_forward(z, True), inputs, None, (3,)
        )
        targets = term.teacher_targets(teacher_ctx)
        loss = tf.reduce_mean(term.per_example_loss(targets, student_ctx))
        assert loss.dtype == tf.float64
        return loss

    with tf.GradientTape() as tape:
        loss = total()
    grad = tape.gradient(loss, kernel).numpy()
    numeric = np.zeros_like(grad)
    h = 1e-5
    # The one-sided step is sqrt(u) ||x|| (1.5e-8 relative in float64):
    # its round-off, u / 1.5e-8 ~ 1e-8 of the loss, divided by the outer
    # 2h = 2e-5, leaves ~5e-4 of noise in the numeric gradient, measured
    # up to 2e-5 relative; central steps (5e-6) leave ~1e-9.
    rtol = 1e-4 if estimator == "forward_difference" else 1e-6
    for index in [(0, 0), (1, 3), (2, 5)]:
        original = kernel.numpy()
        for sign in (1, -1):
            shifted = original.copy()
            shifted[index] += sign * h
            kernel.assign(shifted)
            numeric[index] += sign * float(total()) / (2 * h)
        kernel.assign(original)
        np.testing.assert_allclose(grad[index], numeric[index], rtol=rtol)
    assert np.max(np.abs(grad)) > 1e-3


@pytest.mark.parametrize("estimator", ("vjp",) + INPUT_ESTIMATORS)
def test_unit_rows_are_refused_by_estimates(estimator):
    with pytest.raises(ValueError, match="normalize='teacher'"):
        kj.JacobianMatching("all", estimator=estimator, normalize=True)
    with pytest.raises(ValueError, match="True, False or 'teacher'"):
        kj.JacobianMatching("all", estimator=estimator, normalize="rows")


@pytest.mark.parametrize("estimator", ("exact",) + INPUT_ESTIMATORS)
def test_relative_error_of_linear_nets(estimator):
    # J = W^T for every example: the relative error is
    # ||W_T - W_S||_F^2 / (||W_T||_F^2 / K), whatever the input and its
    # scale (K = 4 classes).
    rng = np.random.default_rng(4)
    w, b = rng.normal(size=(6, 4)), rng.normal(size=4)
    ws = w + 0.3 * rng.normal(size=(6, 4))
    expected = np.sum((w - ws) ** 2) / (np.sum(w**2) / 4)
    for scale in (1.0, 1e3):
        base = tiny.linear_net(scale * w, b, name="base")
        other = tiny.linear_net(scale * ws, b, name="other")
        x = np.tile(rng.normal(size=(8, 6)), (250, 1))
        term = kj.JacobianMatching("all", estimator=estimator)
        got = evaluate(base, other, [term], x)["jacobian_matching_loss"]
        rtol = 1e-5 if estimator == "exact" else 0.05
        np.testing.assert_allclose(got, expected, rtol=rtol)


def test_relative_scale_bias_on_relu_batch_norm_teachers():
    # normalize="teacher" divides an unbiased estimate of ||J_T - J_S||^2
    # by the batch mean of the teacher's own estimates of its mean squared
    # row norm: a ratio, biased by O(1 / (B R)). Measured with a ReLU
    # teacher with BatchNorm (inference mode) at B = 4, against 1,000
    # batches' mean: 0.8% for 4 input directions, 1.6% for one output
    # projection (the default), 7% for one input direction. The student
    # is smooth: difference estimators refuse a student with kinks.
    teacher = tiny.conv_net(
        seed=0, name="t", activation="relu", batch_norm=True
    )
    student = tiny.conv_net(
        seed=10, name="s", activation="tanh", batch_norm=True
    )
    x = tiny.images(4)
    xx = tf.constant(x)
    jacobians_ = []
    for model in (teacher, student):
        with tf.GradientTape() as tape:
            tape.watch(xx)
            y = model(xx, training=False)
        jacobians_.append(tape.batch_jacobian(y, xx).numpy().reshape(4, 5, -1))
    jt, js = jacobians_
    exact = np.mean(np.sum((jt - js) ** 2, (1, 2))) / np.mean(
        np.sum(jt**2, (1, 2)) / 5
    )
    copies = np.tile(x, (1000, 1, 1, 1))
    cases = (("forward_difference", 4, 0.03), ("vjp", 1, 0.12))
    for estimator, num_projections, bound in cases:
        term = kj.JacobianMatching(
            "all", estimator=estimator, num_projections=num_projections
        )
        distiller = kj.Distiller(
            teacher, student, [term], seed=1, supervised_loss_weight=1.0
        )
        distiller.compile()
        got = distiller.evaluate(
            copies, batch_size=4, verbose=0, return_dict=True
        )["jacobian_matching_loss"]
        assert abs(got / exact - 1.0) < bound, (num_projections, got, exact)


def test_directions_are_orthonormal_and_uniform():
    v = jacobians.orthogonal_directions(2000, 5, 3, seed=0).numpy()
    gram = np.einsum("rbd,sbd->brs", v, v)
    np.testing.assert_allclose(
        gram, np.tile(np.eye(3), (2000, 1, 1)), atol=1e-5
    )
    # Uniform on the sphere: E[v v^T] = I / 5 for every direction.
    second = np.einsum("rbd,rbe->rde", v, v) / 2000
    for r in range(3):
        np.testing.assert_allclose(second[r], np.eye(5) / 5, atol=0.02)
    # R > D: orthogonal in blocks of D.
    w = jacobians.orthogonal_directions(4, 2, 5, seed=1).numpy()
    assert w.shape == (5, 4, 2)
    np.testing.assert_allclose(
        np.einsum("rbd,sbd->brs", w[:2], w[:2]),
        np.tile(np.eye(2), (4, 1, 1)),
        atol=1e-6,
    )


@pytest.mark.parametrize("estimator", INPUT_ESTIMATORS)
def test_as_many_directions_as_inputs_is_exact(estimator):
    # R = D orthonormal directions span the input space: one draw gives
    # ||J_T - J_S||_F^2 exactly (independent directions would not).
    teacher = tiny.mlp(seed=0, name="t")
    student = tiny.mlp(seed=10, name="s")
    x = np.random.default_rng(2).normal(size=(5, 3))
    xx = tf.constant(x)
    jacobians_ = []
    for model in (teacher, student):
        with tf.GradientTape() as tape:
            tape.watch(xx)
            y = model(xx)
        jacobians_.append(tape.batch_jacobian(y, xx).numpy())
    expected = np.mean(np.sum((jacobians_[0] - jacobians_[1]) ** 2, (1, 2)))
    for seed in (0, 1):
        term = kj.JacobianMatching(
            "all", estimator=estimator, normalize=False, num_projections=3
        )
        got = evaluate(teacher, student, [term], x, seed=seed)
        np.testing.assert_allclose(
            got["jacobian_matching_loss"], expected, rtol=1e-4
        )


# Steps that follow the network's dtypes and the data's scale.


def bfloat16_hidden_net(seed):
    """float32 input and logits, bfloat16 hidden layers (nested)."""
    init = keras.initializers.RandomNormal(stddev=0.5, seed=seed)
    hidden = keras.Sequential(
        [
            keras.layers.Dense(16, activation="tanh", dtype="mixed_bfloat16"),
            keras.layers.Dense(
                16,
                activation="tanh",
                dtype="mixed_bfloat16",
                kernel_initializer=init,
            ),
        ]
    )
    inputs = keras.Input((16,))
    outputs = keras.layers.Dense(4, kernel_initializer=init)(hidden(inputs))
    return keras.Model(inputs, outputs)


def test_bfloat16_layers_under_float32_policy_get_bfloat16_steps():
    assert keras.config.dtype_policy().name == "float32"
    teacher = bfloat16_hidden_net(seed=0)
    student = bfloat16_hidden_net(seed=10)
    assert jacobians.network_precision(student) == "bfloat16"
    x = np.random.default_rng(0).normal(size=(4, 16)).astype("float32")
    copies = np.tile(x, (1000, 1))
    # float32-sized steps gave 9x to 40x the exact penalty here.
    robust = kj.JacobianRegularizedModel(
        student, target="all", estimator="forward_difference", seed=1
    )
    estimate, _ = tf.function(robust.jacobian_penalty)(tf.constant(copies))
    per_example = np.mean(estimate.numpy().reshape(1000, 4), axis=0)
    exact = np.sum(full_jacobians(student, x) ** 2, axis=(1, 2))
    np.testing.assert_allclose(per_example, exact, rtol=0.15)
    term = kj.JacobianMatching(
        "all", estimator="forward_difference", normalize=False
    )
    logs = evaluate(teacher, student, [term], copies)
    gap = full_jacobians(teacher, x) - full_jacobians(student, x)
    np.testing.assert_allclose(
        logs["jacobian_matching_loss"],
        np.mean(np.sum(gap**2, axis=(1, 2))),
        rtol=0.15,
    )


@pytest.mark.parametrize("scale", [1e-6, 1e6])
@pytest.mark.parametrize(
    "estimator, bound",
    [("finite_difference", 1e-3), ("forward_difference", 5e-3)],
)
def test_default_step_follows_the_input_scale(scale, estimator, bound):
    # The same network seen through inputs scaled by `scale`.
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Rescaling(1.0 / scale),
            tiny.conv_net(seed=7),
        ]
    )
    x = tiny.images(4) * np.float32(scale)
    v = random_directions(x.shape, 2, seed=8).astype("float32")
    got = jacobians.directional_derivatives(
        estimator, model, tf.constant(x), tf.constant(v)
    )
    expected = tape_jvp(model, x, v)
    # With a 1e-3 absolute floor, central differences gave 0.5x at 1e-6.
    error = np.max(np.abs(got - expected)) / np.max(np.abs(expected))
    assert error < bound, error


def test_default_step_of_zero_examples():
    x = tiny.images(3)
    x[1] = 0.0
    steps = jacobians.finite_difference_step(tf.constant(x)).numpy()
    norms = np.linalg.norm(x.reshape(3, -1), axis=1)
    rms = np.sqrt(np.mean(norms**2))
    c = jacobians.RELATIVE_STEPS["float32"]
    np.testing.assert_allclose(steps[[0, 2]], c * norms[[0, 2]], rtol=1e-6)
    np.testing.assert_allclose(steps[1], c * 1e-2 * rms, rtol=1e-6)
    zeros = jacobians.finite_difference_step(tf.zeros((2, 8, 8, 1))).numpy()
    np.testing.assert_allclose(zeros, c * 1e-3 * 8.0, rtol=1e-6)


@pytest.mark.parametrize("step_size", [1e-8, 1e-12])
def test_step_size_the_dtype_cannot_resolve_is_refused(step_size):
    model = tiny.conv_net(seed=7)
    x = tf.constant(tiny.images(4))  # norms about 8
    v = tf.constant(random_directions(x.shape, 1, seed=8).astype("float32"))

    def run(x):
        return jacobians.directional_derivatives(
            "finite_difference", model, x, v, step_size=step_size
        )

    # Used to give 0.3x (1e-8) and exactly 0 (1e-12) of J v.
    with pytest.raises(ValueError, match="too small for float32"):
        run(x)
    with pytest.raises(tf.errors.InvalidArgumentError, match="too small"):
        tf.function(run)(x)
    # XLA drops assertions: the step is raised to the smallest one the
    # precision resolves, and the derivative stays right.
    got = tf.function(run, jit_compile=True)(x).numpy()
    expected = tape_jvp(model, x.numpy(), v.numpy())
    error = np.max(np.abs(got - expected)) / np.max(np.abs(expected))
    assert error < 0.2, error
    # A distiller fails in fit, with the same message.
    term = kj.JacobianMatching(
        "all", estimator="forward_difference", step_size=step_size
    )
    distiller = kj.Distiller(
        tiny.conv_net(seed=0), model, [term], supervised_loss_weight=1.0
    )
    distiller.compile(optimizer="sgd")
    with pytest.raises(tf.errors.InvalidArgumentError, match="too small"):
        distiller.fit(x, batch_size=4, verbose=0)
    # Relative to smaller data, the same step is resolved.
    small = x * 1e-5 if step_size == 1e-8 else x * 1e-9
    assert np.all(np.isfinite(run(small).numpy()))


def test_step_size_below_the_smallest_normal_is_refused_at_construction():
    term = kj.JacobianMatching(
        "all", estimator="finite_difference", step_size=1e-5
    )
    with pytest.raises(ValueError, match="smallest normal float16"):
        kj.Distiller(
            tiny.conv_net(dtype="float16"),
            tiny.conv_net(dtype="float16"),
            [term],
            supervised_loss_weight=1.0,
        )
    with pytest.raises(ValueError, match="smallest normal float16"):
        kj.JacobianRegularizedModel(
            tiny.conv_net(dtype="float16"),
            target="all",
            estimator="forward_difference",
            step_size=1e-5,
        )
    kj.Distiller(
        tiny.conv_net(), tiny.conv_net(), [term], supervised_loss_weight=1.0
    )


@pytest.mark.parametrize("estimator", INPUT_ESTIMATORS)
def test_relative_term_with_a_partial_last_batch(estimator):
    # The default normalize="teacher" with batches of unknown size (a
    # dataset without drop_remainder): 10 examples in batches of 4.
    teacher = tiny.mlp(seed=0, name="t", dtype="float32")
    student = tiny.mlp(seed=10, name="s", dtype="float32")
    term = kj.JacobianMatching("all", estimator=estimator)
    assert term.normalize == "teacher"
    distiller = kj.Distiller(
        teacher, student, [term], supervised_loss_weight=1.0
    )
    distiller.compile(optimizer="sgd")
    x = np.random.default_rng(0).normal(size=(10, 3)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices(x).batch(4)
    logs = distiller.fit(data, verbose=0).history
    assert np.isfinite(logs["jacobian_matching_loss"][0])
    assert logs["jacobian_matching_loss"][0] > 0.0


def test_normalize_accepts_numpy_booleans_only():
    # np.True_ is True: unit rows, so the exact estimator.
    assert kj.JacobianMatching("all", normalize=np.True_).estimator == "exact"
    assert kj.JacobianMatching("all", normalize=np.False_).normalize is False
    for bad in (1, 0, 1.0, "rows"):
        with pytest.raises(ValueError, match="True, False or 'teacher'"):
            kj.JacobianMatching("all", normalize=bad)


# Output projections ("vjp"): orthonormal per example.


def relu_batch_norm_net(seed, name):
    """A ReLU conv net whose BatchNorm has non-trivial moving statistics."""
    model = tiny.conv_net(
        seed=seed, name=name, activation="relu", batch_norm=True
    )
    bn = model.get_layer("bn")
    rng = np.random.default_rng(seed)
    bn.set_weights(
        [
            rng.uniform(0.5, 2.0, size=w.shape).astype("float32")
            if i in (0, 3)
            else rng.normal(size=w.shape).astype("float32")
            for i, w in enumerate(bn.get_weights())
        ]
    )
    return model


def orthonormal_relative_std(a, count):
    """Closed-form relative std of `K / R sum_r (u_r^T a)^2`, `u_r`
    orthonormal and uniform (`a` is `K x D`): the independent draws'
    relative variance `2 (K q - 1) / ((K + 2) R)` times
    `(K - R) / (K - 1)`."""
    k = a.shape[0]
    m = a @ a.T
    q = np.trace(m @ m) / np.trace(m) ** 2
    return np.sqrt(2 * (k * q - 1) * (k - count) / ((k + 2) * count * (k - 1)))


@pytest.mark.parametrize("normalize", [False, "teacher"])
def test_as_many_output_projections_as_classes_is_exact(normalize):
    # R = K orthonormal output vectors span the output space: one draw
    # gives ||J_T - J_S||_F^2 (and the teacher's scale) exactly.
    teacher = relu_batch_norm_net(0, "t")
    student = relu_batch_norm_net(10, "s")
    x = tiny.images(4)
    jt, js = full_jacobians(teacher, x), full_jacobians(student, x)
    error = np.sum((jt.astype("float64") - js) ** 2, axis=(1, 2))
    if normalize == "teacher":
        error = error / np.mean(np.sum(jt.astype("float64") ** 2, (1, 2)) / 5)
    for seed in (0, 1):
        term = kj.JacobianMatching(
            "all", estimator="vjp", normalize=normalize, num_projections=5
        )
        got = evaluate(teacher, student, [term], x, seed=seed)
        np.testing.assert_allclose(
            got["jacobian_matching_loss"], np.mean(error), rtol=1e-5
        )


def test_two_output_projections_are_unbiased():
    teacher = relu_batch_norm_net(0, "t")
    student = relu_batch_norm_net(10, "s")
    x = tiny.images(2)
    a = full_jacobians(teacher, x).astype("float64") - full_jacobians(
        student, x
    )
    exact = np.sum(a**2, axis=(1, 2))
    copies = 2000
    term = kj.JacobianMatching(
        "all", estimator="vjp", normalize=False, num_projections=2
    )
    logs = evaluate(teacher, student, [term], np.tile(x, (copies, 1, 1, 1)))
    spread = [orthonormal_relative_std(a[i], 2) * exact[i] for i in (0, 1)]
    standard_error = np.sqrt(np.mean(np.square(spread)) / (2 * copies))
    assert standard_error > 0.0
    error = logs["jacobian_matching_loss"] - np.mean(exact)
    assert abs(error) < 4 * standard_error, (error, standard_error)


def test_output_projections_spread_less_than_independent_ones():
    # Per-example relative std of the estimate of ||J||_F^2 with K = 5
    # classes, against independent unit vectors drawn in NumPy and the
    # closed form. Measured (3,000 draws; library / independent /
    # closed form orthonormal): R = 1: 0.324 / 0.327 / 0.329,
    # R = 2: 0.201 / 0.233 / 0.201, R = 4: 0.082 / 0.167 / 0.082.
    model = relu_batch_norm_net(0, "m")
    x = tiny.images(1)
    j = full_jacobians(model, x)[0].astype("float64")
    exact = np.sum(j**2)
    rng = np.random.default_rng(0)
    copies = 3000
    for count, independent_bound in ((1, 1.1), (2, 0.95), (4, 0.6)):
        robust = kj.JacobianRegularizedModel(
            model, target="all", estimator="vjp", num_projections=count
        )
        estimate, _ = tf.function(robust.jacobian_penalty)(
            tf.constant(np.tile(x, (copies, 1, 1, 1)))
        )
        ours = np.std(estimate.numpy()) / exact
        u = rng.normal(size=(copies, count, 5))
        u /= np.linalg.norm(u, axis=-1, keepdims=True)
        independent = (
            np.std(
                5 / count * np.sum(np.einsum("nrk,kd->nrd", u, j) ** 2, (1, 2))
            )
            / exact
        )
        np.testing.assert_allclose(
            ours, orthonormal_relative_std(j, count), rtol=0.1
        )
        assert ours < independent_bound * independent, (ours, independent)
