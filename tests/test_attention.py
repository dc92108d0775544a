"""Attention maps, attention transfer and attention-map Jacobians.

Every value is checked against NumPy or a plain `tf.GradientTape`
computation written here without the library. Cost: about 25 s.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_jacobian as kj
from keras_jacobian import attention_maps
from keras_jacobian.terms.attention import AttentionJacobianMatching
from keras_jacobian.terms.attention import AttentionTransfer
from keras_jacobian.terms.features import FeatureDistillation
from tests import tiny


def sub_model(model, name):
    return keras.Model(model.input, model.get_layer(name).output)


def np_map(features, p=2):
    return np.mean(np.abs(features) ** p, axis=-1)


def np_normalized(maps):
    flat = maps.reshape(len(maps), -1)
    return flat / np.linalg.norm(flat, axis=1, keepdims=True)


def evaluate_terms(distiller, x):
    distiller.compile(optimizer="sgd")
    return {k: float(v) for k, v in distiller.test_step((x,)).items()}


# Pure functions.


@pytest.mark.parametrize("p", [2, 3, 1.5])
def test_attention_map_matches_numpy(p):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 4, 5, 3)).astype("float32")
    spatial = attention_maps.spatial_attention_map(features, p).numpy()
    np.testing.assert_allclose(spatial, np_map(features, p), rtol=1e-5)
    flat = attention_maps.attention_map(features, p).numpy()
    np.testing.assert_allclose(
        flat, np_normalized(np_map(features, p)), rtol=1e-5
    )


def test_attention_map_of_zero_features_is_zero_with_finite_gradient():
    features = tf.zeros((2, 3, 3, 4))
    with tf.GradientTape() as tape:
        tape.watch(features)
        flat = attention_maps.attention_map(features)
        total = tf.reduce_sum(flat)
    grad = tape.gradient(total, features)
    np.testing.assert_array_equal(flat.numpy(), 0.0)
    assert np.all(np.isfinite(grad.numpy()))


@pytest.mark.parametrize(
    "source,target,repeat,block",
    [
        ((8, 6), (4, 3), 1, 2),  # average pooling
        ((5, 5), (3, 3), 3, 5),  # area: repeat x3 to 15, pool by 5
        ((2, 3), (4, 6), 2, 1),  # upscaling repeats cells
    ],
)
def test_resize_maps_matches_area_resampling(source, target, repeat, block):
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(2,) + source).astype("float32")
    fine = np.repeat(np.repeat(maps, repeat, axis=1), repeat, axis=2)
    h, w = target
    expected = fine.reshape(2, h, block, w, block).mean(axis=(2, 4))
    got = attention_maps.resize_maps(maps, target).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_resize_features_matches_average_pooling():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(2, 4, 4, 3)).astype("float32")
    expected = features.reshape(2, 2, 2, 2, 2, 3).mean(axis=(2, 4))
    got = attention_maps.resize_features(features, (2, 2)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_resize_has_second_derivatives():
    x = tf.constant(np.random.default_rng(3).normal(size=(1, 4, 4)))
    x = tf.cast(x, "float32")
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = tf.reduce_sum(attention_maps.resize_maps(x, (2, 2)) ** 3)
        g = inner.gradient(y, x)
        z = tf.reduce_sum(g)
    hessian_sum = outer.gradient(z, x)
    # d/dx sum_ij 3 r_ij^2 dr_ij/dx, r = avg pool: 6 r_ij * (1/4) * (1/4)*4
    pooled = x.numpy().reshape(1, 2, 2, 2, 2).mean(axis=(2, 4))
    expected = np.repeat(np.repeat(6 * pooled / 4, 2, axis=1), 2, axis=2)
    np.testing.assert_allclose(hessian_sum.numpy(), expected, rtol=1e-5)


# Attention transfer.


@pytest.mark.parametrize("student_stride", [1, 2])
def test_attention_transfer_value(student_stride):
    teacher = tiny.named_conv_net("t", 5)
    student = tiny.named_conv_net("s", 3, second_stride=student_stride)
    pairs = [("tc1", "sc1"), ("tc2", "sc2")]
    distiller = kj.Distiller(
        teacher, student, [AttentionTransfer(pairs)], supervised_loss_weight=1.0
    )
    x = np.random.default_rng(4).normal(size=(3, 8, 8, 3)).astype("float32")
    got = evaluate_terms(distiller, x)["attention_transfer_loss"]

    expected = np.zeros(3)
    for t_name, s_name in pairs:
        t_map = np_map(sub_model(teacher, t_name).predict(x, verbose=0))
        s_map = np_map(sub_model(student, s_name).predict(x, verbose=0))
        if t_map.shape != s_map.shape:
            h, w = s_map.shape[1:]
            t_map = t_map.reshape(3, h, 2, w, 2).mean(axis=(2, 4))
        diff = np_normalized(t_map) - np_normalized(s_map)
        expected += np.sum(diff**2, axis=1)
    np.testing.assert_allclose(got, expected.mean(), rtol=1e-4)


# Attention-map Jacobians.


def plain_attention_row(model, layer, x, pool=1, positions=None):
    """Input gradient of the map entry at `positions` (default: argmax)."""
    features_model = sub_model(model, layer)
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        a = features_model(x, training=False)
        q = tf.reduce_mean(a * a, axis=-1, keepdims=True)
        if pool > 1:
            q = tf.nn.avg_pool2d(q, pool, pool, "VALID")
        flat = tf.reshape(q, [x.shape[0], -1])
        if positions is None:
            positions = tf.argmax(flat, axis=-1, output_type="int32")
        entry = tf.gather(flat, positions, axis=1, batch_dims=1)
        total = tf.reduce_sum(entry)
    return tape.gradient(total, x).numpy(), np.asarray(positions)


@pytest.mark.parametrize("student_stride", [1, 2])
def test_attention_jacobian_rows_and_loss(student_stride):
    teacher = tiny.named_conv_net("t", 5)
    student = tiny.named_conv_net("s", 3, second_stride=student_stride)
    pairs = [("tc1", "sc1"), ("tc2", "sc2")]
    term = AttentionJacobianMatching(pairs)
    distiller = kj.Distiller(
        teacher, student, [term], supervised_loss_weight=1.0
    )
    x = np.random.default_rng(5).normal(size=(3, 8, 8, 3)).astype("float32")
    targets = distiller.teacher_targets(tf.constant(x))[0]
    expected_loss = np.zeros(3)
    for i, (t_name, s_name) in enumerate(pairs):
        pool = student_stride if i == 1 else 1
        t_row, positions = plain_attention_row(teacher, t_name, x, pool)
        np.testing.assert_array_equal(targets[f"positions_{i}"], positions)
        np.testing.assert_allclose(
            targets[f"rows_{i}"].numpy()[:, 0], t_row, rtol=1e-4, atol=1e-6
        )
        s_row, _ = plain_attention_row(student, s_name, x, 1, positions)
        t_flat = np_normalized(t_row)
        s_flat = np_normalized(s_row)
        expected_loss += np.sum((t_flat - s_flat) ** 2, axis=1)
    got = evaluate_terms(distiller, x)["attention_jacobian_matching_loss"]
    np.testing.assert_allclose(got, expected_loss.mean(), rtol=1e-4)


def test_attention_jacobian_row_matches_finite_differences():
    keras.config.set_floatx("float64")
    try:
        teacher = tiny.named_conv_net("t", 4, size=5)
        student = tiny.named_conv_net("s", 2, size=5)
        distiller = kj.Distiller(
            teacher,
            student,
            [AttentionJacobianMatching([("tc2", "sc2")])],
            supervised_loss_weight=1.0,
        )
        x = np.random.default_rng(6).normal(size=(1, 5, 5, 3))
        targets = distiller.teacher_targets(tf.constant(x))[0]
        row = targets["rows_0"].numpy()[0, 0]
        position = int(targets["positions_0"][0])
        features_model = sub_model(teacher, "tc2")

        def entry(values):
            a = features_model(values, training=False).numpy()
            return np.mean(a**2, axis=-1).reshape(-1)[position]

        eps = 1e-5
        numeric = np.zeros_like(x)
        for index in np.ndindex(x.shape):
            step = np.zeros_like(x)
            step[index] = eps
            numeric[index] = (entry(x + step) - entry(x - step)) / (2 * eps)
    finally:
        keras.config.set_floatx("float32")
    np.testing.assert_allclose(row, numeric[0], rtol=1e-3, atol=1e-5)


# Gradients reach the student (and the adapter) through each term.


# Each term trains only some of the student's layers, which Keras warns about.
@pytest.mark.filterwarnings("ignore:Gradients do not exist:UserWarning")
@pytest.mark.parametrize(
    "term,trained",
    [
        (AttentionTransfer([("tc1", "sc1")]), ["sc1"]),
        (AttentionJacobianMatching([("tc1", "sc1")]), ["sc1"]),
        (
            AttentionJacobianMatching([("tc2", "sc2")], normalize=False),
            ["sc1", "sc2"],
        ),
        (
            FeatureDistillation(
                teacher_layer_name="tc2",
                student_layer_name="sc2",
                adapter="conv",
            ),
            ["sc1", "sc2", "feature_distillation_adapter"],
        ),
    ],
    ids=["at", "ajm_c1", "ajm_c2_raw", "feature_adapter"],
)
def test_term_trains_student_kernels(term, trained):
    teacher = tiny.named_conv_net("t", 5)
    student = tiny.named_conv_net("s", 3)
    distiller = kj.Distiller(
        teacher, student, [term], supervised_loss_weight=0.0
    )
    distiller.compile(optimizer=keras.optimizers.SGD(1.0), run_eagerly=True)
    x = np.random.default_rng(7).normal(size=(4, 8, 8, 3)).astype("float32")
    before = {v.path: v.numpy().copy() for v in distiller.trainable_variables}
    t_before = [v.numpy().copy() for v in teacher.weights]
    distiller.fit(x, epochs=1, batch_size=4, verbose=0)
    for variable in distiller.trainable_variables:
        if "kernel" not in variable.path:
            continue
        changed = np.abs(variable.numpy() - before[variable.path]).max()
        layer = variable.path.split("/")[0]
        if layer in trained:
            assert changed > 0, variable.path
        else:
            assert changed == 0, variable.path
    for old, new in zip(t_before, teacher.weights):
        np.testing.assert_array_equal(old, new.numpy())


# Serialization of a distiller using every term.


@pytest.mark.slow
def test_keras_round_trip_with_every_term(tmp_path):
    teacher = tiny.named_conv_net("t", 5)
    student = tiny.named_conv_net("s", 3)
    terms = [
        kj.LogitsDistillation(temperature=2.0, loss="kd"),
        kj.JacobianMatching(),
        kj.NoiseDistillation(0.1),
        FeatureDistillation(
            teacher_layer_name="tc2", student_layer_name="sc2", adapter="auto"
        ),
        AttentionTransfer([("tc1", "sc1"), ("tc2", "sc2")]),
        AttentionJacobianMatching([("tc1", "sc1")], p=2),
    ]
    distiller = kj.Distiller(
        teacher,
        student,
        terms,
        distillation_loss_weights=[1.0, 0.5, 1.0, 1.0, 2.0, 0.5],
        seed=3,
        supervised_loss_weight=1.0,
    )
    distiller.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(8)
    x = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, size=8)
    distiller.fit(x, y, epochs=1, batch_size=4, verbose=0)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.models.load_model(path)

    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), distiller.predict(x, verbose=0)
    )
    assert [type(t) for t in loaded.distillation_losses] == [
        type(t) for t in terms
    ]
    assert loaded.distillation_losses[3].adapter_layer is not None
    np.testing.assert_array_equal(
        loaded.distillation_losses[3].adapter_layer.kernel.numpy(),
        distiller.distillation_losses[3].adapter_layer.kernel.numpy(),
    )
    np.testing.assert_allclose(
        [float(w.numpy()) for w in loaded.term_weights],
        [1.0, 0.5, 1.0, 1.0, 2.0, 0.5],
    )
    assert not loaded.teacher.trainable
    assert len(loaded.optimizer.variables) == len(distiller.optimizer.variables)
    t_before = [v.numpy().copy() for v in loaded.teacher.weights]
    s_before = [v.numpy().copy() for v in loaded.student.weights]
    history = loaded.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for old, new in zip(t_before, loaded.teacher.weights):
        np.testing.assert_array_equal(old, new.numpy())
    assert any(
        np.abs(old - new.numpy()).max() > 0
        for old, new in zip(s_before, loaded.student.weights)
    )
