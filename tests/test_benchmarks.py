"""The benchmark command runs end to end on tiny models.

It runs as a subprocess, the way it is used: its absl flags then do not
meet the example scripts' flags in the test process.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import variants

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = [
    "--models=tiny",
    "--input_size=8",
    "--num_classes=10",
    "--batch_size=4",
    "--steps=2",
    "--warmup=1",
]


def run_benchmark(tmp_path, *extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), *TINY, *extra]
        + [f"--output_dir={tmp_path}"],
        check=True,
        cwd=ROOT,
        env=env,
        timeout=600,
        capture_output=True,
    )
    with open(os.path.join(tmp_path, "results.json")) as f:
        return json.load(f)


def test_benchmark_writes_every_variant(tmp_path):
    written = run_benchmark(
        tmp_path, "--repeats=1", "--nomemory", "--run_eagerly"
    )
    expected = {n for n, v in variants.VARIANTS.items() if v.default}
    assert set(written["variants"]) >= expected
    for name in expected:
        row = written["variants"][name]
        assert "error" not in row, (name, row)
        assert row["median_step_s"] > 0
        base = written["variants"][row["baseline"]]
        ratio = row["median_step_s"] / base["median_step_s"]
        assert abs(row["ratio"] - ratio) < 1e-9
    markdown = (tmp_path / "results.md").read_text()
    for name in expected:
        assert f"| {name} |" in markdown


@pytest.mark.slow
def test_no_retracing_between_steps_and_memory(tmp_path):
    summary = run_benchmark(
        tmp_path,
        "--repeats=2",
        "--memory",
        "--notorch",
        "--variants=jacobian_top1",
        "--memory_variants=activation",
    )
    memory = summary["variants"]["activation"]
    assert memory["peak_mb"] > 0
    assert memory["step_peak_mb"] >= 0
    assert memory["memory_ratio"] == 1.0
    assert summary["variants"]["jacobian_top1"]["retraces"] == 0
    assert summary["variants"]["activation"]["retraces"] == 0


# Dead ReLU features are constant within classes: NearestCentroid warns.
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_transfer_mechanism_probe_matches_scikit_learn(tmp_path):
    """One run per kind; the probes recomputed with scikit-learn."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import NearestCentroid
    from sklearn.preprocessing import StandardScaler

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    output = tmp_path / "runs.jsonl"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "transfer_mechanism.py"),
            "--experiments=base",
            "--seeds=0",
            "--samples_per_class=3",
            "--steps=5",
            "--teacher_epochs=1",
            "--threads=1",
            f"--cache_dir={tmp_path / 'cache'}",
            f"--features_dir={tmp_path / 'features'}",
            f"--output={output}",
        ],
        check=True,
        cwd=ROOT,
        env=env,
        timeout=600,
        capture_output=True,
    )
    runs = [json.loads(line) for line in output.read_text().splitlines()]
    kinds = {r["kind"]: r for r in runs}
    assert set(kinds) == {"teacher_features", "init_features", "none", "lwf"}
    for name in ("none", "lwf"):
        assert 0.0 <= kinds[name]["task"] <= 100.0
    saved = sorted((tmp_path / "features").glob("*.npz"))
    assert len(saved) == 2 * len(runs)  # few-image and every-image probes
    for path in saved:
        # float64: scikit-learn solves float32 inputs in float32.
        f = {k: v.astype("float64") for k, v in np.load(path).items()}
        scaler = StandardScaler().fit(f["train"])
        train = scaler.transform(f["train"])
        test = scaler.transform(f["test"])
        reference = LogisticRegression(
            C=float(f["c"]), tol=1e-10, max_iter=100000
        ).fit(train, f["train_labels"].astype(int))
        expected = 100.0 * np.mean(reference.predict(test) == f["test_labels"])
        assert float(f["accuracy"]) == pytest.approx(expected, abs=1e-9)
        logits = f["logits"] - f["logits"].max(1, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        np.testing.assert_allclose(
            probs, reference.predict_proba(test), atol=1e-4
        )
    for r in runs:
        f = dict(np.load(saved_path(tmp_path, r)))
        scaler = StandardScaler().fit(f["train"])
        ncm = NearestCentroid().fit(
            scaler.transform(f["train"]), f["train_labels"]
        )
        expected = 100.0 * np.mean(
            ncm.predict(scaler.transform(f["test"])) == f["test_labels"]
        )
        assert r["ncm"] == pytest.approx(expected, abs=1e-9)
        assert r["probe"] == pytest.approx(float(f["accuracy"]), abs=1e-9)


def saved_path(tmp_path, record):
    keys = ("kind", "teacher", "spc", "seed", "init", "init_seed")
    keys += ("weight", "temperature")
    name = "_".join(f"{k}{record[k]}" for k in sorted(keys) if k in record)
    return tmp_path / "features" / f"{name}_few.npz"


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--teachers=56", "Received: '56'"),
        ("--samples_per_class=all", "Received: --samples_per_class=all"),
        ("--weights=-1", "Received: --weights=-1"),
    ],
)
def test_transfer_mechanism_bad_flags_fail_before_training(
    tmp_path, flag, message
):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "transfer_mechanism.py"),
            flag,
            f"--cache_dir={tmp_path}",
            f"--output={tmp_path / 'runs.jsonl'}",
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["wine", "breast_cancer"])
def test_whole_jacobian_study_tabular_splits(name):
    from sklearn import datasets

    from benchmarks import tabular

    data = tabular.load_tabular(name, validation_fraction=0.2)
    bunch = getattr(datasets, f"load_{name}")()
    n = len(bunch.target)
    train, val, test = (data.split(s) for s in ("train", "val", "test"))
    parts = [data.train_indices, data.val_indices, data.test_indices]
    joined = np.sort(np.concatenate(parts))
    np.testing.assert_array_equal(joined, np.arange(n))
    for (x, y), idx in zip((train, val, test), parts):
        np.testing.assert_array_equal(x, bunch.data[idx].astype("float32"))
        np.testing.assert_array_equal(y, bunch.target[idx])
    # Per class: a third to test, then a fifth of the rest to validation.
    for c, count in enumerate(np.bincount(bunch.target)):
        n_test = round(count / 3)
        n_val = round(0.2 * (count - n_test))
        assert np.sum(test[1] == c) == n_test
        assert np.sum(val[1] == c) == n_val
        assert np.sum(train[1] == c) == count - n_test - n_val
    assert data.num_classes == len(bunch.target_names)
    assert data.input_shape == (bunch.data.shape[1],)
    # Training statistics only: the training pool comes out standardised,
    # the held-out splits only roughly.
    standard = (train[0] - data.mean) / data.std
    np.testing.assert_allclose(standard.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(standard.std(0), 1.0, atol=1e-4)
    expected = bunch.data[data.train_indices].std(0)
    np.testing.assert_allclose(data.std, expected, rtol=1e-4)
    assert not np.allclose(
        ((test[0] - data.mean) / data.std).mean(0), 0.0, atol=1e-4
    )


@pytest.mark.slow
def test_whole_jacobian_study_runs_on_a_tabular_set(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = tmp_path / "runs.jsonl"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "whole_jacobian_study.py"),
            "--dataset=wine",
            "--configs=act,vjp2_rel",
            "--samples_per_class=1",
            "--seeds=0",
            "--batch_norm=true",
            "--steps=12",
            "--threads=1",
            f"--output={out}",
        ],
        check=True,
        cwd=ROOT,
        env=env,
        timeout=600,
        capture_output=True,
    )
    from benchmarks import tabular

    data = tabular.load_tabular("wine", validation_fraction=0.2)
    runs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["config"] for r in runs] == ["act", "vjp2_rel"]
    for r in runs:
        assert r["dataset"] == "wine" and r["batch_norm"] and r["k"] == 1
        for split in ("val", "test"):
            # Accuracies on the split's examples: whole counts of them.
            correct = r[split] / 100 * len(data.split(split)[1])
            assert abs(correct - round(correct)) < 1e-6, (split, r)
    assert (tmp_path / "teacher_wine.keras").exists()


def test_projection_variance_runs_and_is_exact_at_all_classes(tmp_path):
    output = tmp_path / "variance.md"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "projection_variance.py"),
            "--models=tiny",
            "--input_size=8",
            "--num_classes=10",
            "--examples=1",
            "--draws=16",
            "--projections=1,10",
            f"--output={output}",
        ],
        check=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=600,
        capture_output=True,
    )
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in output.read_text().splitlines()
        if line.startswith("| 1") or line.startswith("| 10 ")
    ]
    assert [row[0] for row in rows] == ["1", "10"]
    # R = K orthonormal output projections: no spread; independent: some.
    assert rows[1][2].startswith("0.000 / 0.000")
    assert not rows[1][3].startswith("0.000")
