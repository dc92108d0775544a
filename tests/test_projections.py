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
    distiller = kj.Distiller(teacher, student, terms, seed=seed)
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
                kj.LogitsDistillation("mse"),
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
    distiller = kj.Distiller(teacher, student, [term], seed=3)
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
    for index in [(0, 0), (1, 3), (2, 5)]:
        original = kernel.numpy()
        for sign in (1, -1):
            shifted = original.copy()
            shifted[index] += sign * h
            kernel.assign(shifted)
            numeric[index] += sign * float(total()) / (2 * h)
        kernel.assign(original)
        np.testing.assert_allclose(grad[index], numeric[index], rtol=1e-6)
    assert np.max(np.abs(grad)) > 1e-3


@pytest.mark.parametrize("estimator", INPUT_ESTIMATORS)
def test_normalized_compares_directions_of_logit_change(estimator):
    rng = np.random.default_rng(4)
    w, b = rng.normal(size=(6, 4)), rng.normal(size=4)
    base = tiny.linear_net(w, b, name="base")
    x = rng.normal(size=(8, 6))

    def loss(scale):
        other = tiny.linear_net(scale * w, b, name="other")
        term = kj.JacobianMatching("all", estimator=estimator, normalize=True)
        return evaluate(base, other, [term], x)["jacobian_matching_loss"]

    # J_S v = 3 J_T v: same direction, loss 0; opposite: ||2u||^2 = 4.
    np.testing.assert_allclose(loss(3.0), 0.0, atol=1e-6)
    np.testing.assert_allclose(loss(-0.5), 4.0, rtol=1e-6)
    # Against NumPy with given directions: mean_r ||u_T - u_S||^2, and
    # invariant to the scale of each side.
    ws = rng.normal(size=(6, 4))
    v = random_directions((8, 6), 3, seed=1)
    t = np.einsum("rbd,dk->rbk", v, w)
    s = np.einsum("rbd,dk->rbk", v, ws)
    got = jacobians.directional_distance(
        tf.constant(2.0 * t, "float32"),
        tf.constant(5.0 * s, "float32"),
        6.0,
        normalize=True,
    )
    t /= np.linalg.norm(t, axis=-1, keepdims=True)
    s /= np.linalg.norm(s, axis=-1, keepdims=True)
    expected = np.mean(np.sum((t - s) ** 2, axis=-1), axis=0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_same_directions_for_teacher_and_student():
    # Identical networks: any difference would come from other draws.
    teacher = tiny.conv_net(seed=0, name="t")
    student = tiny.conv_net(seed=0, name="s")
    for estimator in INPUT_ESTIMATORS:
        term = kj.JacobianMatching("all", estimator=estimator, normalize=False)
        logs = evaluate(teacher, student, [term], tiny.images(4))
        assert logs["jacobian_matching_loss"] < 1e-10


def test_directions_are_drawn_anew_each_step_and_seeded():
    teacher = tiny.conv_net(seed=0, name="t")
    student = tiny.conv_net(seed=10, name="s")
    x = tiny.images(4)
    values = []
    for _ in range(2):
        distiller = kj.Distiller(
            teacher,
            student,
            [kj.JacobianMatching("all", estimator="finite_difference")],
            seed=5,
        )
        targets = distiller.teacher_targets(tf.constant(x))
        again = distiller.teacher_targets(tf.constant(x))
        values.append(targets[0]["directions"].numpy())
        assert targets[0]["directions"].shape == (4, 1, 8, 8, 1)
        assert not np.allclose(values[-1], again[0]["directions"].numpy())
    np.testing.assert_array_equal(values[0], values[1])
    norms = np.linalg.norm(values[0].reshape(4, -1), axis=-1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-6)


def test_only_finite_differences_needs_no_input_gradients():
    teacher = tiny.conv_net(seed=0, name="t")
    student = tiny.conv_net(seed=10, name="s")
    terms = [
        kj.LogitsDistillation(),
        kj.JacobianMatching("all", estimator="finite_difference"),
    ]
    distiller = kj.Distiller(teacher, student, terms)
    assert not distiller.needs_input_gradients
    calls = []
    original = distiller._student_forward

    def counted(x, training):
        calls.append(int(x.shape[0]))
        return original(x, training)

    distiller._student_forward = counted
    distiller.compile(optimizer="sgd", run_eagerly=True)
    logs = distiller.fit(tiny.images(4), epochs=1, verbose=0).history
    # The clean batch once (for the other terms), then 2B shifted copies.
    assert calls == [4, 8], calls
    assert np.isfinite(logs["loss"][0])
    exact = kj.Distiller(
        teacher, student, [kj.JacobianMatching("all", normalize=False)]
    )
    assert exact.needs_input_gradients


def test_invalid_combinations_are_refused():
    with pytest.raises(ValueError, match="needs target='all'"):
        kj.JacobianMatching("teacher_top1", estimator="jvp")
    with pytest.raises(ValueError, match="alias of target='all'"):
        kj.JacobianMatching("random", estimator="finite_difference")
    with pytest.raises(ValueError, match="must be one of"):
        kj.JacobianMatching("all", estimator="forward")
    with pytest.raises(ValueError, match="alignment"):
        kj.JacobianMatching("all", estimator="jvp", loss="alignment")
    with pytest.raises(ValueError, match="only used with"):
        kj.JacobianMatching("all", estimator="jvp", step_size=0.1)
    for bad in (0, float("nan"), True):
        with pytest.raises(ValueError, match="positive finite number"):
            kj.JacobianMatching(
                "all", estimator="finite_difference", step_size=bad
            )
        with pytest.raises(ValueError, match="positive finite number"):
            kj.JacobianRegularizedModel(
                tiny.conv_net(),
                target="all",
                estimator="forward_difference",
                step_size=bad,
            )
    term = kj.JacobianMatching(
        "all", estimator="finite_difference", step_size=np.float32(0.5)
    )
    assert term.step_size == 0.5
    with pytest.raises(ValueError, match="needs target='all'"):
        kj.JacobianMatching("teacher_top1", estimator="vjp")
    with pytest.raises(ValueError, match="alias of target='all'"):
        kj.JacobianRegularizedModel(
            tiny.conv_net(), target="random", estimator="jvp"
        )
    teacher = tiny.conv_net(input_shape=(8, 8, 1), name="t")
    student = tiny.conv_net(input_shape=(6, 6, 1), name="s")
    with pytest.raises(ValueError, match="input shapes must agree"):
        kj.Distiller(
            teacher, student, [kj.JacobianMatching("all", estimator="jvp")]
        )


def test_vjp_estimator_is_the_random_target():
    teacher = tiny.conv_net(seed=0, name="t")
    student = tiny.conv_net(seed=10, name="s")
    x = tiny.images(4)
    logs = [
        evaluate(teacher, student, [term], x, seed=9)["jacobian_matching_loss"]
        for term in (
            kj.JacobianMatching("random", normalize=False),
            kj.JacobianMatching("all", estimator="vjp", normalize=False),
        )
    ]
    assert logs[0] == logs[1]
    assert kj.JacobianMatching("random").estimator == "vjp"
    assert kj.JacobianMatching("all").estimator == "exact"


def test_cache_teacher_refuses_input_directions():
    teacher = tiny.conv_net(seed=0, name="t")
    student = tiny.conv_net(seed=10, name="s")
    for estimator in INPUT_ESTIMATORS:
        distiller = kj.Distiller(
            teacher,
            student,
            [kj.JacobianMatching("all", estimator=estimator)],
        )
        with pytest.raises(ValueError, match="draw new random values"):
            kj.cache_teacher(distiller, (tiny.images(4),), batch_size=4)


def test_keras_round_trip(tmp_path):
    teacher = tiny.conv_net(seed=0, name="t")
    student = tiny.conv_net(seed=10, name="s")
    term = kj.JacobianMatching(
        "all", estimator="finite_difference", num_projections=2, step_size=0.5
    )
    distiller = kj.Distiller(teacher, student, [term], seed=1)
    distiller.compile(optimizer="sgd")
    path = str(tmp_path / "d.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    got = loaded.distillation_losses[0]
    assert (got.estimator, got.num_projections, got.step_size) == (
        "finite_difference",
        2,
        0.5,
    )
    x = tiny.images(4)
    a = distiller.evaluate(x, verbose=0, return_dict=True)
    b = loaded.evaluate(x, verbose=0, return_dict=True)
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-6)
    robust = kj.JacobianRegularizedModel(
        tiny.conv_net(seed=2), target="all", estimator="jvp", seed=1
    )
    robust.compile(optimizer="sgd", loss=tiny.sparse_ce())
    robust.save(str(tmp_path / "r.keras"))
    again = keras.saving.load_model(str(tmp_path / "r.keras"))
    assert (again.target, again.estimator) == ("all", "jvp")


@pytest.mark.slow
@pytest.mark.parametrize("estimator", INPUT_ESTIMATORS)
def test_xla_matches_no_xla(estimator):
    check_xla_matches_no_xla(estimator)


@pytest.mark.slow
def test_xla_compiles_after_many_forward_mode_passes():
    """XLA compiles the forward-mode step whatever ran before in the process.

    TensorFlow relaxes an op's forward-mode rule to unknown shapes after 32
    traces of that op type in a process; the `jvp` step then failed to
    compile under XLA ("dimensions_size() ... (2 vs 1)"), so whether it
    compiled depended on the forward-mode passes run before (see
    `keras_jacobian/forward_mode.py`). Eager passes at 11 batch sizes
    trace BiasAdd's rule 33 times.
    """
    from tensorflow.python.eager import forwardprop

    warm = tiny.conv_net(seed=5, name="warm")
    for n in range(1, 12):
        x = tf.random.normal((n, 8, 8, 1))
        with tf.autodiff.ForwardAccumulator(x, tf.ones_like(x)) as acc:
            out = warm(x)
        acc.jvp(out)
    limit = forwardprop._TRACE_COUNT_LIMIT
    assert forwardprop._TRACE_COUNT["BiasAdd"] >= limit  # relaxed from now
    check_xla_matches_no_xla("jvp")
    assert forwardprop._TRACE_COUNT_LIMIT == limit  # restored


def test_exact_shapes_restores_the_limit_when_nested_or_raising():
    from tensorflow.python.eager import forwardprop

    from keras_jacobian import forward_mode

    limit = forwardprop._TRACE_COUNT_LIMIT
    with pytest.raises(RuntimeError, match="inside"):
        with forward_mode.exact_shapes():
            with forward_mode.exact_shapes():
                assert forwardprop._TRACE_COUNT_LIMIT == float("inf")
            assert forwardprop._TRACE_COUNT_LIMIT == float("inf")
            raise RuntimeError("inside")
    assert forwardprop._TRACE_COUNT_LIMIT == limit


def check_xla_matches_no_xla(estimator):
    teacher = tiny.conv_net(seed=0, name="t")
    student = tiny.conv_net(seed=10, name="s")
    x = np.tile(tiny.images(2), (200, 1, 1, 1))
    y = np.arange(len(x)) % 5
    exact = np.mean(
        np.sum(
            (full_jacobians(teacher, x[:2]) - full_jacobians(student, x[:2]))
            ** 2,
            axis=(1, 2),
        )
    )
    initial = student.get_weights()
    results = []
    for jit in (False, True):
        s = keras.models.clone_model(student)
        s.set_weights(student.get_weights())
        distiller = kj.Distiller(
            teacher,
            s,
            [
                kj.LogitsDistillation(),
                kj.JacobianMatching(
                    "all", estimator=estimator, normalize=False
                ),
            ],
            seed=2,
        )
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.01),
            loss=tiny.sparse_ce(),
            jit_compile=jit,
        )
        # Keras turns XLA off (with a warning) under op determinism.
        assert distiller.jit_compile == jit
        history = distiller.fit(x, y, batch_size=len(x), verbose=0).history
        results.append(({k: v[0] for k, v in history.items()}, s))
    (logs0, s0), (logs1, s1) = results
    # XLA draws other directions from the same seed: the Jacobian terms
    # agree as estimates (400 draws), the rest to round-off.
    for name in ("student_loss", "logits_distillation_loss"):
        np.testing.assert_allclose(logs1[name], logs0[name], rtol=1e-4)
    for logs in (logs0, logs1):
        np.testing.assert_allclose(
            logs["jacobian_matching_loss"], exact, rtol=0.15
        )
    updates = [
        np.concatenate(
            [(w - w0).ravel() for w, w0 in zip(s.get_weights(), initial)]
        )
        for s in (s0, s1)
    ]
    assert np.all(np.isfinite(updates[1]))
    np.testing.assert_allclose(
        np.linalg.norm(updates[1]), np.linalg.norm(updates[0]), rtol=0.15
    )


def test_difference_estimators_refuse_random_layers():
    teacher = tiny.conv_net(seed=0, name="t")
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Flatten()(inputs)
    h = keras.layers.Dropout(0.5, name="drop")(h)
    student = keras.Model(inputs, keras.layers.Dense(5)(h))
    for estimator in ("finite_difference", "forward_difference"):
        term = kj.JacobianMatching("all", estimator=estimator)
        with pytest.raises(ValueError, match=r"random values.*\['drop'\]"):
            kj.Distiller(teacher, student, [term])
        with pytest.raises(ValueError, match="random values"):
            kj.JacobianRegularizedModel(
                student, target="all", estimator=estimator
            )
    # Forward mode takes one pass: fine with dropout.
    kj.Distiller(
        teacher, student, [kj.JacobianMatching("all", estimator="jvp")]
    )

    # Subclasses of the random layers too (Monte Carlo dropout), inside a
    # nested model; a rate of 0 draws nothing.
    class MonteCarloDropout(keras.layers.Dropout):
        pass

    def student_with(layer):
        inner = keras.Sequential([keras.layers.Flatten(), layer])
        outputs = keras.layers.Dense(5)(inner(inputs))
        return keras.Model(inputs, outputs)

    term = kj.JacobianMatching("all", estimator="forward_difference")
    with pytest.raises(ValueError, match=r"random values.*\['mc'\]"):
        kj.Distiller(
            teacher, student_with(MonteCarloDropout(0.3, name="mc")), [term]
        )
    kj.Distiller(teacher, student_with(keras.layers.Dropout(0.0)), [term])


# Measured relative to float32 (16 examples, 8 directions each): float16
# 2e-5 (jvp), 3e-3 (forward), 4e-3 (central differences); bfloat16 5e-4,
# 1e-3, 1.5e-2. Bounds with room: the steps grow with the unit round-off.
MIXED_TOLERANCE = {"mixed_float16": 0.02, "mixed_bfloat16": 0.06}


@pytest.fixture
def restore_policy():
    yield
    keras.config.set_dtype_policy("float32")


def _mixed_logs(policy_name, weights, fit):
    keras.config.set_dtype_policy(policy_name)
    teacher = tiny.conv_net(seed=0, name="t")
    student = tiny.conv_net(seed=10, name="s")
    teacher.set_weights(weights[0])
    student.set_weights(weights[1])
    terms = [
        kj.JacobianMatching(
            "all", estimator=e, normalize=False, num_projections=8, name=e
        )
        for e in INPUT_ESTIMATORS
    ]
    distiller = kj.Distiller(teacher, student, terms, seed=6)
    distiller.compile(optimizer="sgd")
    x = tiny.images(16)
    logs = distiller.evaluate(x, batch_size=16, verbose=0, return_dict=True)
    if fit:
        history = distiller.fit(x, batch_size=8, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        assert all(np.all(np.isfinite(w)) for w in student.get_weights())
    return logs


@pytest.mark.slow
@pytest.mark.parametrize("policy_name", list(MIXED_TOLERANCE))
def test_mixed_precision_close_to_float32(restore_policy, policy_name):
    teacher = tiny.conv_net(seed=0, name="t")
    student = tiny.conv_net(seed=10, name="s")
    weights = (teacher.get_weights(), student.get_weights())
    expected = _mixed_logs("float32", weights, fit=False)
    got = _mixed_logs(policy_name, weights, fit=True)
    for estimator in INPUT_ESTIMATORS:
        name = f"{estimator}_loss"
        print(policy_name, name, abs(got[name] / expected[name] - 1))
        np.testing.assert_allclose(
            got[name], expected[name], rtol=MIXED_TOLERANCE[policy_name]
        )
