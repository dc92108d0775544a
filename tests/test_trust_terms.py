"""Terms that cannot be silently wrong: labels, resolutions, alignment,
reuse, numbers, shared weights, subclassed students, row selection.

Every number is checked against NumPy or a plain `tf.GradientTape`
computation written here without the library; the models are called the
way the README calls them, with default arguments. Cost: about 2 minutes.
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_jacobian as kj
from keras_jacobian import inspection
from keras_jacobian import label_range
from keras_jacobian.callbacks import LossWeightScheduler
from keras_jacobian.terms.base import OUTPUT
from tests import tiny


def term_values(distiller, x, y=None):
    """The logged values of one evaluation step, run eagerly."""
    distiller.compile(optimizer="sgd")
    data = (x,) if y is None else (x, y)
    return {k: float(v) for k, v in distiller.test_step(data).items()}


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_normalize(rows):
    norms = np.sqrt(np.sum(rows**2, axis=-1, keepdims=True))
    return np.where(norms > 0, rows / np.maximum(norms, 1e-30), 0.0)


def conv_net(input_shape=(8, 8, 1), prefix=None, classes=5, seed=0):
    """`tiny.conv_net` behind an optional resampling layer.

    `prefix` is `("up", k)` (nearest upsampling by `k`) or `("pool", k)`
    (average pooling by `k`): the result is then exactly the plain net
    applied to the resampled image, with the same weights for a seed.
    """
    inputs = keras.Input(input_shape)
    h = inputs
    if prefix is not None:
        kind, factor = prefix
        if kind == "up":
            h = keras.layers.UpSampling2D(factor)(h)
        else:
            h = keras.layers.AveragePooling2D(factor)(h)
    plain = tiny.conv_net(tuple(h.shape[1:]), classes=classes, seed=seed)
    for layer in plain.layers[1:]:
        layer = layer.__class__.from_config(layer.get_config())
        h = layer(h)
    model = keras.Model(inputs, h)
    model.set_weights(plain.get_weights())
    return model


def confident_copy(scale=30.0):
    """A teacher with large logits, and a student with its own copy."""
    teacher = tiny.conv_net(seed=0, name="teacher")
    student = tiny.conv_net(seed=0, name="student")
    weights = teacher.get_weights()
    weights[-2] *= scale
    weights[-1] *= scale
    teacher.set_weights(weights)
    student.set_weights(weights)
    return teacher, student


# Labels (target="label").


@pytest.mark.parametrize("bad", [7, -1])
def test_out_of_range_label_fails_in_fit(bad):
    distiller = kj.Distiller(
        tiny.conv_net(seed=0),
        tiny.conv_net(seed=1),
        [kj.JacobianMatching(target="label")],
        supervised_loss_weight=1.0,
    )
    distiller.compile(optimizer="sgd")
    x = tiny.images(4)
    y = np.array([0, 1, bad, 2])
    with pytest.raises(Exception, match=r"\[0, 5\)") as info:
        distiller.fit(x, y, batch_size=4, verbose=0)
    assert str(bad) in str(info.value)
    assert "teacher_top1" in str(info.value)


@pytest.mark.parametrize("method", ["fit", "evaluate"])
def test_out_of_range_label_fails_under_xla(method):
    """XLA drops in-step assertions; the error comes after the step."""
    distiller = kj.Distiller(
        tiny.conv_net(seed=0),
        tiny.conv_net(seed=1),
        [kj.JacobianMatching(target="label")],
        supervised_loss_weight=1.0,
    )
    distiller.compile(optimizer="sgd", jit_compile=True)
    assert distiller.jit_compile
    x = tiny.images(8)
    y = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    bad = y.copy()
    bad[[5, 6]] = [-1, 9]
    with pytest.raises(ValueError, match=r"\[0, 5\).*2 label.* -1 to 9"):
        getattr(distiller, method)(x, bad, batch_size=8, verbose=0)
    # The record is cleared: good labels then run.
    getattr(distiller, method)(x, y, batch_size=8, verbose=0)


def test_label_range_monitor_records_under_xla():
    monitor = label_range.LabelRangeMonitor(3, "Labels index 3 classes.")
    record = tf.function(monitor.record, jit_compile=True)
    record(np.eye(3)[[0, 2]])  # one-hot: always a class
    record(np.array([[0], [2], [1]]))
    strategy = tf.distribute.get_strategy()
    monitor.check(strategy)  # nothing recorded: no error
    record(np.array([4, 0, 3]))
    record(np.array([-2, 1]))
    with pytest.raises(ValueError, match=r"3 classes\. .*3 label.* -2 to 4"):
        monitor.check(strategy)
    monitor.check(strategy)  # cleared


@pytest.mark.parametrize("bad", [7, -1])
def test_out_of_range_label_fails_eagerly_with_value_error(bad):
    distiller = kj.Distiller(
        tiny.conv_net(seed=0),
        tiny.conv_net(seed=1),
        [kj.JacobianMatching(target="label")],
        supervised_loss_weight=1.0,
    )
    x = tf.constant(tiny.images(3))
    with pytest.raises(ValueError, match=rf"\[0, 5\).*{bad}"):
        distiller.teacher_targets(x, np.array([0, bad, 1]))
    with pytest.raises(ValueError, match=rf"\[0, 5\).*{bad}"):
        inspection.input_saliency(
            distiller, x, x, target="label", labels=np.array([0, bad, 1])
        )


def _label_distiller(jit_compile):
    distiller = kj.Distiller(
        tiny.conv_net(seed=0),
        tiny.conv_net(seed=1),
        [kj.JacobianMatching(target="label")],
        supervised_loss_weight=1.0,
    )
    distiller.compile(optimizer="sgd", jit_compile=jit_compile)
    return distiller


@pytest.mark.parametrize("jit_compile", [False, True])
def test_float_labels_with_fractions_are_refused(jit_compile):
    distiller = _label_distiller(jit_compile)
    x = tiny.images(3)
    # Used to be truncated to class 2, silently (under XLA too).
    with pytest.raises(ValueError, match=r"whole-number.*\[2\.9\]"):
        distiller.teacher_targets(tf.constant(x), np.array([0.0, 2.9, 1.0]))
    with pytest.raises(ValueError, match=r"whole-number.*1 label"):
        distiller.fit(x, np.array([0.0, 2.9, 1.0]), batch_size=3, verbose=0)
    # Integer-valued floats are class indices.
    history = distiller.fit(
        x, np.array([0.0, 3.0, 1.0]), batch_size=3, verbose=0
    )
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize(
    "row",
    [[0, 0, 0, 0, 0], [1, 0, 0, 0, 1], [0, 0, 0, 0, 0.5], [0.9, 0.1, 0, 0, 0]],
    ids=["zeros", "two classes", "a fraction", "smoothed"],
)
def test_one_hot_row_without_a_single_class_is_refused(row, jit_compile):
    distiller = _label_distiller(jit_compile)
    x = tiny.images(3)
    labels = np.eye(5, dtype="float32")[[1, 0, 2]]
    labels[1] = row  # used to be read as its argmax, silently
    with pytest.raises(ValueError, match=r"names no class.*\[1\]"):
        distiller.teacher_targets(tf.constant(x), labels)
    with pytest.raises(ValueError, match="1 row.*not one-hot"):
        distiller.fit(x, labels, batch_size=3, verbose=0)
    history = distiller.fit(
        x, np.eye(5, dtype="float32")[[1, 0, 2]], batch_size=3, verbose=0
    )
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize(
    "labels", [[0.0, 3.5, 1.0], [0, 7, 1], [0.0, np.nan, 1.0]]
)
def test_a_refused_step_without_xla_updates_nothing(labels):
    """Without XLA a bad label of target="label" stopped the step with
    TensorFlow's InvalidArgumentError after some of the update: the last
    bias moved (its gradient, from the cross-entropy alone, did not wait
    for the label check) and the optimizer counted the step."""
    teacher = tiny.mlp(input_dim=6, classes=5, seed=0, dtype="float32")
    student = tiny.mlp(input_dim=6, classes=5, seed=1, dtype="float32")
    distiller = kj.Distiller(
        teacher,
        student,
        [kj.JacobianMatching(target="label")],
        supervised_loss_weight=1.0,
    )
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
    before = student.get_weights()
    with pytest.raises(
        ValueError, match="step stopped before using them"
    ) as refused:
        distiller.fit(x, np.array(labels), batch_size=3, verbose=0)
    # A NaN is named as no whole number, not as a label of -2**31.
    assert ("out of range" in str(refused.value)) == (7 in labels)
    assert int(distiller.optimizer.iterations.numpy()) == 0
    for a, b in zip(before, student.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_label_shape_mistakes_are_named():
    distiller = kj.Distiller(
        tiny.conv_net(seed=0),
        tiny.conv_net(seed=1),
        [kj.JacobianMatching(target="label")],
        supervised_loss_weight=1.0,
    )
    distiller.compile(optimizer="sgd")
    x = tiny.images(4)
    two_columns = np.zeros((4, 2), "int64")
    with pytest.raises(ValueError, match=r"one-hot.*\(batch, 5\).*\(4, 2\)"):
        distiller.fit(x, two_columns, batch_size=4, verbose=0)
    # One label short in every batch: the batch sizes disagree at run time.
    data = tf.data.Dataset.zip(
        (
            tf.data.Dataset.from_tensor_slices(tiny.images(8)).batch(4),
            tf.data.Dataset.from_tensor_slices(np.arange(6) % 5).batch(3),
        )
    )
    with pytest.raises(Exception, match="one label per example"):
        distiller.fit(data, verbose=0)


def test_labels_in_range_still_train_with_sparse_and_one_hot():
    x = tiny.images(4)
    y = np.array([0, 4, 2, 1])
    values = []
    for labels in (y, np.eye(5)[y]):
        distiller = kj.Distiller(
            tiny.conv_net(seed=0),
            tiny.conv_net(seed=1),
            [kj.JacobianMatching(target="label")],
            supervised_loss_weight=1.0,
        )
        distiller.compile(optimizer="sgd")
        history = distiller.fit(x, labels, batch_size=4, verbose=0)
        values.append(history.history["jacobian_matching_loss"][0])
    assert values[0] > 0
    np.testing.assert_allclose(values[0], values[1], rtol=1e-6)


def test_label_target_is_refused_with_distillation_output():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(3, 3, activation="tanh")(inputs)
    backbone = keras.Model(inputs, h)
    student = kj.build_lwf_student(backbone, 3, 5)
    with pytest.raises(ValueError, match="task head.*teacher_top1"):
        kj.Distiller(
            tiny.conv_net(seed=0),
            student,
            [kj.JacobianMatching(target="label")],
            distillation_output="source",
            supervised_loss_weight=1.0,
        )
    distiller = kj.Distiller(
        tiny.conv_net(seed=0),
        student,
        [kj.JacobianMatching()],
        distillation_output="source",
        supervised_loss_weight=1.0,
    )
    x = tiny.images(2)
    with pytest.raises(ValueError, match="task head"):
        inspection.input_saliency(
            distiller, x, x, target="label", labels=np.array([0, 1])
        )


# Teacher and student at different resolutions.


def plain_rows(model, x):
    """Full input Jacobians `(batch, classes, H, W, C)` by a plain tape."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = model(x, training=False)
    return tape.batch_jacobian(out, x).numpy()


def block_sum(rows, factor):
    b, k, h, w, c = rows.shape
    blocks = rows.reshape(b, k, h // factor, factor, w // factor, factor, c)
    return blocks.sum(axis=(3, 5))


RESAMPLED = [
    # (student input, student prefix, teacher input, image map)
    ((4, 4, 1), ("up", 2), (8, 8, 1), "up"),
    ((16, 16, 1), ("pool", 2), (8, 8, 1), "pool"),
]


def resampled_pair(student_shape, prefix, teacher_shape, kind):
    teacher = conv_net(teacher_shape, seed=0)
    student = conv_net(student_shape, prefix=prefix, seed=0)
    xs = tiny.images(3, student_shape, seed=4)
    if kind == "up":
        xt = np.repeat(np.repeat(xs, 2, axis=1), 2, axis=2)
    else:
        xt = xs.reshape(3, 8, 2, 8, 2, 1).mean(axis=(2, 4))
    return teacher, student, xs, xt


@pytest.mark.parametrize("student_shape,prefix,teacher_shape,kind", RESAMPLED)
def test_resampled_student_has_the_teachers_rows(
    student_shape, prefix, teacher_shape, kind
):
    teacher, student, xs, xt = resampled_pair(
        student_shape, prefix, teacher_shape, kind
    )
    js, jt = plain_rows(student, xs), plain_rows(teacher, xt)
    # The chain rule, independently of the library: the student's rows are
    # the teacher's rows pulled back through the resampling.
    expected = (
        block_sum(jt, 2)
        if kind == "up"
        else np.repeat(np.repeat(jt, 2, axis=2), 2, axis=3) / 4
    )
    np.testing.assert_allclose(js, expected, rtol=1e-4, atol=1e-6)
    scale = np.sum(js**2, axis=(1, 2, 3, 4)).mean()
    for target in ("all", "teacher_top1"):
        distiller = kj.Distiller(
            teacher,
            student,
            [kj.JacobianMatching(target, normalize=False)],
            supervised_loss_weight=1.0,
        )
        got = term_values(distiller, {"student": xs, "teacher": xt})
        assert got["jacobian_matching_loss"] <= 1e-6 * scale, target


@pytest.mark.parametrize("normalize", [False, True])
def test_resampled_student_attention_jacobian_is_zero(normalize):
    teacher = conv_net((8, 8, 1))
    student = conv_net((4, 4, 1), prefix=("up", 2))
    xs = tiny.images(3, (4, 4, 1), seed=4)
    xt = np.repeat(np.repeat(xs, 2, axis=1), 2, axis=2)
    term = kj.AttentionJacobianMatching(
        [("conv1", "conv1"), ("conv2", "conv2")], normalize=normalize
    )
    distiller = kj.Distiller(
        teacher, student, [term], supervised_loss_weight=1.0
    )
    targets = distiller.teacher_targets(tf.constant(xt))[0]
    scale = float(np.sum(targets["rows_0"].numpy() ** 2)) / 3
    bound = 1e-6 if normalize else 1e-6 * scale
    got = term_values(distiller, {"student": xs, "teacher": xt})
    assert got["attention_jacobian_matching_loss"] <= bound


# Alignment: the teacher is the minimum.


def probability_rows(model, x, temperature):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        p = tf.nn.softmax(model(x, training=False) / temperature)
    jac = tape.batch_jacobian(p, x).numpy()
    return jac.reshape(len(x), p.shape[-1], -1), p.numpy()


@pytest.mark.parametrize("target", ["teacher_top1", "all"])
@pytest.mark.parametrize("normalize", [False, True])
def test_alignment_value_against_numpy(target, normalize):
    temperature = 2.0
    teacher = tiny.conv_net(seed=0, name="t")
    student = tiny.conv_net(seed=10, name="s")
    x = tiny.images(5)
    term = kj.JacobianMatching(
        target, normalize=normalize, loss="alignment", temperature=temperature
    )
    got = term_values(
        kj.Distiller(teacher, student, [term], supervised_loss_weight=1.0), x
    )
    jt, _ = probability_rows(teacher, x, temperature)
    js, ps = probability_rows(student, x, temperature)
    if target == "all":
        mask = np.ones(ps.shape)
    else:
        top1 = np.argmax(teacher.predict(x, verbose=0), axis=-1)
        mask = np.eye(5)[top1]
    if normalize:
        jt, js = np_normalize(jt), np_normalize(js)
        per_class = np.sum((jt - js) ** 2, axis=-1) / 2
        expected = np.sum(per_class * mask, -1) / mask.sum(-1)
    else:
        weights = 1.0 / np.maximum(ps, 1e-4)
        per_class = weights * np.sum((jt - js) ** 2, axis=-1) / 2
        expected = np.sum(per_class * mask, axis=-1)
        # The cross term is the proposition's -(grad p_T . grad p_S) / p_S.
        cross = -weights * np.sum(jt * js, axis=-1)
        rest = weights * (np.sum(jt**2, -1) + np.sum(js**2, -1)) / 2
        np.testing.assert_allclose(per_class, cross + rest, rtol=1e-6)
    np.testing.assert_allclose(
        got["jacobian_matching_loss"], expected.mean(), rtol=1e-4
    )


ALIGNMENT = [
    dict(loss="alignment", normalize=False),
    dict(loss="alignment"),
    dict(target="all", loss="alignment"),
    dict(target="all", loss="alignment", normalize=False),
]


@pytest.mark.parametrize("kwargs", ALIGNMENT)
def test_copied_student_has_zero_alignment_gradient(kwargs):
    teacher, student = confident_copy()
    distiller = kj.Distiller(
        teacher,
        student,
        [kj.JacobianMatching(**kwargs)],
        supervised_loss_weight=1.0,
    )
    distiller.compile(optimizer="sgd")
    x = tf.constant(tiny.images(8))
    with tf.GradientTape() as tape:
        _, _, total = distiller._step_losses(x, None, None, training=True)
    grads = tape.gradient(total, student.trainable_variables)
    for variable, grad in zip(student.trainable_variables, grads):
        if grad is not None:
            np.testing.assert_allclose(
                grad.numpy(), 0.0, atol=1e-6, err_msg=variable.path
            )


@pytest.mark.parametrize("kwargs", ALIGNMENT)
def test_copied_student_does_not_move_under_sgd(kwargs):
    teacher, student = confident_copy()
    distiller = kj.Distiller(
        teacher,
        student,
        [kj.JacobianMatching(**kwargs)],
        supervised_loss_weight=1.0,
    )
    distiller.compile(optimizer="sgd")
    before = student.get_weights()
    distiller.fit(tiny.images(8), epochs=30, batch_size=8, verbose=0)
    for old, new in zip(before, student.get_weights()):
        np.testing.assert_allclose(new, old, atol=1e-6)


@pytest.mark.parametrize("normalize", [False, True])
def test_alignment_is_bounded_below(normalize):
    teacher = tiny.conv_net(seed=0, name="t")
    student = tiny.conv_net(seed=3, name="s")
    term = kj.JacobianMatching("all", loss="alignment", normalize=normalize)
    distiller = kj.Distiller(
        teacher, student, [term], supervised_loss_weight=1.0
    )
    x = tiny.images(4)
    for seed in (3, 4):
        weights = tiny.conv_net(seed=seed, name=f"s{seed}").get_weights()
        for scale in (1.0, 10.0, 100.0):
            student.set_weights([w * scale for w in weights])
            got = term_values(distiller, x)
            assert got["jacobian_matching_loss"] >= 0.0, (seed, scale)


# One term object in two distillers.


def feature_net(filters, size=8, stride=1, name=None):
    inputs = keras.Input((size, size, 1))
    h = keras.layers.Conv2D(
        filters,
        3,
        strides=stride,
        padding="same",
        activation="tanh",
        name="c1",
    )(inputs)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(h), name=name)


@pytest.mark.parametrize("widths", [(2, 2), (2, 3)])
def test_feature_term_reused_in_two_distillers_trains_both(widths):
    term = kj.FeatureDistillation(
        teacher_layer_name="c1", student_layer_name="c1", adapter="auto"
    )
    teacher = feature_net(4, name="t")
    distillers = [
        kj.Distiller(
            teacher,
            feature_net(w, name=f"s{i}"),
            [term],
            supervised_loss_weight=1.0,
        )
        for i, w in enumerate(widths)
    ]
    assert term.adapter_layer is None
    x = tiny.images(4)
    for distiller, width in zip(distillers, widths):
        own = distiller.distillation_losses[0]
        assert own is not term
        kernel = own.adapter_layer.kernel
        assert kernel.shape == (1, 1, width, 4)
        assert any(v is kernel for v in distiller.trainable_variables)
        # The value uses this distiller's own adapter.
        w, b = [v.numpy() for v in own.adapter_layer.weights]
        s_features = keras.Model(
            distiller.student.inputs, distiller.student.get_layer("c1").output
        )(x).numpy()
        t_features = keras.Model(
            teacher.inputs, teacher.get_layer("c1").output
        )(x).numpy()
        expected = np.mean((t_features - (s_features @ w[0, 0] + b)) ** 2)
        got = term_values(distiller, x)["feature_distillation_loss"]
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        before = kernel.numpy()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            distiller.fit(x, epochs=1, batch_size=4, verbose=0)
        # (The student's head gets no gradient from a feature term.)
        missing = [str(c.message) for c in caught if "do not exist" in str(c)]
        assert not [m for m in missing if "adapter" in m], missing
        assert not np.allclose(kernel.numpy(), before)


def test_attention_term_reused_at_two_map_sizes():
    term = kj.AttentionTransfer([("c1", "c1")])
    teacher = feature_net(4, name="t")
    x = tiny.images(4)
    students = [feature_net(2, name="s0"), feature_net(2, stride=2, name="s1")]
    shared = [
        kj.Distiller(teacher, s, [term], supervised_loss_weight=1.0)
        for s in students
    ]
    for distiller, student in zip(shared, students):
        fresh = kj.Distiller(
            teacher,
            student,
            [kj.AttentionTransfer([("c1", "c1")])],
            supervised_loss_weight=1.0,
        )
        expected = term_values(fresh, x)["attention_transfer_loss"]
        got = term_values(distiller, x)["attention_transfer_loss"]
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        distiller.fit(x, epochs=1, batch_size=4, verbose=0)


def test_term_names_of_the_user_are_not_changed():
    first, second = (
        kj.LogitsDistillation(temperature=4.0, loss="kd"),
        kj.LogitsDistillation(loss="squared_logits"),
    )
    distiller = kj.Distiller(
        tiny.conv_net(seed=0),
        tiny.conv_net(seed=1),
        [first, second],
        supervised_loss_weight=1.0,
    )
    assert (first.name, second.name) == ("logits_distillation",) * 2
    assert [t.name for t in distiller.distillation_losses] == [
        "logits_distillation",
        "logits_distillation_1",
    ]
    assert distiller.distillation_losses[1].loss == "squared_logits"


# Numbers: NaN, inf, NumPy scalars and arrays.


def build_with(**overrides):
    kwargs = dict(
        teacher=tiny.conv_net(seed=0),
        student=tiny.conv_net(seed=1),
        distillation_losses=[kj.LogitsDistillation(temperature=4.0, loss="kd")],
        supervised_loss_weight=1.0,
    )
    kwargs.update(overrides)
    return kj.Distiller(**kwargs)


NUMBER_PLACES = [
    ("weight", lambda v: build_with(distillation_loss_weights=[v])),
    ("student", lambda v: build_with(supervised_loss_weight=v)),
    (
        "kd_temperature",
        lambda v: kj.LogitsDistillation(temperature=v, loss="kd"),
    ),
    (
        "alignment_temperature",
        lambda v: kj.JacobianMatching(loss="alignment", temperature=v),
    ),
    ("stddev", lambda v: kj.NoiseDistillation(stddev=v)),
    ("attention_p", lambda v: kj.AttentionTransfer([("a", "b")], p=v)),
    (
        "attention_jacobian_p",
        lambda v: kj.AttentionJacobianMatching([("a", "b")], p=v),
    ),
    (
        "penalty_weight",
        lambda v: kj.JacobianRegularizedModel(tiny.conv_net(), weight=v),
    ),
]


@pytest.mark.parametrize("place,make", NUMBER_PLACES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_are_refused(place, make, bad):
    with pytest.raises(ValueError, match="finite number"):
        make(bad)


@pytest.mark.parametrize("place,make", NUMBER_PLACES)
@pytest.mark.parametrize(
    "good", [np.float32(0.5), np.int64(2), np.array(0.5), np.float64(2.0)]
)
def test_numpy_scalars_are_accepted(place, make, good):
    make(good)


@pytest.mark.parametrize("place,make", NUMBER_PLACES)
def test_arrays_are_refused_with_their_shape(place, make):
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        make(np.array([0.5, 0.5]))


def test_numpy_weights_are_stored_as_floats():
    distiller = build_with(
        distillation_loss_weights=[np.float32(0.5)],
        supervised_loss_weight=np.int64(2),
    )
    config = distiller.get_config()
    assert config["distillation_loss_weights"] == [0.5]
    assert config["supervised_loss_weight"] == 2.0
    term = kj.LogitsDistillation(temperature=np.array(3.0), loss="kd")
    assert type(term.get_config()["temperature"]) is float


def test_weights_as_a_numpy_vector():
    distiller = build_with(
        distillation_losses=[
            kj.LogitsDistillation(temperature=4.0, loss="kd"),
            kj.JacobianMatching(),
        ],
        distillation_loss_weights=np.array([0.5, 2.0], "float32"),
    )
    assert distiller.get_config()["distillation_loss_weights"] == [0.5, 2.0]
    with pytest.raises(ValueError, match=r"weights\[1\].*shape \(2,\)"):
        build_with(
            distillation_losses=[
                kj.LogitsDistillation(temperature=4.0, loss="kd")
            ]
            * 2,
            distillation_loss_weights=[1.0, np.ones(2)],
        )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_scheduler_refuses_bad_values_with_epoch(bad):
    distiller = build_with()
    distiller.compile(optimizer="sgd")
    schedule = LossWeightScheduler(0, lambda epoch: 1.0 if epoch == 0 else bad)
    before = [w.copy() for w in distiller.student.get_weights()]
    with pytest.raises(ValueError, match=rf"epoch 1.*{bad}|{bad}.*epoch 1"):
        distiller.fit(
            tiny.images(4),
            epochs=2,
            batch_size=4,
            verbose=0,
            callbacks=[schedule],
        )
    for w in distiller.student.get_weights():
        assert np.all(np.isfinite(w))
    assert len(before) == len(distiller.student.get_weights())


def test_scheduler_accepts_numpy_values():
    distiller = build_with()
    distiller.compile(optimizer="sgd")
    schedule = LossWeightScheduler(0, lambda epoch: np.array(0.25))
    distiller.fit(
        tiny.images(4), epochs=1, batch_size=4, verbose=0, callbacks=[schedule]
    )
    assert float(distiller.term_weights[0].numpy()) == 0.25


# A student with its own weights.


def test_student_that_is_the_teacher_is_refused():
    teacher = tiny.conv_net()
    with pytest.raises(ValueError, match="clone_model"):
        kj.Distiller(
            teacher,
            teacher,
            [kj.LogitsDistillation(temperature=4.0, loss="kd")],
            supervised_loss_weight=1.0,
        )


def test_student_sharing_teacher_layers_is_refused():
    teacher = tiny.conv_net()
    inputs = keras.Input((8, 8, 1))
    h = teacher.get_layer("conv1")(inputs)
    h = keras.layers.Flatten()(h)
    student = keras.Model(inputs, keras.layers.Dense(5)(h))
    with pytest.raises(ValueError, match=r"shares 2 weights.*conv1.*clone"):
        kj.Distiller(
            teacher,
            student,
            [kj.LogitsDistillation(temperature=4.0, loss="kd")],
            supervised_loss_weight=1.0,
        )


def test_cloned_student_is_accepted_and_trains():
    teacher = tiny.conv_net()
    student = keras.models.clone_model(teacher)
    student.set_weights(teacher.get_weights())
    distiller = kj.Distiller(
        teacher,
        student,
        [kj.LogitsDistillation(temperature=4.0, loss="kd")],
        supervised_loss_weight=1.0,
    )
    distiller.compile(optimizer="sgd", loss=tiny.sparse_ce())
    before = student.get_weights()
    distiller.fit(
        tiny.images(4), np.array([0, 1, 2, 3]), batch_size=4, verbose=0
    )
    assert not np.allclose(student.get_weights()[0], before[0])
    np.testing.assert_array_equal(teacher.get_weights()[0], before[0])


# Subclassed students with output-only terms.


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = tf.Variable(0, trainable=False, dtype="int64")
        self.conv = keras.layers.Conv2D(3, 3, activation="tanh")
        self.flat = keras.layers.Flatten()
        self.dense = keras.layers.Dense(5)

    def call(self, x):
        self.calls.assign_add(1)
        return self.dense(self.flat(self.conv(x)))


def test_subclassed_student_with_output_terms():
    teacher = tiny.conv_net(seed=0)
    student = Subclassed()
    student(tiny.images(1))
    terms = [
        kj.LogitsDistillation(loss="squared_logits"),
        kj.JacobianMatching(),
    ]
    distiller = kj.Distiller(
        teacher, student, terms, supervised_loss_weight=1.0
    )
    x = tiny.images(4)
    got = term_values(distiller, x)
    t_logits = teacher.predict(x, verbose=0)
    s_logits = student(x).numpy()
    np.testing.assert_allclose(
        got["logits_distillation_loss"],
        np.mean(np.sum((t_logits - s_logits) ** 2, axis=-1)),
        rtol=1e-5,
    )
    top1 = np.argmax(t_logits, axis=-1)
    b = np.arange(4)
    t_rows = plain_rows(teacher, x).reshape(4, 5, -1)[b, top1]
    s_rows = plain_rows(student, x).reshape(4, 5, -1)[b, top1]
    expected = np.sum(
        (np_normalize(t_rows) - np_normalize(s_rows)) ** 2, axis=-1
    ).mean()
    np.testing.assert_allclose(
        got["jacobian_matching_loss"], expected, rtol=1e-4
    )
    distiller.compile(optimizer="sgd")
    calls = int(student.calls.numpy())
    before = student.conv.kernel.numpy()
    distiller.fit(x, epochs=2, batch_size=4, verbose=0)
    assert int(student.calls.numpy()) - calls == 2  # once per step
    assert not np.allclose(student.conv.kernel.numpy(), before)


def test_subclassed_student_with_intermediate_layer_is_refused():
    student = Subclassed()
    student(tiny.images(1))
    with pytest.raises(ValueError, match="intermediate layers"):
        kj.Distiller(
            tiny.conv_net(),
            student,
            [
                kj.FeatureDistillation(
                    teacher_layer_name="conv1",
                    student_layer_name="conv2d",
                    adapter="auto",
                )
            ],
            supervised_loss_weight=1.0,
        )


# The compiled loss is skipped at weight 0.


def test_compiled_loss_is_not_computed_at_weight_zero():
    calls = tf.Variable(0, dtype="int64")

    def counting_loss(y_true, y_pred):
        calls.assign_add(1)
        return keras.losses.sparse_categorical_crossentropy(
            y_true, y_pred, from_logits=True
        )

    distiller = build_with(supervised_loss_weight=0.0)
    distiller.compile(optimizer="sgd", loss=counting_loss)
    x, y = tiny.images(8), np.arange(8) % 5
    history = distiller.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert int(calls.numpy()) == 0
    assert history.history["student_loss"] == [0.0]
    # Turned on by a schedule, the same compiled step computes it.
    schedule = LossWeightScheduler("student", lambda epoch: 1.0)
    history = distiller.fit(
        x, y, epochs=1, batch_size=4, verbose=0, callbacks=[schedule]
    )
    assert int(calls.numpy()) == 2
    assert history.history["student_loss"][0] > 0.0


# Teacher caching: the message and the signature agree.


def _python_pipeline(stateful):
    """Batches of `tiny.images(4)` through an identity NumPy function."""
    data = tf.data.Dataset.from_tensor_slices(tiny.images(4)).map(
        lambda x: tf.numpy_function(
            lambda a: a, [x], tf.float32, stateful=stateful
        )
    )
    return data.map(lambda x: tf.ensure_shape(x, (8, 8, 1))).batch(2)


def test_cache_teacher_with_python_functions_in_the_pipeline():
    distiller = build_with()
    expected = distiller.teacher(tiny.images(4)).numpy()

    def cached_logits(dataset):
        batches = [b["teacher_targets"][0]["logits"] for b in dataset]
        return np.concatenate([b.numpy() for b in batches])

    # With default arguments: a NumPy function declared pure is cached.
    pure = distiller.cache_teacher(_python_pipeline(stateful=False))
    np.testing.assert_allclose(cached_logits(pure), expected, atol=1e-6)
    # An undeclared one is refused, with both ways out in the message.
    with pytest.raises(ValueError, match="stateful=False") as info:
        distiller.cache_teacher(_python_pipeline(stateful=True))
    assert "PyFunc" in str(info.value)
    assert "check_random=False" in str(info.value)
    # `Distiller.cache_teacher` takes the flag the message names.
    opaque = distiller.cache_teacher(
        _python_pipeline(stateful=True), check_random=False
    )
    np.testing.assert_allclose(cached_logits(opaque), expected, atol=1e-6)


# One row selection for terms and saliency.


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
@pytest.mark.parametrize("target", ["teacher_top1", "label"])
def test_saliency_rows_are_the_terms_rows(policy, target):
    keras.config.set_dtype_policy(policy)
    try:
        teacher = tiny.conv_net(seed=0, name="t")
        student = tiny.conv_net(seed=5, name="s")
    finally:
        keras.config.set_dtype_policy("float32")
    term = kj.JacobianMatching(target)
    distiller = kj.Distiller(
        teacher, student, [term], supervised_loss_weight=1.0
    )
    x = tf.constant(tiny.images(4))
    y = np.array([1, 0, 4, 2])
    targets = distiller.teacher_targets(x, y)[0]
    sctx = distiller._context(
        lambda inputs: distiller._student_forward(inputs, False),
        x,
        y,
        distiller.student_input_shape,
    )
    s_rows = sctx.rows(OUTPUT, targets["cotangents"])[:, 0]
    t_sal, s_sal, _ = inspection.input_saliency(
        distiller, x, x, target=target, labels=y
    )
    np.testing.assert_array_equal(t_sal.numpy(), targets["rows"][:, 0])
    np.testing.assert_array_equal(s_sal.numpy(), s_rows.numpy())
