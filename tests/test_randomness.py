"""Networks that draw random values, under the input-direction estimators.

Each estimate is checked against a plain `tf.GradientTape` Jacobian of
the same network with the same random draws: the test records every
seed state before the library's step, resets them and differentiates one
pass, which then draws the values the step's own pass drew.
"""

import pathlib
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.random import seed_generator

import keras_jacobian as kj
from keras_jacobian import jacobians
from keras_jacobian import randomness
from tests import tiny

ROOT = pathlib.Path(__file__).resolve().parents[1]

SHAPE = (6, 6, 1)
CLASSES = 3
DIFFERENCE_ESTIMATORS = ("forward_difference", "finite_difference")
ESTIMATORS = DIFFERENCE_ESTIMATORS + ("jvp",)
# Relative error of each estimator on these tanh networks (float32):
# one-sided differences O(eps) ~ 2e-4, central ~ 1e-5, forward mode exact.
RTOL = {"forward_difference": 3e-3, "finite_difference": 3e-4, "jvp": 1e-5}


class OwnsDropout(keras.layers.Layer):
    """A custom layer whose Dropout is an attribute, not in `model.layers`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.drop = keras.layers.Dropout(0.5, seed=4)
        self.dense = keras.layers.Dense(
            12,
            activation="tanh",
            kernel_initializer=keras.initializers.GlorotUniform(seed=5),
        )

    def call(self, x, training=None):
        return self.dense(self.drop(x, training=training))


class BareDropout(keras.layers.Layer):
    """`keras.random.dropout` with `seed=None`: the global generator."""

    def call(self, x, training=None):
        if training:
            return keras.random.dropout(x, 0.5)
        return x


class MonteCarloDropout(keras.layers.Layer):
    """Dropout in every pass, inference included."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(7)

    def call(self, x):
        return keras.random.dropout(x, 0.3, seed=self.seed_generator)


class StatefulNoise(keras.layers.Layer):
    """Random values from a stateful TensorFlow op: not replayable."""

    def __init__(self, always=False, **kwargs):
        super().__init__(**kwargs)
        self.always = always

    def call(self, x, training=None):
        if training or self.always:
            keep = tf.random.uniform(tf.shape(x)) > 0.3
            return x * tf.cast(keep, x.dtype) / 0.7
        return x


def _head(h, seed=0, linear=False):
    h = keras.layers.Flatten()(h)
    if not linear:
        h = keras.layers.Dense(
            12,
            activation="tanh",
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        )(h)
    return keras.layers.Dense(
        CLASSES,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1),
    )(h)


def random_model(kind):
    inputs = keras.Input(SHAPE)
    if kind == "random_flip":
        h = keras.layers.RandomFlip(seed=1)(inputs)
    elif kind in ("random_translation", "constant_translation"):
        fill = "constant" if kind == "constant_translation" else "reflect"
        h = keras.layers.RandomTranslation(0.3, 0.3, fill_mode=fill, seed=2)(
            inputs
        )
        # Linear given the draws (see `_projected_by_columns`).
        return keras.Model(inputs, _head(h, linear=True), name=kind)
    elif kind == "owns_dropout":
        h = OwnsDropout()(keras.layers.Flatten()(inputs))
    elif kind == "time_distributed":
        h = keras.layers.Reshape(SHAPE[:2])(inputs)
        h = keras.layers.TimeDistributed(keras.layers.Dropout(0.4, seed=3))(h)
    elif kind == "bare_dropout":
        h = BareDropout()(keras.layers.Flatten()(inputs))
    elif kind == "stateful_noise":
        h = StatefulNoise()(inputs)
    else:
        raise ValueError(kind)
    return keras.Model(inputs, _head(h), name=kind)


def _states(*models):
    """Every integer variable of the models, and the global seed state."""
    states = [
        v
        for m in models
        for v in m.variables
        if not keras.backend.is_float_dtype(v.dtype)
    ]
    return states + [seed_generator.global_seed_generator().state]


@pytest.fixture
def directions(monkeypatch):
    """Records the input directions the library draws."""
    drawn = []
    draw = jacobians.input_directions

    def spy(*args, **kwargs):
        drawn.append(draw(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(jacobians, "input_directions", spy)
    return drawn


def _projected(model, x, training, v):
    """`J v` of one tape pass, `(R, batch, K)`, by `batch_jacobian`."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = model(x, training=training)
    jac = tape.batch_jacobian(out, x)
    jac = tf.reshape(jac, [x.shape[0], CLASSES, -1])
    v = tf.reshape(tf.cast(v, jac.dtype), [v.shape[0], x.shape[0], -1])
    return tf.einsum("bkd,rbd->rbk", jac, v)


def _projected_by_columns(model, x, training, v, states):
    """`J v` of a network linear given its draws, column by column.

    The registered gradient of TensorFlow's `ImageProjectiveTransformV3`
    (behind `RandomTranslation`, `RandomRotation`, `RandomZoom`) is not
    the transpose of the transform, so a tape gives a wrong Jacobian
    there; one pass per input coordinate, each with the same draws, gives
    the right one.
    """
    start = [tf.identity(s.value) for s in states]

    def run(z):
        for s, value in zip(states, start):
            s.assign(value)
        return model(z, training=training)

    size = int(np.prod(x.shape[1:]))
    base = run(x)
    columns = []
    for i in range(size):
        unit = tf.reshape(tf.one_hot(i, size, dtype=x.dtype), x.shape[1:])
        columns.append(run(x + unit[None]) - base)
    jac = tf.stack(columns, axis=-1)  # (batch, K, D)
    v = tf.reshape(tf.cast(v, jac.dtype), [v.shape[0], x.shape[0], -1])
    return tf.einsum("bkd,rbd->rbk", jac, v)


def _with_draws_of(states, compute, exact):
    """`compute()`, then `exact()` with the states `compute` started from.

    Returns both and the largest difference between the states after
    each: the estimator leaves the random stream where one pass does.
    """
    before = [tf.identity(s.value) for s in states]
    got = compute()
    after = [tf.identity(s.value) for s in states]
    for s, value in zip(states, before):
        s.assign(value)
    expected = exact()
    drift = tf.add_n(
        [
            tf.reduce_sum(tf.abs(a - tf.identity(s.value)))
            for a, s in zip(after, states)
        ]
    )
    return got, expected, drift


@pytest.mark.parametrize(
    "kind, mode",
    [
        ("random_flip", "eager"),
        ("random_translation", "eager"),
        ("constant_translation", "eager"),
        ("owns_dropout", "eager"),
        ("time_distributed", "eager"),
        ("bare_dropout", "eager"),
        # In a tf.function, with a layer's generator and the global one,
        # and compiled by XLA (which draws other values, then replays).
        ("random_flip", "function"),
        ("bare_dropout", "function"),
        ("owns_dropout", "xla"),
    ],
)
def test_penalty_equals_tape_jacobian_with_same_draws(directions, kind, mode):
    model = random_model(kind)
    x = tf.constant(tiny.images(4, SHAPE))
    size = float(np.prod(SHAPE))
    states = _states(model)
    # Forward mode runs the same replay as eagerly: not traced again.
    estimators = {
        "eager": ESTIMATORS,
        "function": DIFFERENCE_ESTIMATORS,
        "xla": ("forward_difference",),  # compiling is slow
    }[mode]
    if kind == "random_translation":
        # Forward mode differentiates with that wrong gradient too.
        estimators = DIFFERENCE_ESTIMATORS
    if kind == "constant_translation":
        # Refused: forward mode cannot trace the transform in a step.
        estimators = tuple(e for e in estimators if e != "jvp")
    for estimator in estimators:
        robust = kj.JacobianRegularizedModel(
            model, target="all", estimator=estimator, num_projections=2
        )

        def exact():
            if kind.endswith("_translation"):
                jv = _projected_by_columns(
                    model, x, True, directions[-1], states
                )
            else:
                jv = _projected(model, x, True, directions[-1])
            return size * tf.reduce_mean(tf.reduce_sum(jv**2, -1), axis=0)

        def step(robust=robust, exact=exact):
            return _with_draws_of(
                states,
                lambda: robust.jacobian_penalty(x, training=True)[0],
                exact,
            )

        if mode != "eager":
            step = tf.function(step, jit_compile=mode == "xla")
        got, expected, drift = step()
        # The draws matter: with other draws the Jacobian differs.
        np.testing.assert_allclose(got, expected, rtol=RTOL[estimator])
        assert float(drift) == 0.0


@pytest.mark.parametrize(
    "layer",
    [
        keras.layers.RandomTranslation(0.3, 0.3, seed=2),
        keras.layers.RandomRotation(0.2, fill_mode="constant", seed=2),
        keras.layers.RandomZoom(0.3, fill_mode="nearest", seed=2),
        # Constant fill, but nearest-neighbour sampling ties at 1.5 pixels.
        keras.layers.RandomTranslation(
            (0.25, 0.25),
            (0.25, 0.25),
            fill_mode="constant",
            interpolation="nearest",
            seed=2,
        ),
    ],
    ids=lambda layer: f"{type(layer).__name__}-{layer.interpolation}",
)
def test_autodiff_refuses_transforms_whose_gradient_is_wrong(layer):
    # TensorFlow's gradient of these transforms is not their transpose:
    # reverse and forward mode gave wrong Jacobians, silently (the
    # difference estimators, forward passes only, stay accepted).
    inputs = keras.Input(SHAPE)
    model = keras.Model(inputs, _head(layer(inputs), linear=True))
    plain = keras.Input(SHAPE)
    teacher = keras.Model(plain, _head(plain, seed=10))
    for estimator in ("exact", "vjp", "jvp"):
        with pytest.raises(ValueError, match="not the transpose"):
            kj.JacobianRegularizedModel(
                model, target="all", estimator=estimator
            )
        with pytest.raises(ValueError, match=type(layer).__name__):
            kj.Distiller(
                teacher,
                model,
                [kj.JacobianMatching("all", estimator=estimator)],
            )
    # The paper's top-1 row too.
    with pytest.raises(ValueError, match="not the transpose"):
        kj.Distiller(teacher, model, [kj.JacobianMatching()])
    kj.JacobianRegularizedModel(
        model, target="all", estimator="forward_difference"
    )


def test_transform_gradients_measured_against_the_transform():
    # The premise of the refusal: the tape Jacobian of a translation with
    # fill_mode="constant" is the transform's matrix; a rotation's is not.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import transform_gradients

    right = transform_gradients.error("translation", "constant", "bilinear")
    wrong = transform_gradients.error("rotation", "reflect", "bilinear")
    assert right < 1e-5 and wrong > 0.05
    half = "half_pixel_translation"
    assert transform_gradients.error(half, "constant", "bilinear") < 1e-5
    assert transform_gradients.error(half, "constant", "nearest") > 0.5


def _distiller(teacher, student, estimator):
    term = kj.JacobianMatching(
        "all", estimator=estimator, normalize=False, num_projections=2
    )
    return kj.Distiller(
        teacher, student, [term], seed=1, supervised_loss_weight=1.0
    )


def _mc_pair():
    inputs = keras.Input(SHAPE)
    h = MonteCarloDropout()(keras.layers.Flatten()(inputs))
    teacher = keras.Model(inputs, _head(h, seed=10), name="mc_teacher")
    return teacher, random_model("owns_dropout")


def test_monte_carlo_teacher_matches_tape_jacobians(directions):
    teacher, student = _mc_pair()
    x = tf.constant(tiny.images(4, SHAPE))
    size = float(np.prod(SHAPE))
    for estimator in ESTIMATORS:
        distiller = _distiller(teacher, student, estimator)
        states = _states(teacher, student) + [distiller.seed_generator.state]
        start = [s.numpy() for s in states]

        def exact():
            # Teacher first, as in the step (they could share the global
            # generator).
            t = _projected(teacher, x, False, directions[-1])
            s = _projected(student, x, True, directions[-1])
            squared = tf.reduce_sum((t - s) ** 2, axis=-1)
            return size * tf.reduce_mean(squared)

        got, expected, drift = _with_draws_of(
            states[:-1],  # the networks' (directions are drawn once)
            lambda: distiller._step_losses(x, None, None, True)[1][1][1],
            exact,
        )
        np.testing.assert_allclose(got, expected, rtol=RTOL[estimator])
        assert float(drift) == 0.0
        if estimator != "forward_difference":
            continue
        # The same step traced by `fit`, from the same states. Unshuffled:
        # each example meets the dropout mask of its position.
        for s, value in zip(states, start):
            s.assign(value)
        distiller.compile(optimizer=keras.optimizers.SGD(0.01))
        logs = distiller.fit(x, batch_size=4, verbose=0, shuffle=False)
        # Graph and eager round-off differ, amplified by 1 / eps (measured
        # 2.4e-4); other dropout masks change the value by 10% or more.
        np.testing.assert_allclose(
            logs.history["jacobian_matching_loss"][0], float(got), rtol=2e-3
        )


def test_unreplayable_randomness_is_refused():
    student = random_model("stateful_noise")
    teacher = tiny.conv_net(SHAPE, CLASSES, seed=0, name="t")
    inputs = keras.Input(SHAPE)
    always = StatefulNoise(always=True)(inputs)
    random_teacher = keras.Model(inputs, _head(always), name="rt")
    for estimator in ("forward_difference", "finite_difference"):
        term = kj.JacobianMatching("all", estimator=estimator)
        pattern = (
            rf"estimator='{estimator}' differences forward passes of the "
            r"student.*cannot be replayed.*estimator='jvp', 'exact' or 'vjp'"
        )
        with pytest.raises(ValueError, match=pattern):
            kj.Distiller(teacher, student, [term], supervised_loss_weight=1.0)
        with pytest.raises(ValueError, match="of the model.*replayed"):
            kj.JacobianRegularizedModel(
                student, target="all", estimator=estimator
            )
        # The teacher runs in inference mode: random there too.
        clean = tiny.conv_net(SHAPE, CLASSES, seed=3, name="s")
        with pytest.raises(ValueError, match="inference-mode passes"):
            kj.Distiller(
                random_teacher, clean, [term], supervised_loss_weight=1.0
            )
    # Autodiff through one pass is exact at that pass's draws.
    for estimator in ("jvp", "exact"):
        kj.Distiller(
            random_teacher,
            student,
            [kj.JacobianMatching("all", estimator=estimator)],
            supervised_loss_weight=1.0,
        )


def test_construction_check_has_no_side_effect():
    inputs = keras.Input(SHAPE)
    h = keras.layers.Conv2D(2, 3)(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dropout(0.5)(h)
    student = keras.Model(inputs, _head(BareDropout()(h)))
    teacher, _ = _mc_pair()
    states = _states(teacher, student)
    before = [v.numpy() for v in teacher.weights + student.weights + states]
    _distiller(teacher, student, "forward_difference")
    after = [v.numpy() for v in teacher.weights + student.weights + states]
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)


class FixedSeedNoise(keras.layers.Layer):
    """Random values that advance no seed state but depend on the batch.

    Draws with a fixed integer seed depend on the shape of the batch and
    on each example's row; so do the two hand-made kinds: a table of
    noise indexed by row, and noise seeded by the batch size.
    """

    def __init__(self, kind, always=False, **kwargs):
        super().__init__(**kwargs)
        self.kind = kind
        self.always = always

    def call(self, x, training=None):
        if not (training or self.always):
            return x
        if self.kind == "keras_dropout":
            return keras.random.dropout(x, 0.5, seed=3)
        shape = tf.shape(x)
        if self.kind == "keras_normal":
            noise = keras.random.normal(shape, seed=7)
        elif self.kind == "stateless_normal":
            noise = tf.random.stateless_normal(shape, seed=[1, 2])
        elif self.kind == "row_table":
            table = tf.random.stateless_normal([64, x.shape[-1]], seed=[5, 6])
            noise = table[: shape[0]]
        elif self.kind == "batch_seeded":
            noise = tf.random.stateless_normal(
                [x.shape[-1]], seed=tf.stack([shape[0], 0])
            )
        else:
            raise ValueError(self.kind)
        return x * (1.0 + 0.5 * noise)


def fixed_seed_model(kind, seed=0, always=False):
    inputs = keras.Input(SHAPE)
    h = keras.layers.Flatten()(inputs)
    h = FixedSeedNoise(kind, always=always)(h)
    return keras.Model(inputs, _head(h, seed=seed), name=kind)


@pytest.mark.parametrize(
    "kind, mode",
    [
        ("keras_dropout", "eager"),
        ("keras_normal", "eager"),
        ("stateless_normal", "eager"),
        ("row_table", "eager"),
        ("batch_seeded", "eager"),
        ("keras_dropout", "function"),
        ("stateless_normal", "function"),
    ],
)
def test_fixed_seed_draws_match_tape_jacobians(directions, kind, mode):
    # No seed state to replay, yet a pass on tiled copies of the batch
    # draws other values: each pass must see the step's batch layout.
    model = fixed_seed_model(kind)
    x = tf.constant(tiny.images(4, SHAPE))
    size = float(np.prod(SHAPE))
    estimators = ESTIMATORS if mode == "eager" else DIFFERENCE_ESTIMATORS
    for estimator in estimators:
        robust = kj.JacobianRegularizedModel(
            model, target="all", estimator=estimator, num_projections=2
        )

        def step(robust=robust):
            got = robust.jacobian_penalty(x, training=True)[0]
            jv = _projected(model, x, True, directions[-1])
            return got, size * tf.reduce_mean(tf.reduce_sum(jv**2, -1), 0)

        if mode == "function":
            step = tf.function(step)
        got, expected = step()
        # Unfixed, the differences were 1e3 to 1e7 times too large.
        np.testing.assert_allclose(got, expected, rtol=RTOL[estimator])


def test_fixed_seed_draws_in_distiller_and_fit(directions):
    # Student in training mode; the teacher draws in inference mode too.
    student = fixed_seed_model("keras_dropout", seed=5)
    teacher = fixed_seed_model("stateless_normal", seed=10, always=True)
    x = tf.constant(tiny.images(4, SHAPE))
    size = float(np.prod(SHAPE))
    for estimator in ESTIMATORS:
        distiller = _distiller(teacher, student, estimator)
        got = distiller._step_losses(x, None, None, True)[1][1][1]
        t = _projected(teacher, x, False, directions[-1])
        s = _projected(student, x, True, directions[-1])
        expected = size * tf.reduce_mean(tf.reduce_sum((t - s) ** 2, -1))
        np.testing.assert_allclose(got, expected, rtol=RTOL[estimator])
    # The step traced by `fit`, with the directions of an eager call.
    robust = kj.JacobianRegularizedModel(
        student, target="all", estimator="forward_difference"
    )
    start = robust.seed_generator.state.numpy()
    penalty = robust.jacobian_penalty(x, training=True)[0]
    jv = _projected(student, x, True, directions[-1])
    expected = size * tf.reduce_sum(jv**2, -1)[0]
    # One-sided differences: error O(eps) relative to the largest value.
    tolerance = RTOL["forward_difference"] * float(tf.reduce_max(expected))
    np.testing.assert_allclose(penalty, expected, atol=tolerance)
    robust.seed_generator.state.assign(start)
    robust.compile(optimizer=keras.optimizers.SGD(0.01), loss=tiny.sparse_ce())
    logs = robust.fit(
        x, np.arange(4) % CLASSES, batch_size=4, verbose=0, shuffle=False
    )
    # Graph and eager round-off differ, amplified by 1 / eps.
    np.testing.assert_allclose(
        logs.history["jacobian_penalty"][0],
        float(tf.reduce_mean(expected)),
        rtol=2e-3,
    )


def test_batch_independent_networks_keep_one_tiled_pass():
    # BatchNorm statistics of tiled copies are the batch's: no dependence
    # on the layout, one pass on R copies. Fixed-seed dropout is off in
    # inference mode.
    for model, training in (
        (tiny.conv_net(SHAPE, CLASSES, batch_norm=True), True),
        (fixed_seed_model("keras_dropout"), False),
    ):
        state = randomness.replayed_states(
            model, SHAPE, "float32", "model", training, "forward_difference"
        )
        assert state.record() is None
    state = randomness.replayed_states(
        model, SHAPE, "float32", "model", True, "forward_difference"
    )
    assert state.per_batch and not state.states


def test_mobilenet_v3_student_trains_with_input_directions():
    # MobileNetV3 ends with Dropout: replayed for every input-direction
    # estimator. Its ReLUs are kinks: the difference estimators refuse it.
    start = time.perf_counter()
    student = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3),
        alpha=0.75,
        minimalistic=True,
        weights=None,
        classes=10,
        include_preprocessing=False,
        classifier_activation=None,
    )
    initial = student.get_weights()
    teacher = tiny.conv_net((32, 32, 3), 10, seed=0, name="t")
    term = kj.JacobianMatching("all", estimator="forward_difference")
    with pytest.raises(ValueError, match="kinks.*ReLU.*'vjp'"):
        kj.Distiller(teacher, student, [term])
    term = kj.JacobianMatching("all", estimator="jvp")
    distiller = kj.Distiller(
        teacher, student, [term], supervised_loss_weight=1.0
    )
    # Eagerly: tracing this step takes 30 s or more on 2 cores.
    distiller.compile(optimizer="sgd", loss=tiny.sparse_ce(), run_eagerly=True)
    x = tiny.images(4, (32, 32, 3))
    y = np.arange(4)
    logs = distiller.fit(x, y, batch_size=4, verbose=0).history
    assert np.isfinite(logs["loss"][0])
    moved = [
        np.max(np.abs(w - w0)) for w, w0 in zip(student.get_weights(), initial)
    ]
    assert np.all(np.isfinite(moved)) and max(moved) > 0
    print(f"MobileNetV3Small step: {time.perf_counter() - start:.1f} s")


def test_forward_mode_refuses_even_the_exact_translation():
    # TensorFlow's forward mode fails to trace ImageProjectiveTransformV3
    # in a tf.function ("Could not generate a generic TraceType"); the
    # reverse-mode "vjp" is right there.
    layer = keras.layers.RandomTranslation(0.3, 0.3, fill_mode="constant")
    inputs = keras.Input(SHAPE)
    model = keras.Model(inputs, _head(layer(inputs), linear=True))
    plain = keras.Input(SHAPE)
    teacher = keras.Model(plain, _head(plain, seed=10))
    with pytest.raises(ValueError, match="estimator='vjp'"):
        kj.JacobianRegularizedModel(model, target="all", estimator="jvp")
    with pytest.raises(ValueError, match="forward mode cannot trace"):
        kj.Distiller(
            teacher, model, [kj.JacobianMatching("all", estimator="jvp")]
        )
    kj.JacobianRegularizedModel(model, target="all", estimator="vjp")


def _bn_student(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE)
    h = keras.layers.Conv2D(3, 3, activation="tanh")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


@pytest.mark.parametrize("estimator", ["jvp", "finite_difference"])
def test_extra_passes_leave_moving_statistics_alone(estimator):
    # Each direction's pass (and each noisy copy) used to update
    # BatchNorm's moving statistics again: R + 1 updates per step.
    x = tiny.images(4, SHAPE)
    y = np.arange(4) % 3
    plain = keras.Input(SHAPE)
    teacher = keras.Model(plain, _head(plain, seed=10))
    moved = {}
    for name, terms in {
        "supervised only": [],
        estimator: [
            kj.JacobianMatching("all", estimator=estimator, num_projections=4),
            kj.NoiseDistillation(0.1, num_samples=2),
        ],
    }.items():
        student = _bn_student(0)
        distiller = kj.Distiller(
            teacher, student, terms, supervised_loss_weight=1.0
        )
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.0),
            loss="sparse_categorical_crossentropy",
        )
        distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)
        moved[name] = [v.numpy() for v in student.non_trainable_variables]
    for a, b in zip(moved["supervised only"], moved[estimator]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # And the statistics did move (one update).
    assert np.abs(moved[estimator][0]).max() > 0
