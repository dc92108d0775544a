"""Kill-and-resume of a Distiller with `keras.callbacks.BackupAndRestore`
and with `keras_jacobian.callbacks.BackupAndRestore`.

A job (tests/distributed_jobs/train_job.py: 3 epochs of 6 steps, a backup
every 2 steps) is killed with SIGKILL in the middle of its second epoch,
then started again with the same command. Cost: about 45 s on 2 CPU cores
(two job starts, and an uninterrupted reference run alongside the first).
The documented recipe is then killed 6 times at random instants, half of
them while a backup is being written, and restarted each time: about
90 s (seven job starts).
"""

import json
import os
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "distributed_jobs"))

import cluster  # noqa: E402
import tiny_models  # noqa: E402

from keras_jacobian import callbacks as kj_callbacks  # noqa: E402
from keras_jacobian.distiller import Distiller  # noqa: E402
from keras_jacobian.terms.jacobian import JacobianMatching  # noqa: E402
from keras_jacobian.terms.logits import LogitsDistillation  # noqa: E402

EPOCHS, STEPS, SAVE_FREQ = 3, 6, 2


def _distiller():
    teacher, student = tiny_models.pair()
    distiller = Distiller(
        teacher,
        student,
        [
            LogitsDistillation(temperature=4.0, loss="kd"),
            JacobianMatching("random"),
        ],
        seed=5,
        supervised_loss_weight=1.0,
    )
    distiller.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return distiller


def test_weights_file_restores_distiller_state(tmp_path):
    x, y = tiny_models.data(16)
    trained = _distiller()
    trained.fit(x, y, batch_size=8, epochs=1, verbose=0)
    trained.term_weights[1].assign(0.25)
    trained.student_loss_weight_variable.assign(0.5)
    path = str(tmp_path / "backup.weights.h5")
    trained.save_weights(path)

    fresh = _distiller()
    fresh.optimizer.build(fresh.trainable_variables)
    assert not np.array_equal(
        fresh.seed_generator.state.numpy(), trained.seed_generator.state
    )
    fresh.load_weights(path)
    np.testing.assert_array_equal(
        fresh.seed_generator.state.numpy(),
        trained.seed_generator.state.numpy(),
    )
    assert float(fresh.term_weights[1].numpy()) == 0.25
    assert float(fresh.student_loss_weight_variable.numpy()) == 0.5
    assert int(fresh.optimizer.iterations.numpy()) == 2
    for a, b in zip(fresh.optimizer.variables, trained.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(fresh.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(a, b)


def _job(directory, name, sleep):
    return [
        "--loop",
        "keras",
        "--epochs",
        str(EPOCHS),
        "--steps",
        str(STEPS),
        "--save_freq",
        str(SAVE_FREQ),
        "--sleep",
        str(sleep),
        "--backup_dir",
        str(directory / f"{name}_backup"),
        "--output_dir",
        str(directory / f"{name}_output"),
        "--log",
        str(directory / f"{name}.log"),
    ]


@pytest.mark.slow
def test_killed_fit_resumes_from_backup(tmp_path):
    job = _job(tmp_path, "job", sleep=0.3)
    log = str(tmp_path / "job.log")
    first = cluster.start("train_job.py", job)
    reference = cluster.start("train_job.py", _job(tmp_path, "ref", 0.0))

    def mid_second_epoch():
        steps = [r for r in cluster.read_log(log) if r["event"] == "step"]
        return (
            bool(steps)
            and steps[-1]["epoch"] == 1
            and (
                steps[-1]["step"] in (2, 4)  # not a backup step (1, 3, 5)
            )
        )

    cluster.wait_for(mid_second_epoch, [first], timeout=240)
    cluster.kill(first)
    assert first.returncode == -9
    assert not os.path.exists(tmp_path / "job_output" / "results.json")
    with open(tmp_path / "job_backup" / "training_metadata.json") as f:
        backup = json.load(f)
    killed_run = cluster.runs(cluster.read_log(log))[0]
    saved = [
        r
        for r in killed_run
        if r["event"] == "step"
        and r["epoch"] == 1
        and r["step"] == backup["batch"]
    ][-1]

    second = cluster.start("train_job.py", job)
    assert cluster.wait_all([second, reference], timeout=240) == [0, 0]
    resumed_run = cluster.runs(cluster.read_log(log))[1]
    begin = resumed_run[0]
    print(
        f"killed after epoch 1 step {killed_run[-1]['step']}; backup at "
        f"epoch {backup['epoch']} step {backup['batch']}; resumed with "
        f"iterations={begin['iterations']}"
    )
    # The restored state is the backed-up one: weights of the term, the
    # seed generator and the optimizer's step counter.
    assert backup["epoch"] == 1
    assert begin["iterations"] == saved["iterations"] > STEPS
    assert begin["seed"] == saved["seed"]
    assert begin["term_weight"] == saved["term_weight"] == 1.5
    # Keras resumes at the start of the backed-up epoch (not 0).
    epochs_run = [r["epoch"] for r in resumed_run if r["event"] == "epoch_end"]
    assert epochs_run == [1, 2]
    with open(tmp_path / "job_output" / "results.json") as f:
        results = json.load(f)
    with open(tmp_path / "ref_output" / "results.json") as f:
        expected = json.load(f)
    assert results["epochs"] == [1, 2]
    assert expected["epochs"] == [0, 1, 2]
    # Epoch 1 is partly trained twice (Keras restarts the epoch), so the
    # run takes more steps; its final loss stays close to the reference.
    assert results["iterations"] == saved["iterations"] + 2 * STEPS
    assert np.isfinite(results["loss"][-1])
    print(
        f"final loss {results['loss'][-1]:.4f}, uninterrupted run "
        f"{expected['loss'][-1]:.4f}"
    )
    np.testing.assert_allclose(
        results["loss"][-1], expected["loss"][-1], rtol=0.1
    )
    assert not os.path.exists(tmp_path / "job_backup")  # deleted at the end


KILLS = 6


def _kill_job(directory, loop):
    return [
        "--loop",
        loop,
        "--epochs",
        "4",
        "--steps",
        str(STEPS),
        "--save_freq",
        "1",
        "--save_sleep",
        "0.15",
        "--backup_dir",
        str(directory / "backup"),
        "--output_dir",
        str(directory / "output"),
        "--log",
        str(directory / "job.log"),
    ]


def _last_iterations(records):
    """Optimizer iterations at the last step logged (its backup is done)."""
    steps = [r for r in records if r["event"] == "step"]
    return steps[-1]["iterations"] if steps else 0


def kills_and_restarts(tmp_path, loop, seed):
    """Kills the job `KILLS` times, restarts it; returns the log's runs."""
    rng = np.random.default_rng(seed)
    log = str(tmp_path / "job.log")
    in_save = []
    for kill in range(KILLS):
        process = cluster.start("train_job.py", _kill_job(tmp_path, loop))

        def started(kill=kill):
            runs = cluster.runs(cluster.read_log(log))
            return len(runs) > kill

        cluster.wait_for(started, [process], timeout=240, interval=0.05)
        if kill % 2 == 0:
            # During a save: the weights file is half written.
            cluster.wait_for(
                lambda: cluster.read_log(log)[-1]["event"] == "in_save",
                [process],
                timeout=120,
                interval=0.01,
            )
        else:
            time.sleep(rng.uniform(0.0, 1.5))  # any instant
        if process.poll() is not None:
            raise RuntimeError(f"the job ended before kill {kill}")
        cluster.kill(process)
        assert process.returncode == -9
        # Read once the job is dead: the log's last line is then where the
        # kill landed.
        in_save.append(cluster.read_log(log)[-1]["event"] == "in_save")
    last = cluster.start("train_job.py", _kill_job(tmp_path, loop))
    assert cluster.wait_all([last], timeout=240) == [0]
    return cluster.runs(cluster.read_log(log)), in_save


@pytest.mark.slow
def test_documented_backup_survives_kills_at_random_instants(tmp_path):
    runs, in_save = kills_and_restarts(tmp_path, "safe", seed=0)
    assert len(runs) == KILLS + 1
    print(f"{sum(in_save)} of {KILLS} kills during a save")
    assert all(in_save[::2]), in_save  # the kills aimed at a save
    done = []
    for number, run in enumerate(runs):
        if number > 0:
            # Every restart loads the last backup: the one of the last
            # logged step, or of the next step when the kill came after
            # its backup and before its log line.
            expected = _last_iterations(done)
            begin = run[0]
            assert begin["iterations"] in (expected, expected + 1), number
        done += run
    assert _last_iterations(done) > 0
    with open(tmp_path / "output" / "results.json") as f:
        results = json.load(f)
    assert results["epochs"][-1] == 3
    assert np.all(np.isfinite(results["loss"]))
    assert not os.path.exists(tmp_path / "backup")  # deleted at the end


def test_backup_to_a_remote_directory_uses_its_file_system(
    tmp_path, monkeypatch
):
    """`gs://`-style directories go through TensorFlow's file systems
    (here its in-memory `ram://` one), not a local folder named `gs:`."""
    monkeypatch.chdir(tmp_path)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    backup = kj_callbacks.BackupAndRestore(
        "ram://kj_backup_test", delete_checkpoint=False
    )
    model.fit(
        np.zeros((4, 3)),
        np.ones((4, 2)),
        epochs=1,
        verbose=0,
        callbacks=[backup],
    )
    assert tf.io.gfile.exists("ram://kj_backup_test/latest.weights.h5")
    assert os.listdir(tmp_path) == []


class _Crash(keras.callbacks.Callback):
    """Ends `fit` with an error after the backup of epoch `at`, as a kill
    would end the process."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at:
            raise RuntimeError("crash")


def test_resumed_fit_leaves_later_fits_their_epochs(tmp_path):
    """Keras' callback leaves the restored epoch on the model: every later
    `fit` of it skipped that many epochs (a script resuming one run of
    several trained its later runs for fewer epochs)."""
    x = np.linspace(0, 1, 24, dtype="float32").reshape(8, 3)
    y = x @ np.ones((3, 2), "float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    folder = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="crash"):
        model.fit(
            x,
            y,
            epochs=4,
            verbose=0,
            callbacks=[kj_callbacks.BackupAndRestore(folder), _Crash(1)],
        )
    backup = kj_callbacks.BackupAndRestore(folder)
    resumed = model.fit(x, y, epochs=4, verbose=0, callbacks=[backup])
    assert resumed.epoch == [2, 3]
    assert model.fit(x, y, epochs=3, verbose=0).epoch == [0, 1, 2]
    fresh = kj_callbacks.BackupAndRestore(str(tmp_path / "other"))
    again = model.fit(x, y, epochs=3, verbose=0, callbacks=[fresh])
    assert again.epoch == [0, 1, 2]
    assert (backup.resumed_epoch, fresh.resumed_epoch) == (2, None)
