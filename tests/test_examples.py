"""End-to-end runs of the example scripts on tiny settings.

Cost on 2 CPU cores: about 2 minutes in all, 3 on a busy machine (each
script trains a few one-epoch models of a few filters on 8x8 images).
"""

import dataclasses
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import app
from absl.testing import flagsaver

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import distill  # noqa: E402
import experiment  # noqa: E402
import robustness  # noqa: E402
import teachers  # noqa: E402
import transfer  # noqa: E402

from keras_jacobian.experiments import models  # noqa: E402

TINY = dict(
    teacher_width=2,
    student_width=2,
    teacher_epochs=1,
    student_epochs=1,
    min_steps_per_epoch=2,
    batch_size=16,
    seeds=["0"],
)


def _write_folder(root, classes=3, per_split=(4, 3), size=(10, 12)):
    """Writes root/<split>/<class>/*.png with class-dependent colours."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "test"), per_split):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                image = rng.integers(0, 60, size + (3,)).astype("uint8")
                image[..., c] += 150
                keras.utils.save_img(folder / f"{i}.png", image)
    return root


def _check_outputs(out, stem, rows, cols):
    table = (out / f"{stem}.md").read_text()
    for label in rows.values():
        assert label in table
    payload = json.loads((out / f"{stem}.json").read_text())
    summary = payload["summary"]
    assert summary["rows"] == list(rows)
    assert summary["columns"] == cols
    for row in rows:
        for col in cols:
            values = [
                r["accuracy"]
                for r in payload["runs"]
                if r["method"] == row and str(r[_col_key(stem)]) == col
            ]
            cell = summary["cells"][row][col]
            assert cell["values"] == values
            np.testing.assert_allclose(cell["mean"], np.mean(values))
            np.testing.assert_allclose(
                cell["std"], np.std(values, ddof=len(values) > 1)
            )
            assert 0.0 <= cell["mean"] <= 100.0
    png = (out / f"{stem}.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    return payload


def _col_key(stem):
    return "sigma" if stem == "robustness" else "samples_per_class"


@pytest.mark.slow
def test_distill_on_digits_and_teacher_reuse(tmp_path, capsys):
    out = tmp_path / "out"
    with flagsaver.flagsaver(
        methods=["ce", "act_jac_ce", "act"],
        samples_per_class=["1", "2"],
        output_dir=str(out),
        **dict(TINY, seeds=["0", "1"]),
    ):
        distill.main(["distill.py"])
        printed = capsys.readouterr().out
        teacher = out / "teacher.keras"
        stamp = os.stat(teacher).st_mtime_ns
        payload = _check_outputs(
            out,
            "results",
            {
                "ce": "cross-entropy only",
                "act_jac_ce": "activations + Jacobians + CE",
                "act": "activations only",
            },
            ["1", "2"],
        )
        assert "| cross-entropy only |" in printed
        # Only the paper's pairs are compared; none has both methods here.
        assert payload["differences"] == []
        # A second run reuses the saved teacher, which gives the same
        # teacher accuracy, and trains the same students.
        with flagsaver.flagsaver(samples_per_class=["1"], methods=["ce"]):
            distill.main(["distill.py"])
        assert os.stat(teacher).st_mtime_ns == stamp
        again = json.loads((out / "results.json").read_text())
    assert again["teacher_accuracy"] == payload["teacher_accuracy"]
    first = [
        r["accuracy"]
        for r in payload["runs"]
        if r["method"] == "ce" and r["samples_per_class"] == "1"
    ]
    assert again["runs"][0]["accuracy"] == pytest.approx(first[0])


@pytest.mark.slow
def test_validation_runs_never_read_the_test_split(tmp_path, monkeypatch):
    """`--evaluate_on=validation` (defaults are chosen this way) reads the
    training and validation splits only, the teacher's score included."""
    load = distill.load_data

    def without_test_split(*args, **kwargs):
        data = load(*args, **kwargs)
        return dataclasses.replace(data, test_images=None, test_labels=None)

    monkeypatch.setattr(distill, "load_data", without_test_split)
    out = tmp_path / "out"
    with flagsaver.flagsaver(
        methods=["ce"],
        samples_per_class=["1"],
        evaluate_on="validation",
        output_dir=str(out),
        **TINY,
    ):
        distill.main(["distill.py"])
    payload = json.loads((out / "results.json").read_text())
    assert 0.0 <= payload["teacher_accuracy"] <= 100.0
    assert len(payload["runs"]) == 1


@pytest.mark.slow
def test_distill_reports_paired_differences(tmp_path):
    out = tmp_path / "out"
    with flagsaver.flagsaver(
        methods=["act_ce", "act_jac_ce"],
        samples_per_class=["1"],
        output_dir=str(out),
        **dict(TINY, seeds=["0", "1", "2"]),
    ):
        distill.main(["distill.py"])
    payload = json.loads((out / "results.json").read_text())
    by = {(r["method"], r["seed"]): r["accuracy"] for r in payload["runs"]}
    diffs = np.array([by["act_jac_ce", s] - by["act_ce", s] for s in range(3)])
    (item,) = payload["differences"]
    assert (item["method"], item["baseline"]) == ("act_jac_ce", "act_ce")
    cell = item["columns"]["1"]
    half = T_TABLE[2] * np.std(diffs, ddof=1) / np.sqrt(3)
    np.testing.assert_allclose(cell["mean"], diffs.mean(), atol=1e-9)
    np.testing.assert_allclose(cell["half_width"], half, rtol=1e-4)
    table = (out / "results.md").read_text()
    assert "activations + Jacobians + CE − activations + CE" in table
    assert f"{diffs.mean():+.2f} [" in table


@pytest.mark.slow
def test_distill_on_tfds_mock_data(tmp_path):
    out = tmp_path / "out"
    with tfds.testing.mock_data(num_examples=60):
        with flagsaver.flagsaver(
            dataset="mnist",
            data_dir=str(tmp_path / "tfds"),
            image_size=8,
            methods=["act_jac"],
            samples_per_class=["2"],
            output_dir=str(out),
            backup_dir=str(tmp_path / "backup"),
            tensorboard_dir=str(tmp_path / "tb"),
            **TINY,
        ):
            distill.main(["distill.py"])
    payload = _check_outputs(
        out, "results", {"act_jac": "activations + Jacobians only"}, ["2"]
    )
    assert payload["flags"]["dataset"] == "mnist"
    assert any((tmp_path / "tb").iterdir())


@pytest.mark.slow
def test_robustness_on_image_folder(tmp_path):
    root = _write_folder(tmp_path / "images")
    out = tmp_path / "out"
    with flagsaver.flagsaver(
        dataset=f"folder:{root}",
        image_size=8,
        model_width=2,
        epochs=1,
        min_steps_per_epoch=2,
        batch_size=8,
        seeds=["0"],
        sigmas=["0", "0.5"],
        output_dir=str(out),
    ):
        robustness.main(["robustness.py"])
    _check_outputs(
        out,
        "robustness",
        dict(robustness.LABELS),
        ["0", "0.5"],
    )


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        ({"methods": ["act_foo"]}, app.UsageError, "act_foo"),
        ({"methods": ["ce_ce"]}, app.UsageError, "ce_ce"),
        ({"samples_per_class": ["0"]}, app.UsageError, "positive"),
        ({"samples_per_class": ["ten"]}, app.UsageError, "ten"),
        ({"seeds": ["x"]}, app.UsageError, "--seeds"),
        ({"seeds": ["0", "0", "1"]}, app.UsageError, "repeating 0"),
        ({"teacher_arch": "vgg99"}, app.UsageError, "vgg99"),
        ({"dataset": "no_such_dataset"}, app.UsageError, "catalog"),
        ({"samples_per_class": ["100000"]}, app.UsageError, "or fewer"),
    ],
)
def test_distill_bad_flags(tmp_path, overrides, error, match):
    flags_ = dict(TINY, output_dir=str(tmp_path), student_epochs=0)
    flags_.update(overrides)
    with flagsaver.flagsaver(**flags_):
        with pytest.raises(error, match=match):
            distill.main(["distill.py"])


def test_missing_dataset_says_how_to_provide_it(tmp_path):
    with flagsaver.flagsaver(
        dataset="cifar10", data_dir=str(tmp_path), output_dir=str(tmp_path)
    ):
        with pytest.raises(SystemExit, match="tfds build cifar10"):
            distill.main(["distill.py"])
        with pytest.raises(SystemExit, match="data_dir"):
            robustness.main(["robustness.py"])


def test_robustness_bad_flags(tmp_path):
    with flagsaver.flagsaver(methods=["l1"], output_dir=str(tmp_path)):
        with pytest.raises(app.UsageError, match="l1"):
            robustness.main(["robustness.py"])
    with flagsaver.flagsaver(sigmas=["-1"], output_dir=str(tmp_path)):
        with pytest.raises(app.UsageError, match="sigmas"):
            robustness.main(["robustness.py"])


def test_accuracy_and_summary_against_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(13, 3)).astype("float32")
    y = rng.integers(0, 4, 13).astype("int32")
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(4)(inputs))
    w, b = model.get_weights()
    expected = 100.0 * np.mean(np.argmax(x @ w + b, axis=-1) == y)
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(5)
    assert experiment.accuracy(model, ds) == pytest.approx(expected)

    records = [
        {"m": "a", "k": 1, "accuracy": 10.0},
        {"m": "a", "k": 1, "accuracy": 20.0},
        {"m": "b", "k": 1, "accuracy": 40.0},
    ]
    summary = experiment.summarize(records, "m", "k")
    assert summary["cells"]["a"]["1"]["mean"] == 15.0
    # Sample standard deviation (ddof=1): sqrt(((10-15)^2 + (20-15)^2) / 1).
    assert summary["cells"]["a"]["1"]["std"] == pytest.approx(np.sqrt(50.0))
    assert summary["cells"]["b"]["1"]["std"] == 0.0
    # Two seeds: half-width t(0.975, 1) * s / sqrt(2), with s = sqrt(50)
    # and the tabulated t = 12.7062.
    half = 12.7062 * np.sqrt(50.0) / np.sqrt(2.0)
    assert summary["cells"]["a"]["1"]["half_width"] == pytest.approx(
        half, rel=1e-4
    )
    assert summary["cells"]["b"]["1"]["half_width"] is None
    table = experiment.markdown_table(summary, "m", "k")
    assert f"| a | 15.00 ± {half:.2f} |" in table
    assert "| b | **40.00** |" in table


def test_parse_method_and_weights():
    assert distill.parse_method("act_jac_ce") == {"act", "jac", "ce"}
    assert distill.canonical_method({"ce", "act"}) == "act_ce"
    with flagsaver.flagsaver(
        supervised_loss_weight=0.5, activation_weight=2.0, jacobian_weight=3.0
    ):
        assert distill.method_weights({"ce"}) == (0.5, 0.0, 0.0, 0.0)
        assert distill.method_weights({"act", "jac"}) == (0.0, 2.0, 3.0, 0.0)


@pytest.mark.slow
def test_distill_weights_the_cross_entropy_independently(tmp_path, monkeypatch):
    # --supervised_loss_weight=2 (above Keras' convex range): the loss of
    # "ce" is 2 * cross-entropy, the cross-entropy computed with NumPy.
    fit = distill.fit
    seen = []

    def checked_fit(model, images, labels, *args, teacher=False, **kwargs):
        if not teacher:
            x, y = images[:8], labels[:8]
            loss = model.evaluate(x, y, return_dict=True, verbose=0)["loss"]
            logits = model.student.predict(x, verbose=0).astype("float64")
            logits -= logits.max(axis=-1, keepdims=True)
            log_p = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
            ce = -log_p[np.arange(len(y)), y].mean()
            seen.append(
                (model.supervised_loss_weight, model.student_loss_weight)
            )
            np.testing.assert_allclose(loss, 2.0 * ce, rtol=1e-5)
        return fit(model, images, labels, *args, teacher=teacher, **kwargs)

    monkeypatch.setattr(distill, "fit", checked_fit)
    argv = [
        "distill.py",
        "--supervised_loss_weight=2",
        "--methods=ce",
        "--samples_per_class=1",
        f"--output_dir={tmp_path}",
    ]
    argv += [
        f"--{k}={','.join(v) if isinstance(v, list) else v}"
        for k, v in dict(TINY, min_steps_per_epoch=1).items()
    ]
    with flagsaver.flagsaver():
        distill.main(distill.FLAGS(argv))
    assert seen == [(2.0, None)]
    recorded = json.loads((tmp_path / "results.json").read_text())["flags"]
    assert recorded["supervised_loss_weight"] == 2.0
    assert "student_loss_weight" not in recorded


@pytest.mark.slow
def test_transfer_on_image_folder(tmp_path):
    # The default run: the method is chosen on a validation split (one
    # image of the five per class), with a teacher at another resolution.
    root = _write_folder(tmp_path / "images", classes=3, per_split=(5, 2))
    out = tmp_path / "out"
    with flagsaver.flagsaver(
        dataset=f"folder:{root}",
        image_size=16,
        teacher_weights="none",
        teacher_arch="mobilenet_v2",
        teacher_alpha=0.35,
        teacher_classes=7,
        teacher_image_size=32,
        student_image_size=8,
        methods=["lwf_at_jac"],
        samples_per_class=["5"],
        output_dir=str(out),
        **TINY,
    ):
        transfer.main(["transfer.py"])
    payload = _check_outputs(
        out,
        "transfer",
        {"none": "no transfer", "selected": "chosen on validation"},
        ["5"],
    )
    (selection,) = payload["selections"]
    assert list(selection["validation_accuracy"]) == ["none", "lwf_at_jac"]
    assert selection["validation_images"] == 3


def test_transfer_bad_flags(tmp_path):
    with flagsaver.flagsaver(methods=["fine_tune"], output_dir=str(tmp_path)):
        with pytest.raises(app.UsageError, match="fine_tune"):
            transfer.main(["transfer.py"])
    with flagsaver.flagsaver(
        teacher_weights=str(tmp_path / "missing.h5"), output_dir=str(tmp_path)
    ):
        with pytest.raises(SystemExit, match="does not exist"):
            transfer.main(["transfer.py"])
    with flagsaver.flagsaver(
        attention_pairs=["block1_out"], output_dir=str(tmp_path)
    ):
        with pytest.raises(app.UsageError, match="attention_pairs"):
            transfer.main(["transfer.py"])
    with flagsaver.flagsaver(samples_per_class=["1"], output_dir=str(tmp_path)):
        # 1 image per class cannot hold out a validation image.
        with pytest.raises(
            app.UsageError, match="at least 2 training images.*noselect"
        ):
            transfer.main(["transfer.py"])
    assert not list(tmp_path.glob("teacher_*"))


# Two-sided 95% critical values of Student's t, from a printed table.
T_TABLE = {1: 12.7062, 2: 4.3027, 4: 2.7764, 9: 2.2622, 29: 2.0452}


def test_t_critical_against_a_printed_table():
    for dof, t in T_TABLE.items():
        assert experiment.t_critical(dof) == pytest.approx(t, abs=1e-4)
    with pytest.raises(ValueError, match="dof"):
        experiment.t_critical(0)


def test_mean_interval_by_hand():
    # Mean 3.2; squared deviations sum to 14.8, so s^2 = 14.8 / 4 = 3.7.
    got = experiment.mean_interval([1.0, 2.0, 3.0, 4.0, 6.0])
    half = T_TABLE[4] * math.sqrt(3.7 / 5)
    assert got["mean"] == pytest.approx(3.2)
    assert got["n"] == 5
    assert got["half_width"] == pytest.approx(half, rel=1e-4)
    assert got["low"] == pytest.approx(3.2 - half, rel=1e-4)
    assert got["high"] == pytest.approx(3.2 + half, rel=1e-4)
    one = experiment.mean_interval([7.0])
    assert one["mean"] == 7.0
    assert one["low"] is one["high"] is one["half_width"] is None
    with pytest.raises(ValueError, match="at least one"):
        experiment.mean_interval([])


def test_mean_interval_covers_the_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    samples = rng.normal(10.0, 3.0, size=(2000, 5))
    covered = 0
    for row in samples:
        interval = experiment.mean_interval(row)
        covered += interval["low"] <= 10.0 <= interval["high"]
    # Binomial(2000, 0.95) has a standard deviation of 0.5%.
    assert 0.935 < covered / 2000 < 0.965


def test_paired_differences_pair_runs_by_seed():
    acc = {"a": {0: 50.0, 1: 60.0, 2: 70.0}, "b": {2: 64.0, 0: 45.0, 1: 56.0}}
    records = [
        {"method": m, "k": "1", "seed": seed, "accuracy": value}
        for m in ("b", "a")
        for seed, value in acc[m].items()
    ]
    (item,) = experiment.paired_differences(
        records, [("a", "b"), ("a", "absent")], "k"
    )
    cell = item["columns"]["1"]
    diffs = np.array([5.0, 4.0, 6.0])
    half = T_TABLE[2] * np.std(diffs, ddof=1) / np.sqrt(3)
    assert cell["seeds"] == [0, 1, 2]
    assert cell["differences"] == [5.0, 4.0, 6.0]
    assert cell["mean"] == pytest.approx(5.0)
    assert cell["half_width"] == pytest.approx(half, rel=1e-4)
    table = experiment.differences_table([item], ["1"], "k")
    # The interval excludes zero: in bold.
    assert f"| a − b | **+5.00 [{5 - half:+.2f}, {5 + half:+.2f}]** |" in table
    item["columns"]["1"].update(low=-1.0, high=11.0)
    table = experiment.differences_table([item], ["1"], "k")
    assert "| a − b | +5.00 [-1.00, +11.00] |" in table
    records.append({"method": "a", "k": "1", "seed": 3, "accuracy": 1.0})
    with pytest.raises(ValueError, match="same seeds"):
        experiment.paired_differences(records, [("a", "b")], "k")


def test_results_are_replaced_atomically(tmp_path, monkeypatch):
    summary = experiment.summarize(
        [{"method": "a", "k": 1, "accuracy": 1.0}], "method", "k"
    )
    experiment.write_results(tmp_path, "r", summary, [], "old table")
    assert (tmp_path / "r.md").read_text() == "old table\n"

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        experiment.write_results(tmp_path, "r", summary, [], "new table")
    assert (tmp_path / "r.md").read_text() == "old table\n"
    json.loads((tmp_path / "r.json").read_text())
    monkeypatch.undo()
    experiment.write_results(tmp_path, "r", summary, [], "new table")
    assert (tmp_path / "r.md").read_text() == "new table\n"


def test_progress_prints_one_line_per_run_with_time_left(capsys):
    progress = experiment.Progress(3)
    for i in range(3):
        progress.run_done(f"run {i}")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("[1/3] run 0; about ")
    assert lines[0].endswith(" left")
    assert lines[2] == "[3/3] run 2; about 0 s left"
    assert experiment.format_duration(125) == "2 min 05 s"


def test_distill_defaults_are_the_few_image_regime():
    assert distill.augment() is False
    assert distill.learning_rate() == 1e-3
    assert list(distill.DEFAULT_SAMPLES_PER_CLASS) == ["1", "5"]
    assert len(distill.FLAGS.seeds) == 5


def _conv_outputs_in_training_mode(model, images):
    """Each BatchNorm input on `images`, the moving statistics untouched."""
    layers = models.batch_norm_layers(model)
    saved = [(b.moving_mean.numpy(), b.moving_variance.numpy()) for b in layers]
    probe = keras.Model(model.input, [b.input for b in layers])
    outputs = [np.asarray(z) for z in probe(images, training=True)]
    for b, (mean, variance) in zip(layers, saved):
        b.moving_mean.assign(mean)
        b.moving_variance.assign(variance)
    return layers, outputs


def test_distill_batch_norm_student_is_evaluated_with_its_statistics():
    """After training, a BatchNorm student's moving statistics are those of
    its training images: the moving averages lag the last ~100 steps,
    which ruined Jacobian-matched students at inference."""
    with flagsaver.flagsaver(student_batch_norm=True, **TINY):
        data = distill.load_data()
        strategy = experiment.get_strategy("default")
        teacher = distill.build_model("vgg4", 2, data, "teacher")
        distiller = distill.build_distiller(teacher, data, strategy)
        images, labels = distill.subset(data, 1, 0)
        distill.fit(distiller, images, labels, data, 1, "run", 0)
        # The 10 images fit in one batch of 16: their statistics are those
        # of every training batch.
        (x, _) = next(iter(distill.pipeline(data, images, labels, False)))
    layers, outputs = _conv_outputs_in_training_mode(distiller.student, x)
    assert len(layers) == 3
    for layer, z in zip(layers, outputs):
        z = z.reshape(-1, z.shape[-1])
        np.testing.assert_allclose(
            layer.moving_mean, z.mean(0), rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(
            layer.moving_variance, z.var(0), rtol=1e-3, atol=1e-5
        )


@pytest.mark.slow
def test_distill_prints_progress_and_nothing_else(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "distill.py"),
            "--methods=act_ce,act_jac_ce",
            "--samples_per_class=1",
            "--seeds=0,1",
            "--teacher_width=2",
            "--student_width=2",
            "--teacher_epochs=1",
            "--student_epochs=1",
            "--min_steps_per_epoch=2",
            f"--output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"Teacher test accuracy: [\d.]+% \(\d+ s\)", lines[0])
    runs = [line for line in lines if line.startswith("[")]
    assert len(runs) == 4
    for i, line in enumerate(runs):
        assert re.fullmatch(
            rf"\[{i + 1}/4\] .*: test accuracy [\d.]+% \([\d.]+ s\); "
            r"about \d+( min \d+)? s left",
            line,
        ), line
    rest = lines[1 + len(runs) : -1]
    allowed = ("Test accuracy", "Cells:", "Paired differences")
    for line in rest:
        assert not line or line.startswith("|") or line.startswith(allowed), (
            line
        )
    assert lines[-1] == (
        f"Wrote results.md, results.json and results.png to {tmp_path}"
    )
    for name in ("results.md", "results.json", "results.png"):
        assert (tmp_path / name).exists()


def test_transfer_preprocessing_against_numpy():
    x = np.random.default_rng(0).random((2, 4, 4, 3)).astype("float32")
    mean = np.array([0.1, 0.2, 0.3], "float32")
    std = np.array([0.5, 1.0, 2.0], "float32")
    expected = {
        "unit": x,
        "standardize": (x - mean) / std,
        "symmetric": 2 * x - 1,
        "centered255": 255 * x - 127.5,
    }
    for name, want in expected.items():
        got = transfer.preprocessing(name, "mobilenet_v2", mean, std)(x)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
    # MobileNetV2 expects [-1, 1] from 0..255 pixels.
    got = transfer.preprocessing("application", "mobilenet_v2", mean, std)(x)
    np.testing.assert_allclose(np.asarray(got), 2 * x - 1, atol=1e-5)


def test_transfer_feeds_a_saved_teacher_its_own_preprocessing(tmp_path):
    # A saved teacher used to be fed 255x - 127.5 whatever it was trained
    # on; its inputs now follow --teacher_preprocessing.
    x = np.random.default_rng(0).random((3, 8, 8, 3)).astype("float32")
    y = np.arange(3, dtype="int32")
    mean, std = np.zeros(3, "float32"), np.ones(3, "float32")
    with flagsaver.flagsaver(batch_size=4):
        ds = transfer.pipeline(
            x,
            y,
            transfer.preprocessing("unit", "vgg9", mean, std),
            mean,
            std,
            False,
            0,
            (8, 8),
        )
        (inputs, labels), *_ = list(ds)
    np.testing.assert_allclose(inputs["teacher"].numpy(), x, rtol=1e-6)
    inputs_ = keras.Input((8, 8, 3))
    model = keras.Model(inputs_, keras.layers.Dense(2)(inputs_))
    path = tmp_path / "teacher.keras"
    model.save(path)
    with flagsaver.flagsaver(
        teacher_weights=str(path), output_dir=str(tmp_path)
    ):
        with pytest.raises(app.UsageError, match="teacher_preprocessing"):
            transfer.main(["transfer.py"])


def test_transfer_splits_source_and_target_classes():
    data = distill.data_lib.load_dataset("digits")
    with flagsaver.flagsaver(source_classes=["0", "3"]):
        source, target = transfer.split_tasks(data)
    assert source.num_classes == 2 and target.num_classes == 8
    want_source = np.isin(data.train_labels, [0, 3])
    assert len(source.train_labels) == want_source.sum()
    assert len(target.train_labels) == (~want_source).sum()
    # Target labels are the remaining classes, relabelled in order.
    np.testing.assert_array_equal(
        target.test_labels,
        np.searchsorted(
            [1, 2, 4, 5, 6, 7, 8, 9],
            data.test_labels[~np.isin(data.test_labels, [0, 3])],
        ),
    )
    np.testing.assert_array_equal(
        source.train_labels, (data.train_labels[want_source] == 3).astype(int)
    )
    with flagsaver.flagsaver(source_classes=["12"]):
        with pytest.raises(app.UsageError, match="source_classes"):
            transfer.split_tasks(data)


@pytest.mark.slow
def test_transfer_with_a_pretrained_teacher(tmp_path):
    # `--noselect_on_validation` (documented): every method with its fixed
    # weights. The default run of this teacher, which chooses among them
    # on validation data, is test_transfer_chooses_on_validation_*.
    out = tmp_path / "out"
    with flagsaver.flagsaver(
        methods=["lwf", "lwf_jac", "lwf_at_jac"],
        select_on_validation=False,
        output_dir=str(out),
        **dict(TINY, seeds=["0", "1"]),
    ):
        transfer.main(["transfer.py"])
        teacher = next(out.glob("teacher_*.keras"))
        stamp = os.stat(teacher).st_mtime_ns
        transfer.main(["transfer.py"])
        assert os.stat(teacher).st_mtime_ns == stamp
        source, _ = transfer.split_tasks(distill.load_data())
    # A teacher of other settings is not reused under the same name.
    with flagsaver.flagsaver(
        methods=["lwf"],
        select_on_validation=False,
        output_dir=str(out),
        **dict(TINY, teacher_epochs=TINY.get("teacher_epochs", 1) + 1),
    ):
        with pytest.raises(app.UsageError, match="teacher_epochs"):
            transfer.main(["transfer.py"])
    assert os.stat(teacher).st_mtime_ns == stamp
    model = keras.saving.load_model(teacher, compile=False)
    logits = model.predict(source.test_images, verbose=0)
    source_accuracy = 100.0 * np.mean(
        np.argmax(logits, axis=-1) == source.test_labels
    )
    payload = _check_outputs(
        out,
        "transfer",
        {
            "lwf": "LwF",
            "lwf_jac": "LwF + Jacobians",
            "lwf_at_jac": "LwF + attention + Jacobians",
        },
        ["5"],
    )
    table = (out / "transfer.md").read_text()
    assert "digits[5,6,7,8,9]" in table
    assert "VGG-9 pretrained on classes [0, 1, 2, 3, 4]" in table
    assert "mobilenet" not in table
    assert payload["teacher_preprocessing"] == "unit"
    assert payload["teacher_source_accuracy"] == pytest.approx(
        source_accuracy, abs=1e-6
    )
    assert f"{source_accuracy:.2f}%" in table
    (item,) = payload["differences"]
    assert (item["method"], item["baseline"]) == ("lwf_jac", "lwf")
    assert item["columns"]["5"]["n"] == 2


def _turn_and_mirror_by_index(image, turns, mirror):
    """Reference: each output pixel read from its source index."""
    n = image.shape[0]
    rows = range(n)
    out = image.copy()
    if mirror:
        out = np.array([[out[i, n - 1 - j] for j in rows] for i in rows])
    for _ in range(turns):
        # Anticlockwise: row i of the result is column n - 1 - i.
        out = np.array([[out[j, n - 1 - i] for j in rows] for i in rows])
    return out


def test_transfer_source_transforms_against_indexing():
    images = np.random.default_rng(0).random((3, 5, 5, 2)).astype("float32")
    seen = []
    for turns, mirror in teachers.TRANSFORMS:
        got = teachers.transform_images(images, turns, mirror)
        for image, result in zip(images, got):
            np.testing.assert_array_equal(
                result, _turn_and_mirror_by_index(image, turns, mirror)
            )
        seen.append(got[0].tobytes())
    assert len(set(seen)) == 8
    data = distill.data_lib.load_dataset("digits")
    with flagsaver.flagsaver(source_task="transforms"):
        source, target = transfer.split_tasks(data)
        task = teachers.source_task(source)
    assert task.num_classes == 40 and target.num_classes == 5
    assert len(task.train_labels) == 8 * len(source.train_labels)
    np.testing.assert_array_equal(
        np.bincount(task.test_labels),
        np.repeat(np.bincount(source.test_labels), 8),
    )
    # The 3rd transform (two quarter turns) of the 2nd training image.
    index = np.flatnonzero(task.train_labels == 8 * source.train_labels[1] + 2)
    pos = list(index).index(2 * len(source.train_labels) + 1)
    np.testing.assert_array_equal(
        task.train_images[index[pos]], source.train_images[1][::-1, ::-1]
    )


def test_transfer_teacher_resolution_against_numpy():
    # Doubling by bilinear interpolation at half-pixel centres: each new
    # pixel is 3/4 of its nearest source pixel and 1/4 of the next one
    # (the edge pixel repeated at the border), along each axis.
    x = np.random.default_rng(0).random((2, 4, 4, 1)).astype("float32")

    def double(a, axis):
        a = np.moveaxis(a, axis, 0)
        prev = np.concatenate([a[:1], a[:-1]])
        nxt = np.concatenate([a[1:], a[-1:]])
        out = np.empty((2 * len(a),) + a.shape[1:], a.dtype)
        out[0::2] = 0.75 * a + 0.25 * prev
        out[1::2] = 0.75 * a + 0.25 * nxt
        return np.moveaxis(out, 0, axis)

    want = double(double(x, 1), 2)
    got = teachers.resize_images(x, 8)
    np.testing.assert_allclose(got, want, atol=1e-6)
    # The transfer pipeline feeds the teacher the same images.
    mean, std = np.zeros(1, "float32"), np.ones(1, "float32")
    with flagsaver.flagsaver(batch_size=4):
        ds = transfer.pipeline(
            x,
            np.zeros(2, "int32"),
            transfer.preprocessing("unit", "vgg9", mean, std),
            mean,
            std,
            False,
            0,
            (8, 4),
        )
        ((inputs, _),) = list(ds)
    np.testing.assert_allclose(inputs["teacher"].numpy(), want, atol=1e-6)


@pytest.mark.slow
def test_transfer_from_a_teacher_of_transforms_at_another_resolution(
    tmp_path,
):
    out = tmp_path / "out"
    flags_ = dict(
        TINY,
        source_task="transforms",
        teacher_image_size=16,
        methods=["lwf_jac"],
        select_on_validation=False,
        output_dir=str(out),
    )
    with flagsaver.flagsaver(**flags_):
        transfer.main(["transfer.py"])
    path = out / "teacher_digits_0_1_2_3_4_transforms_16px.keras"
    teacher = keras.saving.load_model(path, compile=False)
    assert teacher.input_shape == (None, 16, 16, 1)
    assert teacher.output_shape == (None, 40)
    payload = _check_outputs(
        out, "transfer", {"lwf_jac": "LwF + Jacobians"}, ["5"]
    )
    assert payload["flags"]["source_task"] == "transforms"
    table = (out / "transfer.md").read_text()
    assert "under the 8 symmetries of the square" in table
    # A teacher file of another task or size is refused, not reused.
    with flagsaver.flagsaver(
        **dict(flags_, teacher_image_size=12, teacher_path=str(path))
    ):
        # Its saved settings say so; without them, its input shape does.
        with pytest.raises(
            app.UsageError,
            match=r"input_shape: \[16, 16, 1\] there, \[12, 12, 1\] now",
        ):
            transfer.main(["transfer.py"])
        os.remove(f"{path}.json")
        with pytest.raises(app.UsageError, match="input shape"):
            transfer.main(["transfer.py"])
    with flagsaver.flagsaver(
        **dict(flags_, teacher_weights="none", teacher_arch="mobilenet_v2")
    ):
        with pytest.raises(app.UsageError, match="teacher_weights=pretrain"):
            transfer.main(["transfer.py"])


def test_transfer_selection_grid_starts_with_no_transfer():
    assert transfer.selection_grid(["lwf", "lwf_jac"]) == [
        "none",
        "lwf",
        "lwf_jac",
    ]
    assert transfer.selection_grid(list(transfer.METHODS)) == list(
        transfer.METHODS
    )
    with flagsaver.flagsaver(jacobian_weight=3.0, activation_weight=2.0):
        assert transfer.term_weights("none", True) == [0.0] * 4
        assert transfer.term_weights("lwf_jac", False) == [2.0, 3.0]


def test_transfer_choice_follows_validation_not_test():
    # Test accuracies that would pick LwF + Jacobians; validation picks LwF.
    validation = {"none": 60.0, "lwf": 80.0, "lwf_jac": 70.0}
    test = {"none": 70.0, "lwf": 60.0, "lwf_jac": 90.0}
    assert max(test, key=test.get) == "lwf_jac"
    assert transfer.choose(validation) == "lwf"
    assert transfer.choose({"none": 80.0, "lwf": 80.0}) == "none"
    assert transfer.choose({"none": 40.0, "lwf": 60.0, "at": 60.0}) == "lwf"


def test_transfer_validation_split_errors():
    labels = np.repeat(np.arange(3), 2)
    # At least one image of each class is held out, as the flag's help
    # says: 0.2 of 2 rounds to none, but one is held out and one kept.
    with flagsaver.flagsaver(validation_fraction=0.2):
        kept_x, kept_y, val_x, val_y = transfer.validation_split(
            np.arange(6)[:, None], labels, 0
        )
        assert sorted(val_y) == [0, 1, 2] and sorted(kept_y) == [0, 1, 2]
        with pytest.raises(
            app.UsageError,
            match=r"at least 2 training images.*Received: 1 image\(s\).*"
            r"--samples_per_class=2 or more",
        ):
            transfer.validation_split(np.zeros((3, 2)), np.arange(3), 0)
    # 0.9 of 4 is 3.6: 4, none kept; 0.75 of 2 is 1.5: 2.
    assert [transfer.minimum_images(f) for f in (0.2, 0.5, 0.1, 0.9)] == [
        2,
        2,
        2,
        5,
    ]
    with flagsaver.flagsaver(validation_fraction=0.75):
        with pytest.raises(app.UsageError, match="smaller --validation_frac"):
            transfer.validation_split(np.zeros((6, 2)), labels, 0)
    with flagsaver.flagsaver(validation_fraction=0.0):
        with pytest.raises(app.UsageError, match="validation_fraction"):
            transfer.validation_split(np.zeros((6, 2)), labels, 0)
    with flagsaver.flagsaver(validation_fraction=0.5):
        kept_x, kept_y, val_x, val_y = transfer.validation_split(
            np.arange(6)[:, None], labels, 0
        )
    assert sorted(val_y) == [0, 1, 2] and sorted(kept_y) == [0, 1, 2]
    assert not set(kept_x.ravel()) & set(val_x.ravel())


@pytest.mark.slow
def test_transfer_chooses_on_validation_without_the_test_set(
    tmp_path, monkeypatch
):
    """Shifting the test labels changes test accuracies, never the choice."""
    out = tmp_path / "out"
    payloads = []
    split = transfer.split_tasks
    for shift in (0, 1):

        def shifted(data, shift=shift):
            source, target = split(data)
            labels = (target.test_labels + shift) % target.num_classes
            return source, dataclasses.replace(target, test_labels=labels)

        monkeypatch.setattr(transfer, "split_tasks", shifted)
        # The pretrained teacher's default run, with attention and
        # Jacobians among the candidates.
        with flagsaver.flagsaver(
            methods=["lwf", "lwf_at_jac"], output_dir=str(out), **TINY
        ):
            transfer.main(["transfer.py"])
        payloads.append(json.loads((out / "transfer.json").read_text()))
    first, second = payloads
    (selection,) = first["selections"]
    assert list(selection["validation_accuracy"]) == [
        "none",
        "lwf",
        "lwf_at_jac",
    ]
    assert selection["chosen"] == transfer.choose(
        selection["validation_accuracy"]
    )
    assert selection["validation_images"] == 5
    # The flags' default weights, 1 each, for the chosen method's terms.
    expected = {
        "none": {"lwf": 0.0, "jac": 0.0, "at": 0.0, "at_jac": 0.0},
        "lwf": {"lwf": 1.0, "jac": 0.0, "at": 0.0, "at_jac": 0.0},
        "lwf_at_jac": {"lwf": 1.0, "jac": 0.0, "at": 1.0, "at_jac": 1.0},
    }
    assert selection["weights"] == expected[selection["chosen"]]
    assert second["selections"] == first["selections"]
    tests = [[r["accuracy"] for r in p["runs"]] for p in payloads]
    assert tests[0] != tests[1]
    assert [r["method"] for r in first["runs"]] == ["none", "selected"]
    assert first["runs"][1]["chosen"] == selection["chosen"]
    (item,) = first["differences"]
    assert (item["method"], item["baseline"]) == ("selected", "none")
    table = (out / "transfer.md").read_text()
    assert "| no transfer | LwF | LwF + attention + Jacobians | chosen |" in (
        table
    )
    assert "chosen on validation − no transfer" in table


def test_transfer_names_a_saved_teacher_by_its_file(tmp_path):
    path = tmp_path / "digits_0_4.keras"
    with flagsaver.flagsaver(teacher_weights=str(path)):
        name = transfer.teacher_description("mobilenet_v2", None)
    assert name == "saved model digits_0_4.keras"
    with flagsaver.flagsaver(teacher_weights="imagenet"):
        name = transfer.teacher_description("resnet50", None)
    assert name == "resnet50 (imagenet)"


def test_saved_teacher_gets_no_default_attention_pairs(tmp_path):
    # Layer names of a user's saved model are unknown: no pairs of another
    # architecture (the default --teacher_arch's layers raised a bare
    # "no layer named" at the first step, even without attention methods).
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    path = tmp_path / "teacher.keras"
    model.save(path)
    with flagsaver.flagsaver(teacher_weights=str(path)):
        assert transfer.parse_pairs("mobilenet_v2") == []
    with flagsaver.flagsaver(
        teacher_weights=str(path),
        teacher_preprocessing="unit",
        output_dir=str(tmp_path),
    ):
        with pytest.raises(app.UsageError, match="use attention maps"):
            transfer.main(["transfer.py"])


def _saved_teacher(path, shape, classes=5):
    inputs = keras.Input(shape)
    h = keras.layers.GlobalAveragePooling2D()(inputs)
    keras.Model(inputs, keras.layers.Dense(classes)(h)).save(path)
    return path


def test_saved_teacher_of_another_size_is_refused_before_training(tmp_path):
    # An 8x8 teacher asked for 16x16 images crashed at the first step.
    path = _saved_teacher(tmp_path / "teacher.keras", (8, 8, 1))
    with flagsaver.flagsaver(
        teacher_weights=str(path),
        teacher_preprocessing="unit",
        teacher_image_size=16,
        methods=["none", "lwf"],
        select_on_validation=False,
        output_dir=str(tmp_path / "out"),
        **TINY,
    ):
        with pytest.raises(
            app.UsageError,
            match=r"teacher's input, 8x8\. Received: --teacher_image_size=16"
            r".*Pass --teacher_image_size=8",
        ):
            transfer.main(["transfer.py"])
    assert not (tmp_path / "out").exists()


def test_grey_saved_teacher_with_colour_images_is_refused(tmp_path):
    root = _write_folder(tmp_path / "images", per_split=(6, 2), size=(8, 8))
    path = _saved_teacher(tmp_path / "teacher.keras", (8, 8, 1))
    with flagsaver.flagsaver(
        dataset=f"folder:{root}",
        image_size=8,
        teacher_weights=str(path),
        teacher_preprocessing="unit",
        methods=["none", "lwf"],
        select_on_validation=False,
        output_dir=str(tmp_path / "out"),
        **TINY,
    ):
        with pytest.raises(
            app.UsageError,
            match=r"images of 3 channels.*input shape \(8, 8, 1\)",
        ):
            transfer.main(["transfer.py"])


def test_truncated_saved_teacher_is_named_unreadable(tmp_path):
    # Keras says "File not found" of a truncated archive that is there.
    path = _saved_teacher(tmp_path / "teacher.keras", (8, 8, 1))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with flagsaver.flagsaver(
        teacher_weights=str(path),
        teacher_preprocessing="unit",
        methods=["none", "lwf"],
        output_dir=str(tmp_path / "out"),
        **TINY,
    ):
        with pytest.raises(
            app.UsageError,
            match=r"exists but cannot be read \(not a zip archive; "
            rf"{len(data) // 2} bytes\).*truncated",
        ):
            transfer.main(["transfer.py"])


def test_saved_teacher_is_scored_on_the_source_classes(tmp_path):
    # A saved teacher with --source_classes: its accuracy on the source
    # test images, as the run feeds them, is recorded like a pretrained
    # one's; checked against NumPy argmax of the teacher's predictions.
    path = _saved_teacher(tmp_path / "teacher.keras", (8, 8, 1))
    out = tmp_path / "out"
    with flagsaver.flagsaver(
        teacher_weights=str(path),
        teacher_preprocessing="unit",
        source_classes=["0", "1", "2", "3", "4"],
        methods=["none"],
        select_on_validation=False,
        output_dir=str(out),
        **TINY,
    ):
        transfer.main(["transfer.py"])
        source, _ = transfer.split_tasks(distill.load_data())
    teacher = keras.saving.load_model(path, compile=False)
    logits = teacher.predict(source.test_images, verbose=0)
    want = 100 * np.mean(np.argmax(logits, -1) == source.test_labels)
    payload = json.loads((out / "transfer.json").read_text())
    np.testing.assert_allclose(payload["teacher_source_accuracy"], want)
    assert f"Teacher source-task test accuracy: {want:.2f}%" in (
        (out / "transfer.md").read_text()
    )
    with flagsaver.flagsaver(
        teacher_weights=str(path),
        teacher_preprocessing="unit",
        source_classes=["0", "1", "2"],
        methods=["none"],
        select_on_validation=False,
        output_dir=str(out),
        **TINY,
    ):
        with pytest.raises(app.UsageError, match="one logit per source"):
            transfer.main(["transfer.py"])
