"""Documented runtime paths with default arguments: construction inside
`strategy.scope()`, models built under another strategy, `.keras` files
that restore Adam's state, and saves that a failure cannot corrupt.

The 2-replica equality is in tests/test_distribute.py (a subprocess that
splits the CPU); here a one-device `MirroredStrategy` already gives the
models distributed variables. Cost: about 30 s on 2 CPU cores.
"""

import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_jacobian as kj
from keras_jacobian import saving
from tests import tiny

x_data = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")
y_data = np.random.default_rng(1).integers(0, 5, size=(16,)).astype("int32")


def _terms():
    return [
        kj.LogitsDistillation(temperature=4.0, loss="kd"),
        kj.JacobianMatching("teacher_top1"),
    ]


def _distiller(teacher=None, student=None):
    """The README's Distiller: every argument but the models by default."""
    return kj.Distiller(
        teacher if teacher is not None else tiny.conv_net(filters=6, seed=10),
        student if student is not None else tiny.conv_net(seed=20),
        _terms(),
        supervised_loss_weight=1.0,
    )


def _regularized(model=None):
    return kj.JacobianRegularizedModel(
        model if model is not None else tiny.conv_net(seed=20)
    )


def _fit(make, strategy):
    keras.utils.set_random_seed(0)  # the same default seeds in each run
    with strategy.scope():
        model = make()
        model.compile(
            optimizer=keras.optimizers.SGD(0.1), loss=tiny.sparse_ce()
        )
    dataset = tf.data.Dataset.from_tensor_slices((x_data, y_data)).batch(8)
    model.fit(dataset, epochs=1, verbose=0)
    inner = model.student if isinstance(model, kj.Distiller) else model.model
    return inner.get_weights()


@pytest.mark.parametrize("make", [_distiller, _regularized])
def test_built_with_defaults_inside_mirrored_scope(make):
    # Construction probes input gradients; under the scope the variables
    # are distributed, which used to fail with "DistributedVariable.handle
    # is not available outside the replica context".
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0"])
    w_mirrored = _fit(make, mirrored)
    w_one = _fit(make, tf.distribute.get_strategy())
    initial = tiny.conv_net(seed=20).get_weights()
    assert max(np.max(np.abs(a - b)) for a, b in zip(w_one, initial)) > 1e-3
    for a, b in zip(w_mirrored, w_one):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("make", [_distiller, _regularized])
def test_compiled_loss_labels_raise_under_xla_inside_mirrored_scope(make):
    # The monitor's variable is per replica (SyncOnRead) under the
    # strategy; the loss was NaN without an error. (XLA on 2 logical CPUs
    # fails for any Keras model in Keras 3.15; tests/test_distribute.py
    # checks 2 replicas without XLA.)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0"])
    with mirrored.scope():
        model = make()
        model.compile(optimizer="sgd", loss=tiny.sparse_ce(), jit_compile=True)
    labels = y_data[:8].copy()
    labels[[2, 5]] = [5, -3]
    for method in ("fit", "evaluate"):
        with pytest.raises(
            ValueError,
            match=r"compiled loss.*\[0, 5\).*2 label.* -3 to 5.*XLA",
        ):
            getattr(model, method)(x_data[:8], labels, batch_size=8, verbose=0)
    inner = model.student if isinstance(model, kj.Distiller) else model.model
    assert all(np.all(np.isfinite(w)) for w in inner.get_weights())


def _resizing_student():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Resizing(16, 16, interpolation="bilinear")(inputs)
    h = keras.layers.Conv2D(2, 3, activation="tanh")(h)
    outputs = keras.layers.Dense(5)(keras.layers.Flatten()(h))
    return keras.Model(inputs, outputs, name="resizing")


def test_probe_still_reports_inside_mirrored_scope():
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0"])
    with mirrored.scope():
        teacher = tiny.conv_net(filters=6, seed=10)
        with pytest.raises(
            ValueError, match="not differentiable twice.*Resize in the input"
        ):
            _distiller(teacher, _resizing_student())
        with pytest.raises(
            ValueError, match="not differentiable twice.*Resize in the input"
        ):
            _regularized(_resizing_student())


@pytest.mark.parametrize("make", [_distiller, _regularized])
def test_model_built_under_another_strategy_is_refused(make):
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0"])
    outside = tiny.conv_net(seed=20)
    with mirrored.scope():
        inside = tiny.conv_net(seed=20)
        # Built outside the scope, wrapped inside it.
        with pytest.raises(ValueError) as error:
            make(student=outside) if make is _distiller else make(outside)
    message = str(error.value)
    assert "same tf.distribute strategy" in message
    assert "inside the scope of MirroredStrategy" in message
    assert "conv1/kernel" in message  # what was received
    assert "with strategy.scope():" in message  # how to fix it
    assert "colocate_vars_with" not in message
    # Built inside the scope, wrapped outside it.
    with pytest.raises(ValueError, match="outside any `strategy.scope"):
        make(student=inside) if make is _distiller else make(inside)


def test_teacher_built_outside_scope_is_accepted():
    # The teacher is only read, from every replica: it may come from
    # anywhere (e.g. loaded once, before the scope).
    teacher = tiny.conv_net(filters=6, seed=10)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0"])
    w_mirrored = _fit(lambda: _distiller(teacher), mirrored)
    w_one = _fit(lambda: _distiller(teacher), tf.distribute.get_strategy())
    for a, b in zip(w_mirrored, w_one):
        np.testing.assert_allclose(a, b, atol=1e-6)


def _trained_teacher():
    """A teacher trained (and compiled) with Adam, as in the examples."""
    teacher = tiny.conv_net(filters=6, seed=10)
    teacher.compile(optimizer="adam", loss=tiny.sparse_ce())
    teacher.fit(x_data, y_data, batch_size=8, verbose=0)
    return teacher


def _state(model):
    return {v.path: np.array(v) for v in model.optimizer.variables}


@pytest.mark.parametrize("kind", ["distiller", "regularized"])
def test_keras_file_restores_adam_and_training_continues(tmp_path, kind):
    if kind == "distiller":
        model = _distiller(_trained_teacher())
    else:
        # The wrapped model was itself trained (and compiled) before.
        model = _regularized(_trained_teacher())
    model.compile(optimizer="adam", loss=tiny.sparse_ce())
    model.fit(x_data, y_data, batch_size=8, epochs=2, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.saving.load_model(path)
    skipped = [str(w.message) for w in caught if "Skipping" in str(w.message)]
    assert not skipped, skipped
    saved, restored = _state(model), _state(loaded)
    assert set(restored) == set(saved)
    assert any("momentum" in k for k in saved)  # Adam's m and v
    assert any("velocity" in k for k in saved)
    for key, value in saved.items():
        np.testing.assert_array_equal(restored[key], value, err_msg=key)
    assert int(loaded.optimizer.iterations.numpy()) == 4
    # One more step from the file equals one more step uninterrupted.
    batch = (x_data[:8], y_data[:8])
    model.train_on_batch(*batch)
    loaded.train_on_batch(*batch)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def _save_fails_midway(monkeypatch, model):
    """Makes the next save raise after it has begun writing the file."""

    def fail(store):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(model, "save_own_variables", fail)


@pytest.mark.parametrize("kind", ["distiller", "regularized"])
@pytest.mark.parametrize("method", ["save", "save_weights"])
def test_failed_save_leaves_previous_file(tmp_path, monkeypatch, kind, method):
    model = _distiller() if kind == "distiller" else _regularized()
    model.compile(optimizer="adam", loss=tiny.sparse_ce())
    model.fit(x_data, y_data, batch_size=8, verbose=0)
    suffix = ".keras" if method == "save" else ".weights.h5"
    path = str(tmp_path / f"model{suffix}")
    getattr(model, method)(path)
    previous = model.get_weights()
    model.fit(x_data, y_data, batch_size=8, verbose=0)
    with monkeypatch.context() as patch:
        _save_fails_midway(patch, model)
        with pytest.raises(OSError, match="simulated"):
            getattr(model, method)(path)
    assert os.listdir(tmp_path) == [f"model{suffix}"]  # no temporary left
    if method == "save":
        loaded = keras.saving.load_model(path)
    else:
        loaded = _distiller() if kind == "distiller" else _regularized()
        loaded.compile(optimizer="adam", loss=tiny.sparse_ce())
        loaded.optimizer.build(loaded.trainable_variables)
        loaded.load_weights(path)
    for a, b in zip(loaded.get_weights(), previous):
        np.testing.assert_array_equal(a, b)
    # A save that completes replaces the file.
    getattr(model, method)(path)
    assert os.listdir(tmp_path) == [f"model{suffix}"]


def test_replace_atomically_keeps_the_format_ending(tmp_path):
    seen = []

    def write(path):
        seen.append(path)
        with open(path, "w") as f:
            f.write("new")

    target = tmp_path / "a.weights.h5"
    target.write_text("old")
    saving.replace_atomically(target, write)
    assert target.read_text() == "new"
    assert seen[0].endswith(".weights.h5") and seen[0] != str(target)
    assert os.path.dirname(seen[0]) == str(tmp_path)


def test_backup_callback_writes_through_its_atomic_save(tmp_path, monkeypatch):
    # The callback's `save_backup` replaces Keras' private save (see
    # `_compat.BackupAndRestoreHooks`); if Keras renamed that method, the
    # override would silently stop being used.
    replaced = []
    real_replace = os.replace

    def spy(source, target):
        replaced.append(os.path.basename(target))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", spy)
    model = _distiller()
    model.compile(optimizer="adam", loss=tiny.sparse_ce())
    backup = kj.callbacks.BackupAndRestore(
        str(tmp_path / "backup"), save_freq=1, delete_checkpoint=False
    )
    # Left by a save that a kill cut short (its process is dead); the next
    # run removes it.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    os.makedirs(tmp_path / "backup")
    name = saving.temporary_name("latest.weights.h5", pid=int(dead.stdout))
    (tmp_path / "backup" / name).write_bytes(b"partial")
    model.fit(x_data, y_data, batch_size=8, callbacks=[backup], verbose=0)
    assert replaced.count("training_metadata.json") == 2  # 2 steps
    assert "latest.weights.h5" in replaced
    assert sorted(os.listdir(tmp_path / "backup")) == [
        "latest.weights.h5",
        "training_metadata.json",
    ]
