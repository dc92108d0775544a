"""TensorBoard loggers, the loss-weight scheduler and the transfer grid.

Event files are read back with TensorBoard's own reader. Cost: about 20 s.
"""

import io
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from matplotlib import image as mpimg
from tensorboard.backend.event_processing import event_accumulator

import keras_jacobian as kj
from keras_jacobian import callbacks
from keras_jacobian.distribute.strategies import is_chief
from keras_jacobian.distribute.strategies import is_chief_task
from keras_jacobian.experiments import plotting
from keras_jacobian.terms.attention import AttentionTransfer
from tests import tiny


def data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 3)).astype("float32")
    return x, rng.integers(0, 3, size=n)


def make_distiller(weights=(1.0, 1.0), run_eagerly=True):
    distiller = kj.Distiller(
        tiny.named_conv_net("t", 4, second_stride=2),
        tiny.named_conv_net("s", 3, second_stride=2),
        [
            kj.LogitsDistillation(temperature=4.0, loss="kd"),
            AttentionTransfer([("tc2", "sc2")]),
        ],
        distillation_loss_weights=list(weights),
        supervised_loss_weight=1.0,
    )
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=run_eagerly,
    )
    return distiller


def read_events(log_dir):
    accumulator = event_accumulator.EventAccumulator(
        str(log_dir),
        size_guidance={
            event_accumulator.IMAGES: 0,
            event_accumulator.TENSORS: 0,
        },
    )
    accumulator.Reload()
    return accumulator


def decode(image_event):
    return mpimg.imread(io.BytesIO(image_event.encoded_image_string))


def scalar_values(accumulator, tag):
    return [
        float(tf.make_ndarray(event.tensor_proto))
        for event in accumulator.Tensors(tag)
    ]


def test_attention_and_saliency_loggers_write_readable_events(tmp_path):
    distiller = make_distiller()
    x, y = data()
    attention_dir, saliency_dir = tmp_path / "attention", tmp_path / "sal"
    loggers = [
        callbacks.AttentionMapLogger(
            str(attention_dir),
            x,
            [("tc1", "sc1"), ("tc2", "sc2")],
            every_n_epochs=2,
            max_images=3,
        ),
        callbacks.JacobianSaliencyLogger(str(saliency_dir), x, max_images=2),
    ]
    history = distiller.fit(
        x, y, epochs=2, batch_size=8, verbose=0, callbacks=loggers
    )

    events = read_events(attention_dir)
    tags = sorted(events.Tags()["tensors"])
    assert tags == [
        "attention/sc1/student",
        "attention/sc2/student",
        "attention/tc1/teacher",
        "attention/tc2/teacher",
    ]
    # every_n_epochs=2: written once, after epoch index 1. Image summaries
    # are stored as tensors [width, height, png...].
    for tag, size in (
        ("attention/tc1/teacher", 8),
        ("attention/sc2/student", 4),
    ):
        (event,) = events.Tensors(tag)
        assert event.step == 1
        values = tf.make_ndarray(event.tensor_proto)
        assert len(values) == 2 + 3
        assert (int(values[0]), int(values[1])) == (size, size)
        decoded = tf.io.decode_png(values[2]).numpy()
        assert decoded.shape == (size, size, 1)
    # The teacher's first map, against a plain computation.
    (event,) = events.Tensors("attention/tc1/teacher")
    png = tf.io.decode_png(tf.make_ndarray(event.tensor_proto)[2]).numpy()
    features = keras.Model(
        distiller.teacher.input, distiller.teacher.get_layer("tc1").output
    )(x[:1])
    q = np.mean(np.square(features.numpy()[0]), axis=-1)
    np.testing.assert_allclose(png[..., 0] / 255.0, q / q.max(), atol=0.01)

    saliency = read_events(saliency_dir)
    assert {"saliency/teacher", "saliency/student"} <= set(
        saliency.Tags()["tensors"]
    )
    assert len(saliency.Tensors("saliency/teacher")) == 2
    cosines = scalar_values(saliency, "saliency/jacobian_cosine")
    assert len(cosines) == 2
    np.testing.assert_allclose(
        cosines[-1], history.history["jacobian_cosine"][-1], rtol=1e-6
    )
    np.testing.assert_allclose(
        cosines[-1], plain_cosine(distiller, x[:2]), rtol=1e-4
    )


def plain_cosine(distiller, x):
    x = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        t = distiller.teacher(x)
        s = distiller.student(x)
        index = tf.argmax(t, axis=-1)
        t_pick = tf.gather(t, index, axis=1, batch_dims=1)
        s_pick = tf.gather(s, index, axis=1, batch_dims=1)
    gt = tape.gradient(t_pick, x).numpy().reshape(len(x), -1)
    gs = tape.gradient(s_pick, x).numpy().reshape(len(x), -1)
    cos = np.sum(gt * gs, axis=1) / (
        np.linalg.norm(gt, axis=1) * np.linalg.norm(gs, axis=1)
    )
    return float(np.mean(cos))


def test_scheduler_turns_a_term_on_and_logs_its_weight():
    # The learning rate is 0, so the networks do not change and the loss
    # only moves by the scheduled term's contribution. Graph mode: the
    # compiled step must read the new weight without retracing.
    distiller = make_distiller(run_eagerly=False)
    x, y = data()
    scheduler = callbacks.LossWeightScheduler(
        "attention_transfer", callbacks.step([1], [0.0, 1.0])
    )
    history = distiller.fit(
        x, y, epochs=2, batch_size=8, verbose=0, callbacks=[scheduler]
    ).history
    assert history["attention_transfer_weight"] == [0.0, 1.0]
    assert history["attention_transfer_loss"][0] == 0.0
    term = history["attention_transfer_loss"][1]
    assert term > 0
    np.testing.assert_allclose(
        history["loss"][1] - history["loss"][0], term, rtol=1e-5
    )


@pytest.mark.parametrize(
    "term,key",
    [(0, "logits_distillation_weight"), ("student", "supervised_loss_weight")],
)
def test_scheduler_by_index_and_student(term, key):
    distiller = make_distiller()
    x, y = data()
    scheduler = callbacks.LossWeightScheduler(
        term, callbacks.ramp(0.0, 1.0, 0, 2)
    )
    history = distiller.fit(
        x, y, epochs=2, batch_size=8, verbose=0, callbacks=[scheduler]
    ).history
    assert history[key] == [0.0, 0.5]
    if term == "student":
        assert history["student_loss"][0] == 0.0
        assert history["student_loss"][1] > 0


def test_student_schedule_under_keras_convex_mix():
    # Built with Keras' `student_loss_weight`: the schedule sets w, and
    # the terms get 1 - w (checked by hand on the logged parts).
    x, y = data()
    distiller = kj.Distiller(
        tiny.named_conv_net("t", 4, second_stride=2),
        tiny.named_conv_net("s", 3, second_stride=2),
        [kj.LogitsDistillation(temperature=4.0, loss="kd")],
        student_loss_weight=0.5,
    )
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    scheduler = callbacks.LossWeightScheduler("student", lambda e: 0.25 * e)
    history = distiller.fit(
        x, y, epochs=3, batch_size=8, verbose=0, callbacks=[scheduler]
    ).history
    assert history["student_loss_weight"] == [0.0, 0.25, 0.5]
    assert "supervised_loss_weight" not in history
    assert distiller.student_loss_weight == 0.5
    for w, student, terms, loss in zip(
        history["student_loss_weight"],
        history["student_loss"],
        history["distillation_loss"],
        history["loss"],
    ):
        assert student > 0 or w == 0
        np.testing.assert_allclose(
            loss, w * student + (1 - w) * terms, rtol=1e-5
        )

    # Above 1 the terms would get a negative weight: refused.
    too_big = callbacks.LossWeightScheduler("student", lambda e: 1.5)
    with pytest.raises(ValueError) as info:
        distiller.fit(x, y, epochs=1, verbose=0, callbacks=[too_big])
    message = str(info.value)
    assert "student_loss_weight=1.5" in message
    assert "epoch 0" in message
    assert "supervised_loss_weight" in message
    assert distiller.student_loss_weight == 0.5

    # With an independent weight, 1.5 is a weight like any other.
    independent = make_distiller()
    scheduler = callbacks.LossWeightScheduler("student", lambda e: 1.5)
    history = independent.fit(
        x, y, epochs=1, batch_size=8, verbose=0, callbacks=[scheduler]
    ).history
    assert history["supervised_loss_weight"] == [1.5]
    assert "student_loss_weight" not in history
    assert independent.supervised_loss_weight == 1.5


def test_scheduler_errors():
    distiller = make_distiller()
    with pytest.raises(ValueError, match="Available terms"):
        callbacks.LossWeightScheduler("nope", lambda e: 1.0).set_model(
            distiller
        )
    with pytest.raises(ValueError, match="out of range"):
        callbacks.LossWeightScheduler(5, lambda e: 1.0).set_model(distiller)
    with pytest.raises(ValueError, match="function"):
        callbacks.LossWeightScheduler("student", 1.0)


def test_schedule_helpers():
    assert [callbacks.warmup(2.0, 2)(e) for e in range(4)] == [
        1.0,
        2.0,
        2.0,
        2.0,
    ]
    assert [callbacks.warmup(1.0, 1, delay=2)(e) for e in range(4)] == [
        0.0,
        0.0,
        1.0,
        1.0,
    ]
    assert [callbacks.ramp(1.0, 0.0, 1, 3)(e) for e in range(5)] == [
        1.0,
        1.0,
        0.5,
        0.0,
        0.0,
    ]
    assert [callbacks.step([2, 4], [0, 1, 3])(e) for e in range(6)] == [
        0.0,
        0.0,
        1.0,
        1.0,
        3.0,
        3.0,
    ]
    with pytest.raises(ValueError):
        callbacks.step([2], [1.0])


def test_chief_detection():
    assert is_chief(None)
    assert is_chief_task(None)
    cluster = tf.train.ClusterSpec({"worker": ["localhost:1", "localhost:2"]})
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver
    assert is_chief_task(resolver(cluster, task_type="worker", task_id=0))
    assert not is_chief_task(resolver(cluster, task_type="worker", task_id=1))
    with_chief = tf.train.ClusterSpec(
        {"chief": ["localhost:0"], "worker": ["localhost:1"]}
    )
    assert is_chief_task(resolver(with_chief, task_type="chief", task_id=0))
    assert not is_chief_task(
        resolver(with_chief, task_type="worker", task_id=0)
    )
    # A strategy, or a model whose strategy it is (0.1.0's signature).
    worker1 = types.SimpleNamespace(
        cluster_resolver=resolver(cluster, task_type="worker", task_id=1)
    )
    assert not is_chief(worker1)
    assert not is_chief(types.SimpleNamespace(distribute_strategy=worker1))


def test_save_transfer_grid(tmp_path):
    distiller = make_distiller()
    x, _ = data()
    path = plotting.save_transfer_grid(
        str(tmp_path / "grid.png"), distiller, x, max_images=3
    )
    image = mpimg.imread(path)
    # 3 rows; columns: input, teacher and student attention of the one
    # pair taken from the AttentionTransfer term, two saliency maps.
    assert image.shape[:2] == (480, 800)


def test_save_transfer_grid_leaves_the_matplotlib_backend_alone(tmp_path):
    import subprocess
    import sys
    import textwrap

    # A fresh process, as in a notebook: the backend chosen before the call
    # must be the backend after it (no `matplotlib.use`).
    code = textwrap.dedent(
        f"""
        import matplotlib
        matplotlib.use("svg")
        import keras
        from keras_jacobian.experiments import plotting
        import keras_jacobian as kj
        import numpy as np
        def net(name):
            x = keras.Input((6, 6, 1))
            h = keras.layers.Conv2D(2, 3, padding="same", name="conv")(x)
            y = keras.layers.Dense(3)(keras.layers.Flatten()(h))
            return keras.Model(x, y, name=name)
        d = kj.Distiller(net("t"), net("s"), kj.AttentionTransfer(
            [("conv", "conv")]))
        plotting.save_transfer_grid(
            {str(tmp_path / "g.png")!r}, d, np.zeros((2, 6, 6, 1), "float32"))
        print("BACKEND", matplotlib.get_backend())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "BACKEND svg" in out.stdout
    assert (tmp_path / "g.png").exists()
