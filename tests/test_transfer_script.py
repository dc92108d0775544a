"""examples/transfer.py as a user runs it: resumed runs, the teacher it
is given, and the advice of its refusals.

Cost on 2 CPU cores: about a minute (a few one-epoch students of 2
filters on digits).
"""

import json
import pathlib
import sys

import keras
import pytest
from absl.testing import flagsaver

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import experiment  # noqa: E402
import reporting  # noqa: E402
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


class _Crash(keras.callbacks.Callback):
    """Ends the first run with an error after its first epoch's backup,
    as a kill ends the process."""

    def on_epoch_end(self, epoch, logs=None):
        raise RuntimeError("crash")


def _runs(out):
    payload = json.loads((out / "transfer.json").read_text())
    return {r["method"]: r["accuracy"] for r in payload["runs"]}, payload


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
    train = experiment.train
    crashed = []

    def crash_first_run(model, dataset, **kwargs):
        if crashed:
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
