"""Learning without Forgetting: two-headed students, task model, resolutions.

The teacher sees 8x8 images and has 5 classes; the student sees the same
images resized to 6x6 and has 3 task classes plus a 5-class mimic head.
Cost: about 30 s.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_jacobian as kj
from keras_jacobian import transfer
from keras_jacobian.terms.attention import AttentionJacobianMatching
from keras_jacobian.terms.attention import AttentionTransfer
from keras_jacobian.terms.features import FeatureDistillation


class CallCounter(keras.layers.Layer):
    """Identity that counts how many times it runs."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def call(self, x):
        self.calls += 1
        return x


def teacher_net(counter=None):
    inputs = keras.Input((8, 8, 3))
    h = inputs if counter is None else counter(inputs)
    h = keras.layers.Conv2D(4, 3, padding="same", name="tc1")(h)
    h = keras.layers.BatchNormalization(name="tbn")(h)
    h = keras.layers.Activation("tanh")(h)
    h = keras.layers.Conv2D(
        4, 3, strides=2, padding="same", activation="tanh", name="tc2"
    )(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(5, name="tout")(h)
    return keras.Model(inputs, outputs, name="teacher")


def backbone_net(counter=None):
    inputs = keras.Input((6, 6, 3))
    h = inputs if counter is None else counter(inputs)
    h = keras.layers.Conv2D(3, 3, padding="same", name="bc1")(h)
    h = keras.layers.BatchNormalization(name="bbn")(h)
    h = keras.layers.Activation("tanh")(h)
    h = keras.layers.Conv2D(
        3, 3, strides=2, padding="same", activation="tanh", name="bc2"
    )(h)
    return keras.Model(inputs, h, name="backbone")


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    xt = rng.uniform(size=(n, 8, 8, 3)).astype("float32")
    xs = tf.image.resize(xt, (6, 6), method="area").numpy()
    y = rng.integers(0, 3, size=n)
    return xs, xt, y


def all_terms():
    return [
        kj.LogitsDistillation(temperature=2.0, loss="kd"),
        kj.JacobianMatching(),
        AttentionTransfer([("tc1", "bc1"), ("tc2", "bc2")]),
        AttentionJacobianMatching([("tc1", "bc1")]),
        FeatureDistillation(
            teacher_layer_name="tc2", student_layer_name="bc2", adapter="conv"
        ),
    ]


def lwf_distiller(teacher, student):
    distiller = kj.Distiller(
        teacher,
        student,
        all_terms(),
        distillation_output="source",
        supervised_loss_weight=1.0,
    )
    distiller.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return distiller


def test_build_lwf_student_heads_and_names():
    student = transfer.build_lwf_student(backbone_net(), 3, 5)
    assert [o.shape[-1] for o in student.outputs] == [3, 5]
    names = [layer.name for layer in student.layers]
    assert {"task", "source", "bc1", "bc2"} <= set(names)
    vector = keras.Model(
        student.input, student.get_layer("lwf_student_pool").output
    )
    student2 = transfer.build_lwf_student(vector, 2, 4, name="s2")
    assert [o.shape[-1] for o in student2.outputs] == [2, 4]


def test_build_lwf_student_takes_numpy_integers():
    # Class counts often come from NumPy (`len(np.unique(y))` is an int,
    # `y.max() + 1` an np.int64); they were refused.
    student = transfer.build_lwf_student(
        backbone_net(), np.int64(3), np.int32(5)
    )
    assert [o.shape[-1] for o in student.outputs] == [3, 5]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
        ({"num_classes": 3.0}, "num_classes"),
        ({"pooling": "sum"}, "pooling"),
        ({"task_name": "h", "source_name": "h"}, "different names"),
    ],
)
def test_build_lwf_student_errors(kwargs, match):
    args = {"num_classes": 3, "num_source_classes": 5}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        transfer.build_lwf_student(backbone_net(), **args)


def test_extract_task_model_errors():
    with pytest.raises(ValueError, match="no layer named 'task'"):
        transfer.task_model(teacher_net())
    distiller = kj.Distiller(
        teacher_net(),
        teacher_net(),
        [kj.LogitsDistillation(temperature=4.0, loss="kd")],
        supervised_loss_weight=1.0,
    )
    with pytest.raises(ValueError, match="single head"):
        transfer.extract_task_model(distiller)


@pytest.mark.slow
def test_lwf_end_to_end_across_resolutions_and_class_counts(tmp_path):
    teacher = teacher_net()
    student = transfer.build_lwf_student(backbone_net(), 3, 5)
    distiller = lwf_distiller(teacher, student)
    xs, xt, y = data()
    teacher_before = [v.numpy().copy() for v in teacher.weights]
    assert any("moving_variance" in v.path for v in teacher.weights)
    heads_before = {
        name: student.get_layer(name).kernel.numpy().copy()
        for name in ("task", "source", "bc1")
    }
    history = distiller.fit(
        {"student": xs, "teacher": xt}, y, epochs=1, batch_size=8, verbose=0
    )
    for key in (
        "student_loss",
        "attention_transfer_loss",
        "attention_jacobian_matching_loss",
        "jacobian_matching_loss",
    ):
        assert all(np.isfinite(history.history[key])), key
        assert history.history[key][0] > 0, key
    for name, before in heads_before.items():
        after = student.get_layer(name).kernel.numpy()
        assert np.abs(after - before).max() > 0, name
    for old, new in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(old, new.numpy(), err_msg=new.path)

    task = transfer.extract_task_model(distiller)
    assert len(task.outputs) == 1 and task.outputs[0].shape[-1] == 3
    assert "source" not in [layer.name for layer in task.layers]
    expected = distiller.predict(xs, verbose=0)
    np.testing.assert_allclose(
        task.predict(xs, verbose=0), expected, rtol=1e-6, atol=1e-6
    )
    same = transfer.task_model(distiller.student)
    np.testing.assert_allclose(
        same.predict(xs, verbose=0), expected, rtol=1e-6, atol=1e-6
    )
    path = str(tmp_path / "task.keras")
    task.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(xs, verbose=0), expected)


def test_each_network_runs_once_per_step():
    t_counter, s_counter = CallCounter(), CallCounter()
    teacher = teacher_net(t_counter)
    student = transfer.build_lwf_student(backbone_net(s_counter), 3, 5)
    distiller = lwf_distiller(teacher, student)
    distiller.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,
    )
    xs, xt, y = data(n=4)
    x = {"student": xs, "teacher": xt}
    distiller.fit(x, y, epochs=1, batch_size=4, verbose=0)
    t_counter.calls = s_counter.calls = 0
    distiller.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert (t_counter.calls, s_counter.calls) == (1, 1)
