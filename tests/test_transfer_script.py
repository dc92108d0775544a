"""examples/transfer.py as a user runs it: resumed runs, the teacher it
is given, and the advice of its refusals.

Cost on 2 CPU cores: about a minute (a few one-epoch students of 2
filters on digits).
"""

import json
import pathlib
import sys
import warnings

import keras
import numpy as np
import pytest
from absl import app
from absl import flags
from absl.testing import flagsaver

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import distill  # noqa: E402
import experiment  # noqa: E402
import reporting  # noqa: E402
import teachers  # noqa: E402
import transfer  # noqa: E402

from keras_jacobian.experiments import data as data_lib  # noqa: E402
from tests.test_examples import TINY  # noqa: E402


class _Crash(keras.callbacks.Callback):
    """Ends the first run with an error after its first epoch's backup,
    as a kill ends the process."""

    def on_epoch_end(self, epoch, logs=None):
        raise RuntimeError("crash")


def _runs(out):
    payload = json.loads((out / "transfer.json").read_text())
    return {r["method"]: r["accuracy"] for r in payload["runs"]}, payload


def _crash_first_run(monkeypatch):
    """Makes the first student's `experiment.train` of the test end in a
    crash after its first epoch's backup; returns [its run name]."""
    train = experiment.train
    crashed = []

    def crash_first_run(model, dataset, **kwargs):
        if crashed or kwargs["run_name"] == "teacher":
            return train(model, dataset, **kwargs)
        crashed.append(kwargs["run_name"])
        callbacks = experiment.callbacks
        monkeypatch.setattr(
            experiment,
            "callbacks",
            lambda *args: callbacks(*args) + [_Crash()],
        )
        try:
            return train(model, dataset, **kwargs)
        finally:
            monkeypatch.setattr(experiment, "callbacks", callbacks)

    monkeypatch.setattr(experiment, "train", crash_first_run)
    monkeypatch.setattr(reporting, "RESUMED_RUNS", [])
    return crashed


def test_backups_of_other_settings_are_not_resumed(tmp_path, monkeypatch):
    """A rerun with another learning rate resumed the other run's
    backup, and another width failed with Keras' load traceback."""
    settings = dict(
        TINY,
        student_epochs=3,
        methods=["lwf"],
        select_on_validation=False,
        teacher_path=str(tmp_path / "teacher.keras"),
        output_dir=str(tmp_path / "o"),
        backup_dir=str(tmp_path / "backup"),
    )
    _crash_first_run(monkeypatch)
    with flagsaver.flagsaver(**settings):
        with pytest.raises(RuntimeError, match="crash"):
            transfer.main(["transfer.py"])
    for change in (dict(learning_rate=0.01), dict(student_width=4)):
        name = next(iter(change))
        with flagsaver.flagsaver(**dict(settings, **change)):
            with pytest.raises(
                app.UsageError, match=f"--{name}: .* there, .* now"
            ):
                transfer.main(["transfer.py"])
    with flagsaver.flagsaver(**settings):
        transfer.main(["transfer.py"])  # the same flags resume
    _, payload = _runs(tmp_path / "o")
    assert [r["run"] for r in payload["resumed_runs"]] == ["lwf_spc5_s0"]


def test_a_resumed_run_leaves_the_later_runs_as_uninterrupted(
    tmp_path, monkeypatch
):
    """A run resumed from --backup_dir used to leave its restored epoch on
    the shared student: every later run of the invocation trained for
    fewer epochs and scored differently."""
    teacher = tmp_path / "teacher.keras"
    settings = dict(
        TINY,
        student_epochs=4,
        student_width=8,
        methods=["none", "lwf"],
        select_on_validation=False,
        teacher_path=str(teacher),
    )
    with flagsaver.flagsaver(output_dir=str(tmp_path / "plain"), **settings):
        transfer.main(["transfer.py"])
    plain, _ = _runs(tmp_path / "plain")
    backup = tmp_path / "backup"
    crashed = _crash_first_run(monkeypatch)
    out = tmp_path / "resumed"
    with flagsaver.flagsaver(
        output_dir=str(out), backup_dir=str(backup), **settings
    ):
        with pytest.raises(RuntimeError, match="crash"):
            transfer.main(["transfer.py"])
        assert crashed == ["none_spc5_s0"]
        transfer.main(["transfer.py"])
    resumed, payload = _runs(out)
    assert resumed["lwf"] == plain["lwf"]
    assert payload["resumed_runs"] == [{"run": "none_spc5_s0", "epoch": 1}]
    assert (
        "Resumed from a --backup_dir backup: none_spc5_s0"
        in (out / "transfer.md").read_text()
    )


def _folder(root, classes, grey, splits=("train", "test"), count=3):
    """root/<split>/<class>/*.png, grey (mode L) or colour images."""
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(count):
                shape = (8, 8, 1) if grey else (8, 8, 3)
                image = rng.integers(0, 255, shape).astype("uint8")
                keras.utils.save_img(folder / f"{i}.png", image)
    return root


def _model(channels, name="teacher", classes=2):
    inputs = keras.Input((8, 8, channels))
    x = keras.layers.Conv2D(2, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(x), name=name)


def test_empty_list_flags_are_refused_not_read_as_defaults(tmp_path):
    for flag in ("methods", "samples_per_class"):
        with flagsaver.flagsaver(output_dir=str(tmp_path), **{flag: []}):
            with pytest.raises(app.UsageError, match=f"empty list.*--{flag}="):
                transfer.main(["transfer.py"])
            with pytest.raises(app.UsageError, match="empty list"):
                distill.main(["distill.py"])


@pytest.mark.parametrize("value", ["0", "-1e-3", "nan"])
def test_learning_rate_must_be_positive(value):
    with flagsaver.flagsaver():
        with pytest.raises(flags.IllegalFlagValueError, match="> 0"):
            flags.FLAGS(["transfer.py", f"--learning_rate={value}"])


def test_teacher_flags_that_would_be_ignored_are_refused(tmp_path):
    saved = tmp_path / "mine.keras"
    _model(1).save(saved)
    missing = str(tmp_path / "mnie.keras")
    cases = [
        # A mistyped path would pretrain a new teacher on [0, 1] images
        # and feed it the standardised ones.
        (
            dict(teacher_path=missing, teacher_preprocessing="standardize"),
            "does not exist, so a new teacher would be pretrained",
        ),
        (
            dict(teacher_weights=str(saved), teacher_path=missing),
            "--teacher_path only with --teacher_weights=pretrain",
        ),
        (
            dict(
                teacher_weights=str(saved),
                teacher_preprocessing="application",
            ),
            "Expected --teacher_arch with --teacher_preprocessing=application",
        ),
    ]
    for settings, message in cases:
        with flagsaver.flagsaver(output_dir=str(tmp_path / "o"), **settings):
            with pytest.raises(app.UsageError, match=message):
                transfer.main(["transfer.py"])
    assert not (tmp_path / "o").exists()
    assert not pathlib.Path(missing).exists()


def test_a_missing_teacher_path_says_a_teacher_is_pretrained(tmp_path, capsys):
    path = tmp_path / "new.keras"
    with flagsaver.flagsaver(
        teacher_path=str(path),
        output_dir=str(tmp_path / "o"),
        methods=["lwf"],
        select_on_validation=False,
        **TINY,
    ):
        transfer.main(["transfer.py"])
    printed = capsys.readouterr().out
    assert f"No teacher at {path}: pretraining a VGG-9" in printed
    assert path.exists()
    # A 1-epoch teacher of width 2 is close to chance; the run says so.
    payload = json.loads((tmp_path / "o" / "transfer.json").read_text())
    accuracy = payload["teacher_source_accuracy"]
    assert accuracy < 40.0
    assert payload["teacher_warnings"] == transfer.chance_warnings(accuracy, 5)
    assert "WARNING: the teacher scores" in printed


def test_application_preprocessing_of_a_grey_teacher_is_refused_early():
    preprocess = teachers.preprocessing("application", "resnet50", 0.0, 1.0)
    with pytest.raises(app.UsageError, match="1 channel.*on 3 channels"):
        transfer.check_preprocessing(
            preprocess, "application", "resnet50", 8, 1
        )
    transfer.check_preprocessing(preprocess, "application", "resnet50", 8, 3)


def test_a_grey_image_folder_serves_a_grey_teacher(tmp_path):
    grey = data_lib.load_dataset(
        f"folder:{_folder(tmp_path / 'grey', ['a', 'b'], grey=True)}"
    )
    assert grey.input_shape == (8, 8, 3)  # decoded as colour
    assert transfer.is_grey(grey)
    transfer.check_teacher_input(_model(1), grey, (8, 8))
    one = transfer.to_channels(grey.train_images, 1)
    np.testing.assert_array_equal(one[..., 0], grey.train_images[..., 2])
    colour = data_lib.load_dataset(
        f"folder:{_folder(tmp_path / 'colour', ['a', 'b'], grey=False)}"
    )
    assert not transfer.is_grey(colour)
    with pytest.raises(
        app.UsageError,
        match=r"images of 3 channels, as .* has\. Received: a teacher of "
        r"input shape \(8, 8, 1\)\. A grey teacher .* these are in colour",
    ):
        transfer.check_teacher_input(_model(1), colour, (8, 8))
    with pytest.raises(app.UsageError, match=r"images of 3 channels"):
        transfer.check_teacher_input(_model(2), colour, (8, 8))


def _digits_teacher(scale):
    """A softmax regression on digits 0-4, trained on `scale(images)`."""
    with flagsaver.flagsaver(source_classes=["0", "1", "2", "3", "4"]):
        source, _ = transfer.split_tasks(data_lib.load_dataset("digits"))
    keras.utils.set_random_seed(0)
    inputs = keras.Input(source.input_shape)
    x = keras.layers.Flatten()(inputs)
    teacher = keras.Model(inputs, keras.layers.Dense(5)(x))
    teacher.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    teacher.fit(
        scale(source.train_images), source.train_labels, epochs=5, verbose=0
    )
    return teacher, source


def test_a_teacher_fed_other_inputs_than_it_learnt_is_reported():
    teacher, source = _digits_teacher(lambda x: 255.0 * x - 127.5)
    stats = (np.zeros(1, "float32"), np.ones(1, "float32"))

    def accuracy(scale):
        logits = teacher.predict(scale(source.test_images), verbose=0)
        return 100.0 * np.mean(np.argmax(logits, -1) == source.test_labels)

    right = accuracy(lambda x: 255.0 * x - 127.5)
    wrong = accuracy(lambda x: x)
    assert right > wrong + 5.0
    with flagsaver.flagsaver(
        source_classes=["0", "1", "2", "3", "4"], batch_size=32
    ):
        (warning,) = [
            w
            for w in transfer.teacher_warnings(
                teacher, source, "unit", wrong, stats, (8, 8), 1
            )
            if "with --teacher_preprocessing" in w
        ]
        assert f"up to {right:.2f}% on its source-task test images " in warning
        named = warning.split("--teacher_preprocessing=")[1].split(",")[0]
        assert "centered255" in named.split(" (within")[0].split(" or ")
        assert not [
            w
            for w in transfer.teacher_warnings(
                teacher, source, "centered255", right, stats, (8, 8), 1
            )
        ]


def test_chance_warnings_against_the_number_of_classes():
    assert transfer.chance_warnings(18.39, 5)  # chance: 20%
    assert not transfer.chance_warnings(41.0, 5)  # above twice chance
    assert transfer.chance_warnings(49.0, 2)  # capped at 50%
    assert not transfer.chance_warnings(5.1, 40)  # chance: 2.5%


def test_refusals_name_classes_by_their_names(tmp_path, capsys):
    root = _folder(tmp_path / "few", ["cat", "dog"], grey=False, count=1)
    data = data_lib.load_dataset(f"folder:{root}")
    with flagsaver.flagsaver(validation_fraction=0.2):
        with pytest.raises(
            app.UsageError,
            match=r"Received: 1 image\(s\) in class\(es\) 'cat', 'dog'\. "
            r"Pass --samples_per_class=2 ",
        ):
            transfer.validation_split(
                data.train_images, data.train_labels, 0, data.class_names
            )
    with pytest.raises(
        app.UsageError,
        match=r"Received: 1 of class 'cat'.* --samples_per_class=1 or "
        r"fewer, or --samples_per_class=all",
    ):
        experiment.subset_indices(data, 5, 0)
    # A class with training images only: tested on the others, said.
    _folder(tmp_path / "few", ["yak"], grey=False, splits=("train",))
    with flagsaver.flagsaver(dataset=f"folder:{root}"):
        experiment.load_data()
    assert "no test images of ['yak']" in capsys.readouterr().out
    # A class with test images only.
    _folder(tmp_path / "few", ["emu"], grey=False, splits=("test",))
    with flagsaver.flagsaver(dataset=f"folder:{root}"):
        with pytest.raises(
            app.UsageError, match=r"none of \['emu'\] in its training split"
        ):
            experiment.load_data()


def test_teacher_files_and_layers_that_do_not_fit_are_refused(tmp_path):
    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    path = tmp_path / "layer.keras"
    keras.saving.save_model(layer, path)
    with pytest.raises(app.UsageError, match="holding a Dense"):
        teachers.load_teacher_file(str(path), "Fix it")
    weights = tmp_path / "small.weights.h5"
    _model(3).save_weights(weights)
    with flagsaver.flagsaver(
        teacher_weights=str(weights), teacher_image_size=32, teacher_alpha=0.35
    ):
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            with pytest.raises(
                app.UsageError,
                match="weights of a MobileNetV2 of input.*mobilenet_v2, the "
                "default.*could not be loaded.*expected",
            ):
                teachers.build_teacher("mobilenet_v2")
        assert not [w for w in shown if "Skipping" in str(w.message)]
    student = _model(3, "student")
    with pytest.raises(
        app.UsageError,
        match=r"'convv', which the student .* conv, .*"
        r"Did you mean 'conv'\?",
    ):
        transfer.check_attention_pairs(_model(3), student, [("conv", "convv")])
    with pytest.raises(app.UsageError, match=r"'c1', which the teacher"):
        transfer.check_attention_pairs(_model(3), student, [("c1", "conv")])


def test_intervals_are_cut_at_the_range_of_accuracies():
    values = [100.0, 100.0, 70.0]
    half = 4.302652729911275 * np.std(values, ddof=1) / np.sqrt(3)  # t(2)
    cell = reporting.mean_interval(values, bounds=(0.0, 100.0))
    assert cell["high"] == 100.0
    assert cell["low"] == pytest.approx(90.0 - half)
    assert cell["half_width"] == pytest.approx(half)
    records = [
        {"method": m, "samples_per_class": "5", "seed": s, "accuracy": a}
        for m, accs in (("a", values), ("b", [0.0, 0.0, 30.0]))
        for s, a in enumerate(accs)
    ]
    summary = reporting.summarize(
        records, "method", "samples_per_class", bounds=(0.0, 100.0)
    )
    assert summary["cells"]["a"]["5"]["high"] == 100.0
    assert summary["cells"]["b"]["5"]["low"] == 0.0
    (item,) = reporting.paired_differences(
        records, [("a", "b")], "samples_per_class", bounds=(-100.0, 100.0)
    )
    assert item["columns"]["5"]["high"] == 100.0


def test_repeated_list_values_are_refused():
    # A repeated method or size counted one run twice ("84.28 ± 0.00").
    for flag, values in (
        ("methods", ["lwf", "lwf"]),
        ("samples_per_class", ["5", "all", "all"]),
    ):
        with flagsaver.flagsaver(**{flag: values}):
            with pytest.raises(app.UsageError, match="repeating (lwf|all)"):
                transfer.check_flags()


def test_a_pretrained_teacher_takes_unit_inputs_only(tmp_path):
    path = tmp_path / "pretrained.keras"
    _model(1).save(path)
    with flagsaver.flagsaver(
        teacher_path=str(path), teacher_preprocessing="centered255"
    ):
        with pytest.raises(app.UsageError, match="a teacher pretrained here"):
            transfer.check_flags()


def test_attention_layers_without_spatial_axes_are_a_usage_error(tmp_path):
    saved = tmp_path / "teacher.keras"
    _model(1, classes=5).save(saved)
    with flagsaver.flagsaver(
        teacher_weights=str(saved),
        teacher_preprocessing="unit",
        source_classes=["0", "1", "2", "3", "4"],
        attention_pairs=["conv:features"],
        methods=["lwf_at"],
        select_on_validation=False,
        output_dir=str(tmp_path / "o"),
        **TINY,
    ):
        with pytest.raises(app.UsageError, match="spatial axes"):
            transfer.main(["transfer.py"])


def test_markdown_shows_where_an_interval_is_cut():
    summary = reporting.summarize(
        [
            {"method": "a", "k": "5", "accuracy": a}
            for a in (100.0, 100.0, 70.0)
        ],
        "method",
        "k",
        bounds=(0.0, 100.0),
    )
    half = summary["cells"]["a"]["5"]["half_width"]
    table = reporting.markdown_table(summary, "method", "k")
    assert f"90.00 ± {half:.2f} (to 100.00)" in table
