"""The benchmark command runs end to end on tiny models.

It runs as a subprocess, the way it is used: its absl flags then do not
meet the example scripts' flags in the test process.
"""

import json
import os
import pathlib
import subprocess
import sys

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
