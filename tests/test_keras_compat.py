"""Keras' names keep Keras' meanings; the library's own behaviours have
names of their own (`keras.distillation` in Keras 3.15 is the reference).

Each expected value is computed in NumPy from the networks' outputs.
"""

import warnings

import keras
import numpy as np
import pytest

import keras_jacobian as kj
from tests import tiny


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def kd(t, s, temperature):
    p, q = softmax(t / temperature), softmax(s / temperature)
    return temperature**2 * np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def sparse_ce(y, logits):
    return -np.log(softmax(logits)[np.arange(len(y)), y])


def data(n=8):
    return tiny.images(n), np.arange(n) % 5


def evaluate(distiller, x, y=None):
    distiller.compile(loss=None if y is None else tiny.sparse_ce())
    return distiller.evaluate(
        x, y, batch_size=len(x), verbose=0, return_dict=True
    )


# The weights: Keras' convex mix, or an independent supervised weight.


@pytest.mark.parametrize("w", [None, 0.25, 1.0])
def test_student_loss_weight_is_keras_convex_mix(w):
    teacher, student = tiny.conv_net(seed=0), tiny.conv_net(seed=10)
    terms = [
        kj.LogitsDistillation(temperature=2.0, loss="kd"),
        kj.LogitsDistillation(loss="squared_logits"),
    ]
    kwargs = {} if w is None else {"student_loss_weight": w}
    distiller = kj.Distiller(teacher, student, terms, [2.0, 0.5], **kwargs)
    x, y = data()
    logs = evaluate(distiller, x, y)
    t, s = teacher.predict(x, verbose=0), student.predict(x, verbose=0)
    ce = np.mean(sparse_ce(y, s))
    distillation = 2.0 * np.mean(kd(t, s, 2.0)) + 0.5 * np.mean(
        np.sum((t - s) ** 2, axis=-1)
    )
    mix = 0.5 if w is None else w
    if mix == 1.0:
        # As in Keras, the terms are skipped (and log 0) at w = 1.
        distillation = 0.0
    np.testing.assert_allclose(logs["student_loss"], ce, rtol=1e-5)
    np.testing.assert_allclose(
        logs["distillation_loss"], distillation, rtol=1e-5
    )
    np.testing.assert_allclose(
        logs["loss"], mix * ce + (1 - mix) * distillation, rtol=1e-5
    )
    assert distiller.student_loss_weight == mix
    assert distiller.supervised_loss_weight is None


def test_supervised_loss_weight_is_independent():
    teacher, student = tiny.conv_net(seed=0), tiny.conv_net(seed=10)
    distiller = kj.Distiller(
        teacher,
        student,
        [kj.LogitsDistillation(loss="squared_logits")],
        [0.5],
        supervised_loss_weight=3.0,
    )
    x, y = data()
    logs = evaluate(distiller, x, y)
    t, s = teacher.predict(x, verbose=0), student.predict(x, verbose=0)
    expected = 3.0 * np.mean(sparse_ce(y, s)) + 0.5 * np.mean(
        np.sum((t - s) ** 2, axis=-1)
    )
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)
    assert distiller.student_loss_weight is None
    assert distiller.supervised_loss_weight == 3.0


def test_weight_arguments_are_checked():
    net = tiny.conv_net
    with pytest.raises(ValueError, match="between 0.0 and 1.0.*supervised"):
        kj.Distiller(
            net(), net(), kj.LogitsDistillation(), student_loss_weight=2.0
        )
    with pytest.raises(ValueError, match="not both"):
        kj.Distiller(
            net(),
            net(),
            kj.LogitsDistillation(),
            student_loss_weight=0.5,
            supervised_loss_weight=1.0,
        )


def test_weight_attributes_read_the_numbers_given_and_the_variables():
    distiller = kj.Distiller(
        tiny.conv_net(),
        tiny.conv_net(seed=1),
        [kj.LogitsDistillation(), kj.LogitsDistillation()],
        [0.7, 0.3],
        student_loss_weight=0.7,
    )
    # The numbers given, not their float32 roundings, as in Keras.
    assert distiller.student_loss_weight == 0.7
    assert distiller.distillation_loss_weights == [0.7, 0.3]
    # A schedule (or any assignment) shows through.
    distiller.term_weights[1].assign(0.25)
    assert distiller.distillation_loss_weights == [0.7, 0.25]
    distiller.student_loss_weight = 0.2
    assert distiller.student_loss_weight == 0.2
    np.testing.assert_allclose(
        distiller.student_loss_weight_variable.numpy(), 0.2
    )
    with pytest.raises(ValueError, match="supervised_loss_weight"):
        distiller.supervised_loss_weight = 1.0


def test_config_of_0_1_keeps_its_independent_weight():
    distiller = kj.Distiller(
        tiny.conv_net(),
        tiny.conv_net(seed=1),
        [kj.LogitsDistillation()],
        supervised_loss_weight=2.0,
    )
    config = distiller.get_config()
    assert (
        config["student_loss_weight"],
        config["supervised_loss_weight"],
    ) == (None, 2.0)
    # 0.1.0 wrote `student_loss_weight` only, with the independent meaning.
    del config["supervised_loss_weight"]
    config["student_loss_weight"] = 2.0
    restored = kj.Distiller.from_config(config)
    assert restored.supervised_loss_weight == 2.0
    assert restored.student_loss_weight is None


def test_config_of_keras_distiller_keeps_the_convex_mix():
    keras_distiller = keras.distillation.Distiller(
        tiny.conv_net(),
        tiny.conv_net(seed=1),
        [
            keras.distillation.LogitsDistillation(
                temperature=2.0, loss=keras.losses.KLDivergence()
            )
        ],
        student_loss_weight=0.7,
    )
    restored = kj.Distiller.from_config(keras_distiller.get_config())
    assert restored.student_loss_weight == 0.7
    assert restored.supervised_loss_weight is None
    # The same loss as Keras' own Distiller computes.
    x, y = tiny.images(8), np.arange(8) % 5
    logs = []
    for distiller in (keras_distiller, restored):
        distiller.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        logs.append(distiller.evaluate(x, y, return_dict=True, verbose=0))
    expected = (
        0.7 * logs[0]["student_loss"] + 0.3 * logs[0]["distillation_loss"]
    )
    np.testing.assert_allclose(logs[0]["loss"], expected, rtol=1e-6)
    np.testing.assert_allclose(logs[1]["loss"], logs[0]["loss"], rtol=1e-5)


# The terms: Keras' argument order, defaults and loss meanings.


def test_terms_take_keras_argument_order_and_defaults():
    logits = kj.LogitsDistillation(2.0)
    assert (logits.temperature, logits.loss) == (2.0, "kl_divergence")
    assert kj.LogitsDistillation().temperature == 3.0
    feature = kj.FeatureDistillation("mae", "a", "b")
    assert (
        feature.loss,
        feature.teacher_layer_name,
        feature.student_layer_name,
    ) == ("mae", "a", "b")


def test_keras_default_logits_distillation_is_not_kd():
    # Keras' default: KL between logits / T taken as probabilities.
    t = np.array([[0.2, 0.5, 0.3]], "float32")
    s = np.array([[0.1, 0.6, 0.3]], "float32")
    term = kj.LogitsDistillation()
    a, b = np.clip(t / 3.0, 1e-7, 1), np.clip(s / 3.0, 1e-7, 1)
    expected = np.sum(a * np.log(a / b))
    np.testing.assert_allclose(float(term.compute_loss(t, s)), expected, 1e-4)
    assert not np.isclose(expected, kd(t, s, 3.0)[0], rtol=0.1)
    np.testing.assert_allclose(
        float(kj.LogitsDistillation(loss="kd").compute_loss(t, s)),
        kd(t, s, 3.0)[0],
        atol=1e-6,
    )


def test_former_loss_names():
    with pytest.warns(DeprecationWarning, match="loss='kd'"):
        term = kj.LogitsDistillation(loss="kl")
    assert term.loss == "kd"
    # "mse" is Keras' mean squared error when given...
    assert kj.LogitsDistillation(loss="mse").loss == "mse"
    # ...but in a configuration saved by 0.1.0 it was the squared logits.
    old = kj.LogitsDistillation.from_config(
        {"name": "logits_distillation", "loss": "mse", "temperature": 4.0}
    )
    assert old.loss == "squared_logits"
    # New configurations never store a bare Keras name.
    for loss in ("mse", "kl_divergence", keras.losses.KLDivergence()):
        config = kj.LogitsDistillation(loss=loss).get_config()
        assert not isinstance(config["loss"], str)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            restored = kj.LogitsDistillation.from_config(config)
        assert type(restored.loss_fn) is type(
            kj.LogitsDistillation(loss=loss).loss_fn
        )


def test_terms_validate_outputs_like_keras():
    t = np.zeros((2, 3), "float32")
    for term in (kj.LogitsDistillation(), kj.JacobianMatching()):
        term.validate_outputs(t, t)
        with pytest.raises(ValueError):
            term.validate_outputs(t, {"output": t})


# A DistillationLoss of one's own.


@keras.saving.register_keras_serializable(package="keras_jacobian_tests")
class MaxLogitGap(keras.distillation.DistillationLoss):
    """The mean absolute difference of the largest logits."""

    def __init__(self, teacher_layer_name=None, student_layer_name=None):
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.checked = []

    def validate_model_compatibility(self, teacher, student):
        self.checked.append((teacher.name, student.name))

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        gap = keras.ops.max(teacher_outputs, -1) - keras.ops.max(
            student_outputs, -1
        )
        return keras.ops.mean(keras.ops.abs(gap))

    def get_config(self):
        return {
            "teacher_layer_name": self.teacher_layer_name,
            "student_layer_name": self.student_layer_name,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def test_custom_keras_distillation_loss_is_a_term():
    teacher = tiny.conv_net(seed=0, name="t")
    student = tiny.conv_net(seed=10, name="s")
    loss = MaxLogitGap()
    distiller = kj.Distiller(teacher, student, [loss])
    assert loss.checked == [("t", "s")]
    x, y = data()
    # Keras ignores sample weights; so does a loss of one value per batch.
    weights = np.linspace(0.0, 2.0, len(x))
    distiller.compile(loss=tiny.sparse_ce())
    logs = distiller.evaluate(
        x, y, sample_weight=weights, verbose=0, return_dict=True
    )
    t, s = teacher.predict(x, verbose=0), student.predict(x, verbose=0)
    expected = np.mean(np.abs(t.max(-1) - s.max(-1)))
    np.testing.assert_allclose(logs["max_logit_gap_loss"], expected, 1e-5)
    # A named layer is read from the same forward pass.
    layered = kj.Distiller(teacher, student, [MaxLogitGap("conv2", "conv2")])
    logs = evaluate(layered, x)
    features = [
        keras.Model(m.inputs, m.get_layer("conv2").output).predict(x, verbose=0)
        for m in (teacher, student)
    ]
    expected = np.mean(np.abs(features[0].max(-1) - features[1].max(-1)))
    np.testing.assert_allclose(logs["max_logit_gap_loss"], expected, 1e-5)
    # It trains the student, and the distiller saves and loads.
    distiller.fit(x, y, epochs=1, batch_size=4, verbose=0)
    config = distiller.get_config()
    restored = kj.Distiller.from_config(config)
    assert isinstance(restored.distillation_losses[0].keras_loss, MaxLogitGap)


# Unbuilt networks are built on the first batch, as in Keras.


class Subclassed(keras.Model):
    def __init__(self, seed, **kwargs):
        super().__init__(**kwargs)
        init = keras.initializers.GlorotUniform(seed)
        self.hidden = keras.layers.Dense(
            8, activation="tanh", kernel_initializer=init
        )
        self.out = keras.layers.Dense(5, kernel_initializer=init)

    def call(self, x, training=False):
        return self.out(self.hidden(x))


def test_unbuilt_subclassed_networks_are_built_on_the_first_batch():
    teacher, student = Subclassed(0), Subclassed(1)
    distiller = kj.Distiller(
        teacher,
        student,
        [kj.LogitsDistillation(loss="kd"), kj.JacobianMatching()],
    )
    assert not teacher.trainable and not distiller.built
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    y = np.arange(8) % 5
    distiller.compile(optimizer="sgd", loss=tiny.sparse_ce())
    distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert distiller.built and teacher.built and student.built
    assert distiller.student_input_shape == (6,)
    logs = distiller.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    t, s = teacher.predict(x, verbose=0), student.predict(x, verbose=0)
    np.testing.assert_allclose(
        logs["logits_distillation_loss"], np.mean(kd(t, s, 3.0)), rtol=1e-5
    )


def test_unbuilt_sequential_with_named_layers_builds_on_call():
    def sequential(prefix):
        return keras.Sequential(
            [
                keras.layers.Dense(4, activation="tanh", name=f"{prefix}1"),
                keras.layers.Dense(5, name=f"{prefix}2"),
            ]
        )

    teacher, student = sequential("t"), sequential("s")
    distiller = kj.Distiller(
        teacher, student, kj.FeatureDistillation("mse", "t1", "s1")
    )
    x = np.ones((2, 3), "float32")
    assert distiller(x).shape == (2, 5)
    assert distiller.teacher_input_shape == (3,)
    assert len(distiller._teacher_feature_extractor.outputs) == 2


def test_construction_checks_run_after_the_build():
    # A softmax output is refused for a term that reads logits: on the
    # first batch of an unbuilt network, with the usual message.
    class Softmax(Subclassed):
        def call(self, x, training=False):
            return keras.ops.softmax(super().call(x))

    teacher = keras.Sequential([keras.layers.Dense(5, activation="softmax")])
    distiller = kj.Distiller(
        teacher, Softmax(1), kj.LogitsDistillation(loss="kd")
    )
    with pytest.raises(ValueError, match="softmax"):
        distiller(np.ones((2, 3), "float32"))


def test_unbuilt_networks_with_a_generator_are_refused_with_the_fix():
    distiller = kj.Distiller(
        Subclassed(0), Subclassed(1), kj.LogitsDistillation(loss="kd")
    )
    distiller.compile(optimizer="sgd")

    def batches():
        while True:
            yield (np.ones((4, 6), "float32"),)

    with pytest.raises(ValueError, match="call each once on a batch"):
        distiller.fit(batches(), steps_per_epoch=1, epochs=1, verbose=0)


def test_unbuilt_networks_build_on_a_dataset_under_mirrored_strategy():
    import tensorflow as tf

    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((x, np.arange(8) % 5))
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        teacher, student = Subclassed(0), Subclassed(1)
        distiller = kj.Distiller(
            teacher, student, kj.LogitsDistillation(loss="kd")
        )
        distiller.compile(optimizer="sgd", loss=tiny.sparse_ce())
    distiller.fit(dataset.batch(4), epochs=1, verbose=0)
    assert distiller.built
    # Built inside the strategy's scope: mirrored variables.
    assert isinstance(
        student.trainable_variables[0].value, tf.distribute.DistributedValues
    )


# Keras' own classes, run on the same networks and data, are the reference.


def keras_and_ours(make_terms, x, y, student_loss_weight=0.5):
    """Logs of `evaluate` for a Keras Distiller and ours, same networks."""
    logs = []
    for lib in (keras.distillation, kj):
        teacher = tiny.conv_net(seed=0, name="t")
        student = tiny.conv_net(seed=10, name="s")
        distiller = lib.Distiller(
            teacher,
            student,
            make_terms(lib),
            student_loss_weight=student_loss_weight,
        )
        distiller.compile(optimizer="sgd", loss=tiny.sparse_ce())
        logs.append(
            distiller.evaluate(
                x, y, batch_size=len(x), verbose=0, return_dict=True
            )
        )
    return logs


def assert_same_logs(keras_logs, our_logs):
    for key in ("student_loss", "distillation_loss", "total_loss", "loss"):
        np.testing.assert_allclose(
            our_logs[key], keras_logs[key], rtol=1e-5, err_msg=key
        )


class TenTimesLogits(kj.LogitsDistillation):
    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        return 10.0 * super().compute_loss(teacher_outputs, student_outputs)


class KerasTenTimesLogits(keras.distillation.LogitsDistillation):
    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        return 10.0 * super().compute_loss(teacher_outputs, student_outputs)


def abs_gap(teacher_outputs, student_outputs):
    return 2.0 * keras.ops.mean(
        keras.ops.abs(teacher_outputs - student_outputs)
    )


class AbsFeatures(kj.FeatureDistillation):
    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        return abs_gap(teacher_outputs, student_outputs)


class KerasAbsFeatures(keras.distillation.FeatureDistillation):
    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        return abs_gap(teacher_outputs, student_outputs)


def test_compute_loss_of_a_term_subclass_is_run_as_in_keras():
    x, y = data()
    mine = {
        kj: (TenTimesLogits, AbsFeatures),
        keras.distillation: (KerasTenTimesLogits, KerasAbsFeatures),
    }

    def terms(lib):
        logits, features = mine[lib]
        return [
            logits(temperature=2.0),
            features(teacher_layer_name="conv2", student_layer_name="conv2"),
        ]

    keras_logs, our_logs = keras_and_ours(terms, x, y)
    assert_same_logs(keras_logs, our_logs)
    # The overrides are what is computed: 10x the default term, and the
    # mean absolute gap of the features (NumPy).
    plain = keras_and_ours(
        lambda lib: [lib.LogitsDistillation(temperature=2.0)], x, y
    )[1]
    np.testing.assert_allclose(
        our_logs["ten_times_logits_loss"],
        10 * plain["logits_distillation_loss"],
        rtol=1e-5,
    )
    teacher = tiny.conv_net(seed=0, name="t")
    student = tiny.conv_net(seed=10, name="s")
    t, s = (
        keras.Model(m.inputs, m.get_layer("conv2").output).predict(x, verbose=0)
        for m in (teacher, student)
    )
    np.testing.assert_allclose(
        our_logs["abs_features_loss"], 2 * np.mean(np.abs(t - s)), rtol=1e-5
    )


@pytest.mark.parametrize(
    "reduction", ["sum_over_batch_size", "sum", "mean", None, "none"]
)
def test_reduction_of_a_keras_loss_is_keras(reduction):
    x, y = data()

    def terms(lib):
        return [
            lib.LogitsDistillation(
                temperature=2.0,
                loss=keras.losses.MeanSquaredError(reduction=reduction),
            ),
            lib.FeatureDistillation(
                loss=keras.losses.MeanAbsoluteError(reduction=reduction),
                teacher_layer_name="conv2",
                student_layer_name="conv2",
            ),
        ]

    keras_logs, our_logs = keras_and_ours(terms, x, y)
    assert_same_logs(keras_logs, our_logs)
    if reduction == "sum":
        # The sum over the batch (NumPy), not the mean.
        teacher = tiny.conv_net(seed=0, name="t")
        student = tiny.conv_net(seed=10, name="s")
        t, s = teacher.predict(x, verbose=0), student.predict(x, verbose=0)
        expected = np.sum(np.mean(((t - s) / 2.0) ** 2, axis=-1))
        np.testing.assert_allclose(
            our_logs["logits_distillation_loss"], expected, rtol=1e-5
        )


def test_summed_kl_divergence_instance_is_keras():
    x, y = data()
    keras_logs, our_logs = keras_and_ours(
        lambda lib: [
            lib.LogitsDistillation(
                temperature=2.0, loss=keras.losses.KLDivergence(reduction="sum")
            )
        ],
        x,
        y,
    )
    assert_same_logs(keras_logs, our_logs)
    teacher = tiny.conv_net(seed=0, name="t")
    student = tiny.conv_net(seed=10, name="s")
    t, s = teacher.predict(x, verbose=0), student.predict(x, verbose=0)
    np.testing.assert_allclose(
        our_logs["logits_distillation_loss"], np.sum(kd(t, s, 2.0)), rtol=1e-4
    )


def squared_gap(teacher_outputs, student_outputs):
    return keras.ops.square(teacher_outputs - student_outputs)


class UnregisteredGap(keras.losses.Loss):
    def call(self, y_true, y_pred):
        return keras.ops.mean(keras.ops.abs(y_true - y_pred), axis=-1)


@pytest.mark.parametrize(
    "make_loss",
    [
        lambda: keras.losses.Huber(delta=0.3),
        lambda: squared_gap,
        UnregisteredGap,
    ],
    ids=["huber_delta", "function", "unregistered_loss"],
)
def test_loss_objects_are_kept_as_given(make_loss):
    x, y = data()
    keras_logs, our_logs = keras_and_ours(
        lambda lib: [
            lib.LogitsDistillation(temperature=2.0, loss=make_loss()),
            lib.FeatureDistillation(
                loss=make_loss(),
                teacher_layer_name="conv2",
                student_layer_name="conv2",
            ),
        ],
        x,
        y,
    )
    assert_same_logs(keras_logs, our_logs)


def test_huber_delta_is_saved_and_unloadable_losses_fail_at_save():
    teacher = tiny.conv_net(seed=0, name="t")
    student = tiny.conv_net(seed=10, name="s")
    huber = kj.Distiller(
        teacher,
        student,
        [kj.LogitsDistillation(loss=keras.losses.Huber(delta=0.3))],
    )
    restored = kj.Distiller.from_config(huber.get_config())
    assert restored.distillation_losses[0].loss_fn._fn_kwargs == {"delta": 0.3}
    for loss in (squared_gap, UnregisteredGap()):
        distiller = kj.Distiller(
            teacher, student, [kj.FeatureDistillation(loss=loss)]
        )
        with pytest.raises(ValueError, match="cannot be saved.*Received: loss"):
            distiller.get_config()


def test_no_terms_trains_the_student_alone_as_keras():
    x, y = data()
    keras_logs, our_logs = keras_and_ours(lambda lib: [], x, y)
    assert_same_logs(keras_logs, our_logs)
    np.testing.assert_allclose(
        our_logs["loss"],
        0.5
        * np.mean(
            sparse_ce(y, tiny.conv_net(seed=10, name="s").predict(x, verbose=0))
        ),
        rtol=1e-5,
    )


def test_terms_cannot_be_added_after_construction():
    distiller = kj.Distiller(
        tiny.conv_net(seed=0, name="t"),
        tiny.conv_net(seed=10, name="s"),
        [kj.LogitsDistillation()],
    )
    assert isinstance(distiller.distillation_losses, list)
    for change in (
        lambda terms: terms.append(kj.LogitsDistillation(name="more")),
        lambda terms: terms.extend([kj.LogitsDistillation(name="more")]),
        lambda terms: terms.__setitem__(0, kj.LogitsDistillation()),
    ):
        with pytest.raises(TypeError, match="fixed when the Distiller"):
            change(distiller.distillation_losses)
    assert len(distiller.distillation_losses) == 1


# Keras' Distiller API: compute_loss, the weights' list, logs.


def keras_pair(lib=None):
    """A float32 teacher and student MLP (the same for either library)."""
    del lib
    teacher = tiny.mlp(6, seed=0, dtype="float32")
    return teacher, tiny.mlp(6, seed=20, dtype="float32")


def vectors(n=8):
    rng = np.random.default_rng(3)
    return rng.normal(size=(n, 6)).astype("float32"), np.arange(n) % 4


def doubled(base):
    class Doubled(base):
        def compute_loss(
            self,
            x=None,
            y=None,
            y_pred=None,
            sample_weight=None,
            training=True,
        ):
            total = super().compute_loss(
                x=x,
                y=y,
                y_pred=y_pred,
                sample_weight=sample_weight,
                training=training,
            )
            return 2.0 * total + 0.0 * keras.ops.sum(y_pred)

    return Doubled


def one_sgd_step(distiller, x, y, learning_rate=0.1):
    distiller.compile(
        optimizer=keras.optimizers.SGD(learning_rate), loss=tiny.sparse_ce()
    )
    distiller.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    return [w.numpy() for w in distiller.student.trainable_weights]


def test_compute_loss_override_trains_as_in_keras():
    x, y = vectors()
    results = {}
    for lib in (keras.distillation, kj):
        teacher, student = keras_pair(lib)
        distiller = doubled(lib.Distiller)(
            teacher, student, lib.LogitsDistillation(temperature=3.0)
        )
        distiller.compile(loss=tiny.sparse_ce())
        logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
        results[lib] = logs, one_sgd_step(distiller, x, y)
    (keras_logs, keras_weights), (logs, weights) = results.values()
    np.testing.assert_allclose(logs["loss"], 2 * logs["total_loss"])
    for key in ("loss", "total_loss", "student_loss", "distillation_loss"):
        np.testing.assert_allclose(logs[key], keras_logs[key], rtol=1e-5)
    for ours, theirs in zip(weights, keras_weights):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_compute_loss_override_keeps_the_jacobian_terms():
    # SGD is linear in the loss: twice the loss at rate r moves the
    # weights as the plain loss at rate 2r.
    x, y = vectors()
    moved = []
    for cls, rate in ((doubled(kj.Distiller), 0.05), (kj.Distiller, 0.1)):
        teacher, student = keras_pair(kj)
        distiller = cls(
            teacher,
            student,
            [kj.JacobianMatching(target="teacher_top1")],
            supervised_loss_weight=1.0,
        )
        moved.append(one_sgd_step(distiller, x, y, rate))
    start = keras_pair(kj)[1].get_weights()
    for a, b, w0 in zip(*moved, start):
        assert not np.allclose(a, w0)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_compute_loss_returns_the_total_as_in_keras():
    x, y = vectors()
    totals = []
    for lib in (keras.distillation, kj):
        teacher, student = keras_pair(lib)
        distiller = lib.Distiller(
            teacher, student, lib.LogitsDistillation(temperature=3.0)
        )
        distiller.compile(loss=tiny.sparse_ce())
        logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
        totals.append(
            float(distiller.compute_loss(x=x, y=y, y_pred=student(x)))
        )
    np.testing.assert_allclose(totals[1], totals[0], rtol=1e-5)
    np.testing.assert_allclose(totals[1], logs["total_loss"], rtol=1e-5)


def test_setting_one_distillation_loss_weight_takes_effect_as_in_keras():
    x, y = vectors()
    results = []
    for lib in (keras.distillation, kj):
        teacher, student = keras_pair(lib)
        terms = [
            lib.LogitsDistillation(temperature=3.0),
            lib.FeatureDistillation(loss="mse"),
        ]
        distiller = lib.Distiller(teacher, student, terms, [1.0, 1.0])
        distiller.distillation_loss_weights[0] = 0.1
        distiller.compile(loss=tiny.sparse_ce())
        results.append(distiller.evaluate(x, y, verbose=0, return_dict=True))
        assert distiller.distillation_loss_weights == [0.1, 1.0]
    keras_logs, logs = results
    for key in ("loss", "distillation_loss", "total_loss"):
        np.testing.assert_allclose(logs[key], keras_logs[key], rtol=1e-5)
    np.testing.assert_allclose(
        logs["distillation_loss"],
        0.1 * logs["logits_distillation_loss"]
        + logs["feature_distillation_loss"],
        rtol=1e-5,
    )
    np.testing.assert_allclose(distiller.term_weights[0].numpy(), 0.1)
    with pytest.raises(TypeError, match="one weight per term"):
        distiller.distillation_loss_weights.append(1.0)
    with pytest.raises(ValueError, match="Received"):
        distiller.distillation_loss_weights[1] = -1.0


def test_regularization_loss_is_logged_and_completes_the_total():
    x, y = vectors()
    teacher = keras_pair()[0]
    inputs = keras.Input((6,))
    dense = keras.layers.Dense(
        4, kernel_regularizer=keras.regularizers.L2(0.3), name="logits"
    )
    student = keras.Model(inputs, dense(inputs))
    kernel = dense.kernel
    distiller = kj.Distiller(
        teacher, student, kj.LogitsDistillation(temperature=3.0), [0.5]
    )
    distiller.student_loss_weight = 0.25
    logs = evaluate(distiller, x, y)
    penalty = 0.3 * np.sum(kernel.numpy() ** 2)
    np.testing.assert_allclose(logs["regularization_loss"], penalty, 1e-5)
    mix = 0.25 * logs["student_loss"] + 0.75 * logs["distillation_loss"]
    np.testing.assert_allclose(logs["total_loss"], mix + penalty, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], logs["total_loss"], rtol=1e-6)
    plain = kj.Distiller(
        teacher, keras_pair()[1], kj.LogitsDistillation(temperature=3.0)
    )
    assert "regularization_loss" not in evaluate(plain, x, y)


def fit_logs(distiller, x, y, **kwargs):
    """The logs of one epoch at the initial weights (learning rate 0)."""
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0), loss=tiny.sparse_ce()
    )
    history = distiller.fit(x, y, batch_size=len(x), verbose=0, **kwargs)
    return {k: v[-1] for k, v in history.history.items()}


def test_class_weight_weights_the_student_loss_and_terms():
    # Keras' Distiller ignores `class_weight`; here it is a sample weight.
    x, y = vectors()
    class_weight = {0: 1.0, 1: 5.0, 2: 1.0, 3: 0.5}
    weights = np.array([class_weight[c] for c in y], "float32")
    keras_logs = [
        fit_logs(
            keras.distillation.Distiller(
                *keras_pair(), keras.distillation.LogitsDistillation()
            ),
            x,
            y,
            class_weight=given,
        )
        for given in (None, class_weight)
    ]
    assert keras_logs[0] == pytest.approx(keras_logs[1])
    teacher, student = keras_pair()
    distiller = kj.Distiller(
        teacher, student, kj.LogitsDistillation(temperature=2.0, loss="kd")
    )
    logs = fit_logs(distiller, x, y, class_weight=class_weight)
    t, s = teacher.predict(x, verbose=0), student.predict(x, verbose=0)
    ce, term = sparse_ce(y, s), kd(t, s, 2.0)
    for key, values in (("student_loss", ce), ("distillation_loss", term)):
        expected = np.sum(weights * values) / len(y)
        np.testing.assert_allclose(logs[key], expected, rtol=1e-4)


def token_net(prefix, seed):
    """Logits per position from `{"token_ids", "padding_mask"}`."""
    ids = keras.Input((5,), dtype="int32", name="token_ids")
    mask = keras.Input((5,), dtype="int32", name="padding_mask")
    h = keras.layers.Embedding(
        20,
        6,
        embeddings_initializer=keras.initializers.RandomNormal(seed=seed),
    )(ids)
    h = keras.layers.Dense(
        8,
        activation="tanh",
        kernel_initializer=keras.initializers.GlorotUniform(seed),
        name=f"{prefix}_hidden",
    )(h)
    logits = keras.layers.Dense(
        20, kernel_initializer=keras.initializers.GlorotUniform(seed + 1)
    )(h)
    # Masked after the last layer: the output is an operation, not a layer.
    logits = logits * keras.ops.expand_dims(keras.ops.cast(mask, "float32"), -1)
    return keras.Model({"token_ids": ids, "padding_mask": mask}, logits)


def test_several_inputs_train_as_in_keras_with_output_terms():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 20, size=(8, 5)).astype("int32")
    mask = (rng.uniform(size=(8, 5)) < 0.8).astype("int32")
    x, y = {"token_ids": ids, "padding_mask": mask}, (ids + 1) % 20
    results = []
    for lib in (keras.distillation, kj):
        terms = [
            lib.LogitsDistillation(temperature=2.0),
            lib.FeatureDistillation(
                loss="mse",
                teacher_layer_name="t_hidden",
                student_layer_name="s_hidden",
            ),
        ]
        distiller = lib.Distiller(
            token_net("t", 0), token_net("s", 10), terms, [1.0, 0.5]
        )
        distiller.compile(loss="sparse_categorical_crossentropy")
        logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
        results.append((logs, one_sgd_step(distiller, x, y)))
    (keras_logs, keras_weights), (logs, weights) = results
    for key in keras_logs:
        np.testing.assert_allclose(logs[key], keras_logs[key], rtol=1e-5)
    for ours, theirs in zip(weights, keras_weights):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_several_inputs_are_refused_for_input_jacobian_terms():
    with pytest.raises(ValueError, match=r"2 inputs \['padding_mask'"):
        kj.Distiller(
            token_net("t", 0),
            token_net("s", 10),
            [kj.LogitsDistillation(), kj.JacobianMatching()],
        )


def test_several_inputs_are_refused_for_noise_terms():
    with pytest.raises(ValueError, match=r"2 inputs .*perturb or read the"):
        kj.Distiller(
            token_net("t", 0), token_net("s", 10), kj.NoiseDistillation(0.1)
        )


def two_heads(seed):
    """An MLP with outputs `{"a": 4 logits, "b": 3 logits}`."""
    inputs = keras.Input((6,))
    init = keras.initializers.GlorotUniform(seed)
    h = keras.layers.Dense(8, activation="tanh", kernel_initializer=init)(
        inputs
    )
    return keras.Model(
        inputs,
        {
            "a": keras.layers.Dense(4, kernel_initializer=init)(h),
            "b": keras.layers.Dense(3, kernel_initializer=init)(h),
        },
    )


def test_several_outputs_with_keras_terms_train_as_in_keras():
    x, y = vectors()
    labels = {"a": y, "b": y % 3}
    results = []
    for lib in (keras.distillation, kj):
        term = keras.distillation.LogitsDistillation(
            loss={"a": keras.losses.KLDivergence(), "b": "mse"}
        )
        distiller = lib.Distiller(
            two_heads(0), two_heads(1), term, student_loss_weight=0.0
        )
        distiller.compile(loss={"a": tiny.sparse_ce(), "b": tiny.sparse_ce()})
        logs = distiller.evaluate(x, labels, verbose=0, return_dict=True)
        results.append((logs, one_sgd_step(distiller, x, labels)))
    (keras_logs, keras_weights), (logs, weights) = results
    for key in keras_logs:
        np.testing.assert_allclose(logs[key], keras_logs[key], rtol=1e-5)
    for ours, theirs in zip(weights, keras_weights):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    # Keras' own Distiller fails with labels at a weight above 0 (its
    # compiled losses are tracked structures); here the losses add up.
    distiller.student_loss_weight = 0.5
    logs = distiller.evaluate(x, labels, verbose=0, return_dict=True)
    s = distiller.student.predict(x, verbose=0)
    ce = np.mean(sparse_ce(y, s["a"])) + np.mean(sparse_ce(y % 3, s["b"]))
    np.testing.assert_allclose(logs["student_loss"], ce, rtol=1e-5)
    mix = 0.5 * ce + 0.5 * logs["distillation_loss"]
    np.testing.assert_allclose(logs["total_loss"], mix, rtol=1e-5)


def test_keras_term_with_nested_losses_fails_when_saved(tmp_path):
    # Keras' LogitsDistillation cannot load its nested losses back: the
    # error comes at save time, not when the file is loaded.
    term = keras.distillation.LogitsDistillation(
        loss={"a": keras.losses.KLDivergence(), "b": "mse"}
    )
    distiller = kj.Distiller(two_heads(0), two_heads(1), term)
    with pytest.raises(ValueError, match="cannot be saved"):
        distiller.save(tmp_path / "d.keras")
    assert not (tmp_path / "d.keras").exists()


def test_several_outputs_are_refused_for_the_library_terms():
    with pytest.raises(ValueError, match="Keras' own term objects"):
        kj.Distiller(two_heads(0), two_heads(1), kj.LogitsDistillation())


def test_weights_of_one_term_not_in_a_list_are_applied_not_dropped():
    # Keras drops `distillation_loss_weights` when the term is not in a
    # list (weight 1); keras_jacobian applies them (docs/keras-distillation).
    x, y = vectors()
    results = []
    for lib in (keras.distillation, kj):
        teacher, student = keras_pair(lib)
        term = lib.LogitsDistillation(temperature=3.0)
        distiller = lib.Distiller(teacher, student, term, [0.3])
        distiller.compile(loss=tiny.sparse_ce())
        results.append(distiller.evaluate(x, y, verbose=0, return_dict=True))
    keras_logs, logs = results
    term_value = logs["logits_distillation_loss"]
    np.testing.assert_allclose(
        keras_logs["distillation_loss"], term_value, 1e-5
    )
    np.testing.assert_allclose(
        logs["distillation_loss"], 0.3 * term_value, 1e-5
    )
