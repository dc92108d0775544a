"""The benchmark runs end to end on tiny models and writes every variant."""

import json
import os

import pytest
from absl import flags
from absl.testing import flagsaver

from benchmarks import run
from benchmarks import variants


def test_benchmark_writes_every_variant(tmp_path):
    with flagsaver.flagsaver(
        models="tiny",
        input_size=8,
        num_classes=10,
        batch_size=4,
        steps=2,
        warmup=1,
        repeats=1,
        memory=False,
        run_eagerly=True,
        torch=True,
        output_dir=str(tmp_path),
    ):
        summary = run.run()
    expected = {n for n, v in variants.VARIANTS.items() if v.default}
    with open(os.path.join(tmp_path, "results.json")) as f:
        written = json.load(f)
    assert set(written["variants"]) >= expected
    assert written == json.loads(json.dumps(summary))
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
    assert flags.FLAGS.models == "vgg"


@pytest.mark.slow
def test_no_retracing_between_steps_and_memory(tmp_path):
    with flagsaver.flagsaver(
        models="tiny",
        input_size=8,
        num_classes=10,
        batch_size=4,
        steps=2,
        warmup=1,
        repeats=2,
        memory=True,
        torch=False,
        variants=["jacobian_top1"],
        memory_variants=["activation"],
        output_dir=str(tmp_path),
    ):
        summary = run.run()
    memory = summary["variants"]["activation"]
    assert memory["peak_mb"] > 0
    assert memory["step_peak_mb"] >= 0
    assert memory["memory_ratio"] == 1.0
    assert summary["variants"]["jacobian_top1"]["retraces"] == 0
    assert summary["variants"]["activation"]["retraces"] == 0
