"""The Distiller as a Keras model: training, metrics, errors, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_jacobian as kj
from tests import tiny


def make_distiller(terms=None, weights=None, **kwargs):
    teacher = kwargs.pop("teacher", None) or tiny.conv_net(
        seed=0, name="teacher", batch_norm=True
    )
    student = kwargs.pop("student", None) or tiny.conv_net(
        seed=10, name="student"
    )
    if terms is None:
        terms = [
            kj.LogitsDistillation(temperature=4.0, loss="kd"),
            kj.JacobianMatching(),
        ]
    kwargs.setdefault("supervised_loss_weight", 1.0)
    return kj.Distiller(teacher, student, terms, weights, **kwargs)


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return tiny.images(n, seed=seed), rng.integers(0, 5, size=n)


def kernels(model):
    return [v for v in model.trainable_variables if "kernel" in v.path]


def test_jacobian_term_alone_gives_gradients_to_student_kernels():
    distiller = make_distiller([kj.JacobianMatching()])
    x, _ = data(4)
    student = distiller.student
    with tf.GradientTape() as tape:
        _, logged, total = distiller._step_losses(x, None, None, training=True)
        values = [v for m, v in logged if m.name == "jacobian_matching_loss"]
    grads = tape.gradient(total, kernels(student))
    assert float(values[0]) > 0
    for grad in grads:
        assert grad is not None
        assert float(tf.reduce_max(tf.abs(grad))) > 0


def test_teacher_frozen_and_batchnorm_statistics_unchanged():
    distiller = make_distiller(supervised_loss_weight=0.5)
    teacher = distiller.teacher
    # Give the teacher's BatchNorm non-trivial statistics first.
    bn = teacher.get_layer("bn")
    rng = np.random.default_rng(0)
    bn.moving_mean.assign(rng.normal(size=bn.moving_mean.shape))
    bn.moving_variance.assign(rng.uniform(0.5, 2, bn.moving_variance.shape))
    before = [w.copy() for w in teacher.get_weights()]
    student_before = [w.copy() for w in distiller.student.get_weights()]
    distiller.compile(optimizer="adam", loss=tiny.sparse_ce())
    x, y = data()
    distiller.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(student_before, distiller.student.get_weights())
    ]
    assert all(changed)
    assert not teacher.trainable


def test_fit_and_evaluate_log_every_term():
    distiller = make_distiller()
    distiller.compile(
        optimizer="adam", loss=tiny.sparse_ce(), metrics=["accuracy"]
    )
    x, y = data()
    history = distiller.fit(
        x, y, epochs=1, batch_size=8, verbose=0, validation_data=(x, y)
    )
    names = {
        "loss",
        "student_loss",
        "distillation_loss",
        "logits_distillation_loss",
        "jacobian_matching_loss",
        "total_loss",
        "accuracy",
    }
    assert names | {f"val_{n}" for n in names} == set(history.history)
    logs = distiller.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert set(logs) == names
    np.testing.assert_allclose(logs["loss"], logs["total_loss"], rtol=1e-6)
    expected_total = (
        logs["student_loss"]
        + logs["logits_distillation_loss"]
        + logs["jacobian_matching_loss"]
    )
    np.testing.assert_allclose(logs["total_loss"], expected_total, rtol=1e-5)
    # The student loss is the compiled cross-entropy of the student.
    logits = distiller.student.predict(x, verbose=0)
    ce = tiny.sparse_ce()(y, logits).numpy()
    np.testing.assert_allclose(logs["student_loss"], ce, rtol=1e-5)
    accuracy = np.mean(np.argmax(logits, -1) == y)
    np.testing.assert_allclose(logs["accuracy"], accuracy, rtol=1e-6)
    np.testing.assert_allclose(
        distiller.predict(x, verbose=0), logits, rtol=1e-6
    )


def test_weights_and_supervised_loss_weight_scale_the_total():
    distiller = make_distiller(weights=[2.0, 0.5], supervised_loss_weight=3.0)
    distiller.compile(loss=tiny.sparse_ce())
    x, y = data()
    logs = distiller.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    logits = distiller.student.predict(x, verbose=0)
    ce = tiny.sparse_ce()(y, logits).numpy()
    # As in Keras, `student_loss` logs the unweighted compiled loss and
    # `distillation_loss` the terms' weighted sum.
    np.testing.assert_allclose(logs["student_loss"], ce, rtol=1e-5)
    distillation = (
        2.0 * logs["logits_distillation_loss"]
        + 0.5 * logs["jacobian_matching_loss"]
    )
    np.testing.assert_allclose(
        logs["distillation_loss"], distillation, rtol=1e-5
    )
    expected = 3.0 * ce + distillation
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)


def test_labels_may_be_absent_without_compiled_loss():
    distiller = make_distiller()
    distiller.compile(optimizer="adam")
    x, _ = data()
    history = distiller.fit(x, epochs=1, batch_size=8, verbose=0)
    assert history.history["student_loss"] == [0.0]
    assert history.history["loss"][0] > 0


def test_weight_change_takes_effect_without_retracing():
    distiller = make_distiller()
    term = distiller.distillation_losses[1]
    traces = []
    original = term.per_example_loss

    def counted(*args):
        # Python code in a traced step runs once per trace.
        traces.append(1)
        return original(*args)

    term.per_example_loss = counted
    distiller.compile(optimizer="sgd", loss=tiny.sparse_ce())
    x, y = data(8)
    distiller.fit(x, y, epochs=1, batch_size=8, verbose=0)
    first = distiller.evaluate(x, y, batch_size=8, verbose=0)
    count = len(traces)
    distiller.term_weights[1].assign(0.0)
    distiller.fit(x, y, epochs=2, batch_size=8, verbose=0)
    logs = distiller.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert len(traces) == count
    # A term with weight 0 is skipped: its metric reads 0.
    assert logs["jacobian_matching_loss"] == 0.0
    assert logs["loss"] < first[0]


def test_digits_distillation_trains_the_student():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[..., None] / 16.0).astype("float32")
    y = digits.target
    x_train, y_train, x_test, y_test = x[:1200], y[:1200], x[1200:], y[1200:]
    teacher = tiny.conv_net((8, 8, 1), 10, filters=16, activation="relu")
    teacher.compile(
        keras.optimizers.Adam(3e-3), tiny.sparse_ce(), metrics=["accuracy"]
    )
    teacher.fit(x_train, y_train, epochs=4, batch_size=64, verbose=0)
    teacher_acc = teacher.evaluate(x_test, y_test, verbose=0)[1]
    assert teacher_acc > 0.85
    student = tiny.conv_net((8, 8, 1), 10, filters=4, activation="relu", seed=5)
    distiller = kj.Distiller(
        teacher,
        student,
        [
            kj.LogitsDistillation(temperature=4.0, loss="kd"),
            kj.JacobianMatching(),
        ],
        supervised_loss_weight=1.0,
    )
    distiller.compile(
        keras.optimizers.Adam(3e-3), tiny.sparse_ce(), metrics=["accuracy"]
    )
    before = distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)
    # A few-data regime: 10 images per class.
    idx = np.concatenate([np.where(y_train == c)[0][:10] for c in range(10)])
    history = distiller.fit(
        x_train[idx], y_train[idx], epochs=30, batch_size=50, verbose=0
    )
    after = distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)
    assert after["accuracy"] > before["accuracy"] + 0.4, (before, after)
    jac = history.history["jacobian_matching_loss"]
    assert jac[-1] < jac[0]


@pytest.mark.parametrize(
    "terms",
    [
        [
            kj.LogitsDistillation(temperature=4.0, loss="kd"),
            kj.JacobianMatching(),
        ],
        [
            kj.LogitsDistillation(loss="squared_logits"),
            kj.JacobianMatching("top_k", k=2, normalize=False),
            kj.JacobianMatching("random", num_projections=2),
            kj.NoiseDistillation(0.1, num_samples=2),
        ],
    ],
)
def test_keras_file_round_trip(tmp_path, terms):
    distiller = make_distiller(terms, weights=[0.5] * len(terms), seed=3)
    distiller.compile(optimizer="adam", loss=tiny.sparse_ce())
    x, y = data()
    distiller.fit(x, y, epochs=1, batch_size=8, verbose=0)
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, kj.Distiller)
    assert not loaded.teacher.trainable
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), distiller.predict(x, verbose=0)
    )
    for a, b in zip(distiller.term_weights, loaded.term_weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(distiller.teacher.weights, loaded.teacher.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The optimizer's state comes back too, so training resumes as it was.
    saved_state = distiller.optimizer.variables
    assert len(loaded.optimizer.variables) == len(saved_state)
    for a, b in zip(saved_state, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert [t.get_config() for t in loaded.distillation_losses] == [
        t.get_config() for t in distiller.distillation_losses
    ]
    # Training goes on after loading.
    loaded.fit(x, y, epochs=1, batch_size=8, verbose=0)
    # The trained student alone, as a plain Keras model.
    student_path = tmp_path / "student.keras"
    distiller.student.save(student_path)
    student = keras.saving.load_model(student_path)
    np.testing.assert_array_equal(
        student.predict(x, verbose=0), distiller.predict(x, verbose=0)
    )


def test_weights_in_config_follow_the_variables():
    distiller = make_distiller()
    distiller.term_weights[0].assign(0.25)
    config = distiller.get_config()
    assert config["distillation_loss_weights"][0] == 0.25
