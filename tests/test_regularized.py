"""The teacher-free Jacobian-norm penalty."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_jacobian as kj
from tests import tiny


def frobenius(model, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = model(x, training=False)
    jac = tape.batch_jacobian(out, x).numpy()
    return np.sum(jac.reshape(len(jac), -1) ** 2, axis=-1)


def test_exact_penalty_is_squared_frobenius_norm():
    model = tiny.conv_net(seed=2)
    x = tiny.images(5)
    robust = kj.JacobianRegularizedModel(model, weight=0.5, target="all")
    robust.compile(loss=tiny.sparse_ce())
    y = np.arange(5)
    logs = robust.evaluate(x, y, batch_size=5, verbose=0, return_dict=True)
    expected = np.mean(frobenius(model, x))
    np.testing.assert_allclose(logs["jacobian_penalty"], expected, rtol=1e-5)
    ce = tiny.sparse_ce()(y, model.predict(x, verbose=0)).numpy()
    np.testing.assert_allclose(logs["task_loss"], ce, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], ce + 0.5 * expected, rtol=1e-5)


def test_random_estimate_is_unbiased():
    model = tiny.conv_net(seed=2)
    x = tiny.images(3)
    robust = kj.JacobianRegularizedModel(model, target="random")
    # Each of 3,000 copies of each image draws its own projection.
    copies = tf.constant(np.tile(x, (3000, 1, 1, 1)))
    estimate, _ = tf.function(robust.jacobian_penalty)(copies)
    per_image = np.mean(np.reshape(estimate.numpy(), (3000, 3)), axis=0)
    np.testing.assert_allclose(per_image, frobenius(model, x), rtol=0.05)


def test_linear_model_penalty_is_weight_norm():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(4, 3)), rng.normal(size=3)
    model = tiny.linear_net(w, b)
    robust = kj.JacobianRegularizedModel(model, target="all")
    penalty, _ = robust.jacobian_penalty(rng.normal(size=(2, 4)))
    np.testing.assert_allclose(penalty, [np.sum(w**2)] * 2, rtol=1e-6)


def test_penalty_trains_and_lowers_the_jacobian_norm():
    x = tiny.images(32)
    y = np.random.default_rng(0).integers(0, 5, 32)
    norms = {}
    for weight in (0.0, 1.0):
        model = tiny.conv_net(seed=4)
        robust = kj.JacobianRegularizedModel(model, weight=weight, seed=1)
        robust.compile(keras.optimizers.Adam(1e-2), loss=tiny.sparse_ce())
        robust.fit(x, y, epochs=5, batch_size=16, verbose=0)
        norms[weight] = np.mean(frobenius(model, x))
    assert norms[1.0] < 0.5 * norms[0.0], norms


def test_round_trip(tmp_path):
    model = tiny.conv_net(seed=2)
    robust = kj.JacobianRegularizedModel(model, weight=0.1, seed=3)
    robust.compile(optimizer="adam", loss=tiny.sparse_ce())
    x = tiny.images(8)
    robust.fit(x, np.arange(8) % 5, epochs=1, verbose=0)
    path = tmp_path / "robust.keras"
    robust.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, kj.JacobianRegularizedModel)
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), robust.predict(x, verbose=0)
    )
    assert float(loaded.weight_variable.numpy()) == pytest.approx(0.1)
    assert loaded.target == "random"


def test_bad_arguments():
    with pytest.raises(ValueError, match="must be one of"):
        kj.JacobianRegularizedModel(tiny.conv_net(), target="top1")
    with pytest.raises(ValueError, match="weight"):
        kj.JacobianRegularizedModel(tiny.conv_net(), weight=-1)
    with pytest.raises(ValueError, match="keras.Model"):
        kj.JacobianRegularizedModel(lambda x: x)
