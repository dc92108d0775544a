"""Tests of `keras_jacobian.tuning` and of examples/tune.py.

Cost on 2 CPU cores: about 40 s (two one-epoch trials, then a resumed
search that trains nothing).
"""

import json
import os
import pathlib
import shlex
import sys

import keras
import keras_tuner as kt
import numpy as np
import pytest
from absl.testing import flagsaver

from keras_jacobian import tuning
from keras_jacobian.terms.jacobian import JacobianMatching
from keras_jacobian.terms.logits import LogitsDistillation
from tests import tiny

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import tune  # noqa: E402


def _hypermodel(**kwargs):
    teacher = tiny.conv_net(classes=3, filters=2, seed=0)
    return tuning.DistillerHyperModel(
        teacher, lambda: tiny.conv_net(classes=3, filters=2, seed=5), **kwargs
    )


def _fixed(**values):
    hp = kt.HyperParameters()
    for name, value in values.items():
        hp.Fixed(name, value)
    return hp


def test_build_follows_the_hyperparameters():
    hypermodel = _hypermodel(temperatures=(2.0, 3.0))
    hp = _fixed(
        supervised_loss_weight=0.5,
        use_activation=True,
        activation_weight=0.3,
        temperature=3.0,
        use_jacobian=True,
        jacobian_weight=7.0,
        jacobian_target="label",
    )
    distiller = hypermodel.build(hp)
    assert distiller.built
    kinds = [type(t) for t in distiller.distillation_losses]
    assert kinds == [LogitsDistillation, JacobianMatching]
    assert distiller.distillation_losses[0].temperature == 3.0
    assert distiller.distillation_losses[1].target == "label"
    weights = [float(w.numpy()) for w in distiller.term_weights]
    np.testing.assert_allclose(weights, [0.3, 7.0])
    # The independent weight, not Keras' convex mix.
    assert distiller.supervised_loss_weight == 0.5
    assert distiller.student_loss_weight is None


def test_terms_switched_off_are_left_out():
    hypermodel = _hypermodel()
    hp = _fixed(
        supervised_loss_weight=1.0, use_activation=False, use_jacobian=True
    )
    distiller = hypermodel.build(hp)
    assert [type(t) for t in distiller.distillation_losses] == [
        JacobianMatching
    ]
    # The settings of a term switched off are not sampled.
    assert "activation_weight" not in hp.values
    assert "temperature" not in hp.values
    assert hp.values["jacobian_target"] == "teacher_top1"

    off = _fixed(
        supervised_loss_weight=1.0, use_activation=False, use_jacobian=False
    )
    distiller = hypermodel.build(off)
    assert [float(w.numpy()) for w in distiller.term_weights] == [0.0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weight_range": (0.0, 1.0)}, "log-scale"),
        ({"jacobian_targets": ("nope",)}, "target"),
        ({"temperatures": (0.0,)}, "temperatures"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _hypermodel(**kwargs)


def test_supervised_loss_weights_are_searched():
    hypermodel = _hypermodel(supervised_loss_weights=(0.0, 2.0))
    hp = kt.HyperParameters()
    distiller = hypermodel.build(hp)
    assert hp.values["supervised_loss_weight"] == 2.0
    assert "student_loss_weight" not in hp.values
    # Above 1: the independent weight, not Keras' mix in [0, 1].
    assert distiller.supervised_loss_weight == 2.0
    assert distiller.student_loss_weight is None


def test_old_student_loss_weights_argument_names_the_new_one():
    with pytest.raises(TypeError) as info:
        _hypermodel(student_loss_weights=(0.0, 1.0))
    message = str(info.value)
    assert "supervised_loss_weights" in message
    assert "convex mix" in message
    assert "Received: student_loss_weights=(0.0, 1.0)" in message
    with pytest.raises(TypeError, match=r"Received: \['weights'\]"):
        _hypermodel(weights=(1.0,))
    with pytest.raises(ValueError, match="supervised_loss_weights=\\(-1.0,\\)"):
        _hypermodel(supervised_loss_weights=(-1.0,))


def test_distill_command_sets_the_supervised_loss_weight():
    values = {
        "supervised_loss_weight": 0.5,
        "use_activation": False,
        "use_jacobian": True,
        "jacobian_weight": 1.2876,
        "jacobian_target": "random",
    }
    old = dict(values)
    old["student_loss_weight"] = old.pop("supervised_loss_weight")
    with flagsaver.flagsaver():
        command = tune.distill_command(values, 5)
        # Results of a search saved before the rename mean the same.
        assert tune.distill_command(old, 5) == command
    assert "--student_loss_weight" not in command
    assert "--methods=jac_ce" in command
    # The command runs as the user runs it: its flags parse.
    args = shlex.split(command)[2:]
    with flagsaver.flagsaver():
        tune.FLAGS(["distill.py", *args])
        assert tune.FLAGS.supervised_loss_weight == 0.5
        assert tune.FLAGS.jacobian_weight == pytest.approx(1.288)


def test_build_tuner_kinds(tmp_path):
    hypermodel = _hypermodel()
    expected = {
        "random": kt.RandomSearch,
        "bayesian": kt.BayesianOptimization,
        "hyperband": kt.Hyperband,
    }
    for kind, cls in expected.items():
        tuner = tuning.build_tuner(
            kind, hypermodel, str(tmp_path), kind, max_trials=2, max_epochs=2
        )
        assert isinstance(tuner, cls)
        assert tuner.oracle.objective.name == "val_accuracy"
        assert tuner.oracle.objective.direction == "max"
    with pytest.raises(ValueError, match="grid"):
        tuning.build_tuner("grid", hypermodel, str(tmp_path))


@pytest.mark.slow
def test_tune_script_searches_and_resumes(tmp_path, capsys):
    out = tmp_path / "out"
    settings = dict(
        tuner="random",
        max_trials=2,
        tuning_epochs=1,
        min_steps_per_epoch=2,
        batch_size=16,
        teacher_width=2,
        student_width=2,
        teacher_epochs=1,
        samples_per_class=["2"],
        output_dir=str(out),
    )
    with flagsaver.flagsaver(**settings):
        tune.main(["tune.py"])
    best = json.loads((out / "best.json").read_text())
    assert best["num_trials"] == 2
    assert best["command"].startswith("python examples/distill.py ")
    assert "--samples_per_class=2" in best["command"]
    # The command repeats the training setup the search ran with.
    for flag in ("--min_steps_per_epoch=2", "--batch_size=16"):
        assert flag in best["command"]
    printed = capsys.readouterr().out
    assert "Best of 2 trials" in printed
    trial_files = sorted(
        (out / "search" / "distill").glob("trial_*/trial.json")
    )
    assert len(trial_files) == 2
    scores = [json.loads(f.read_text())["score"] for f in trial_files]
    assert best["score"] == pytest.approx(max(scores))
    stamps = [os.stat(f).st_mtime_ns for f in trial_files]

    # The same directory again: the finished trials are reused, not rerun.
    keras.backend.clear_session()
    with flagsaver.flagsaver(**settings):
        tune.main(["tune.py"])
    again = json.loads((out / "best.json").read_text())
    assert again["num_trials"] == 2
    # Tied scores may order the best trials differently after reloading.
    assert again["score"] == pytest.approx(best["score"])
    assert [os.stat(f).st_mtime_ns for f in trial_files] == stamps


def test_student_of_unknown_spatial_size_tunes():
    def fully_convolutional():
        inputs = keras.Input((None, None, 1))
        h = keras.layers.Conv2D(2, 3, padding="same", activation="tanh")(inputs)
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model(inputs, keras.layers.Dense(3)(h))

    teacher = tiny.conv_net(classes=3, filters=2, seed=0)
    hypermodel = tuning.DistillerHyperModel(teacher, fully_convolutional)
    distiller = hypermodel.build(kt.HyperParameters())
    x = tiny.images(n=4)
    y = np.arange(4) % 3
    history = distiller.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize(
    "validation, match",
    [
        (None, "Expected `validation_data`"),
        ("empty", "Received 0 examples"),
    ],
)
def test_search_without_validation_examples_stops(tmp_path, validation, match):
    x = tiny.images(n=4)
    y = np.arange(4) % 3
    kwargs = {}
    if validation == "empty":
        kwargs["validation_data"] = (x[4:], y[4:])
    tuner = tuning.build_tuner(
        "random", _hypermodel(), str(tmp_path), max_trials=1, seed=0
    )
    with pytest.raises(kt.errors.FatalValueError, match=match):
        tuner.search(x, y, epochs=1, batch_size=2, verbose=0, **kwargs)


def test_best_values_of_a_failed_search_is_an_error(tmp_path):
    x = tiny.images(n=4)
    y = np.arange(4) % 3
    tuner = tuning.build_tuner(
        "random", _hypermodel(), str(tmp_path), max_trials=1, seed=0
    )
    # Labels outside [0, 3): the trial fails inside keras-tuner.
    tuner.search(
        x, y + 5, validation_data=(x, y), epochs=1, batch_size=2, verbose=0
    )
    with pytest.raises(ValueError, match="finished with a score"):
        tuning.best_values(tuner)
