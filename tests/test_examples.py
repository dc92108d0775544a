"""End-to-end runs of the example scripts on tiny settings.

Cost on 2 CPU cores: about 2 minutes in all, 3 on a busy machine (each
script trains a few one-epoch models of a few filters on 8x8 images).
"""

import json
import os
import pathlib
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
import transfer  # noqa: E402

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
            np.testing.assert_allclose(cell["std"], np.std(values))
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
        **TINY,
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
        ({"teacher_arch": "vgg99"}, app.UsageError, "vgg99"),
        ({"dataset": "no_such_dataset"}, app.UsageError, "catalog"),
        ({"samples_per_class": ["100000"]}, app.UsageError, "smaller"),
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
    assert summary["cells"]["a"]["1"]["std"] == 5.0
    table = experiment.markdown_table(summary, "m", "k")
    assert "| a | 15.00 ± 5.00 |" in table
    assert "| b | **40.00 ± 0.00** |" in table


def test_parse_method_and_weights():
    assert distill.parse_method("act_jac_ce") == {"act", "jac", "ce"}
    assert distill.canonical_method({"ce", "act"}) == "act_ce"
    with flagsaver.flagsaver(
        student_loss_weight=0.5, activation_weight=2.0, jacobian_weight=3.0
    ):
        assert distill.method_weights({"ce"}) == (0.5, 0.0, 0.0)
        assert distill.method_weights({"act", "jac"}) == (0.0, 2.0, 3.0)


@pytest.mark.slow
def test_transfer_on_image_folder(tmp_path):
    root = _write_folder(tmp_path / "images", classes=3, per_split=(3, 2))
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
        methods=["none", "lwf_at_jac"],
        samples_per_class=["2"],
        output_dir=str(out),
        **TINY,
    ):
        transfer.main(["transfer.py"])
    _check_outputs(
        out,
        "transfer",
        {"none": "no transfer", "lwf_at_jac": "LwF + attention + Jacobians"},
        ["2"],
    )


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
