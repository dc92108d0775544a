"""Files the library writes next to the user's: `BackupAndRestore` touches
only its own files and refuses a folder another live run uses; `save`
writes through symbolic links and names the user's path in its errors.

Real files in `tmp_path` and real processes. Cost: about 25 s on 2 CPU
cores (a subprocess that trains while holding a backup folder).
"""

import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

import keras_jacobian as kj
from keras_jacobian import saving
from tests import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
x_small = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
y_small = np.random.default_rng(1).normal(size=(8, 2)).astype("float32")


def _dense():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def _fit(model, backup, epochs=1):
    return model.fit(
        x_small,
        y_small,
        batch_size=4,
        epochs=epochs,
        verbose=0,
        callbacks=[backup],
    )


def _dead_pid():
    """The id of a process that has ended (and been waited for)."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def _temporary(directory, name, pid):
    """A temporary name as `replace_atomically` writes it, for `pid`."""
    return os.path.join(
        directory,
        saving.temporary_name(name, pid=pid, token="0123456789ab"),
    )


def _user_files(folder):
    """Files and a folder of the user's whose names look temporary."""
    os.makedirs(folder / ".cache.tmp")
    (folder / ".cache.tmp" / "keep.txt").write_text("mine")
    names = [".notes.tmp", ".data.tmp.csv", ".latest.tmp.weights.h5"]
    for name in names:
        (folder / name).write_text("mine")
    return names + [".cache.tmp"]


def test_backup_leaves_the_users_files_alone(tmp_path):
    folder = tmp_path / "backup"
    os.makedirs(folder)
    mine = _user_files(folder)
    model = _dense()
    backup = kj.callbacks.BackupAndRestore(
        str(folder), save_freq=1, delete_checkpoint=False
    )
    _fit(model, backup)
    assert set(os.listdir(folder)) == set(mine) | {
        "latest.weights.h5",
        "training_metadata.json",
    }
    # Deleting the backup at the end removes this callback's files only.
    _fit(model, kj.callbacks.BackupAndRestore(str(folder), save_freq=1))
    assert set(os.listdir(folder)) == set(mine)
    for name in mine[:-1]:
        assert (folder / name).read_text() == "mine"
    assert (folder / ".cache.tmp" / "keep.txt").read_text() == "mine"


def test_backup_removes_only_provably_stale_temporaries(tmp_path):
    folder = tmp_path / "backup"
    os.makedirs(folder)
    # Our own naming scheme, but a process still alive wrote it: it may
    # be in the middle of a save.
    live = _temporary(folder, "latest.weights.h5", os.getppid())
    # Left by a process that is dead: provably stale, removed.
    dead = _dead_pid()
    stale = [
        _temporary(folder, "latest.weights.h5", dead),
        _temporary(folder, "training_metadata.json", dead),
    ]
    # The scheme, a dead process, but not a name of this callback's files.
    other = _temporary(folder, "model.keras", dead)
    for path in [live, other] + stale:
        with open(path, "w") as f:
            f.write("partial")
    backup = kj.callbacks.BackupAndRestore(
        str(folder), save_freq=1, delete_checkpoint=False
    )
    _fit(_dense(), backup)
    assert set(os.listdir(folder)) == {
        os.path.basename(live),
        os.path.basename(other),
        "latest.weights.h5",
        "training_metadata.json",
    }


def test_backup_folder_is_removed_when_only_the_backup_was_in_it(tmp_path):
    folder = tmp_path / "backup"
    _fit(_dense(), kj.callbacks.BackupAndRestore(str(folder), save_freq=1))
    assert os.listdir(tmp_path) == []


HOLDER = textwrap.dedent(
    """
    import sys
    import time

    import keras
    import numpy as np

    import keras_jacobian as kj

    folder, ready = sys.argv[1], sys.argv[2]

    class Hold(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            open(ready, "w").close()
            time.sleep(120)

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    backup = kj.callbacks.BackupAndRestore(folder, save_freq=1)
    model.fit(
        np.zeros((8, 3)), np.zeros((8, 2)), batch_size=4, verbose=0,
        callbacks=[backup, Hold()],
    )
    """
)


def _snapshot(folder):
    return {
        name: (os.stat(folder / name).st_mtime_ns, (folder / name).read_bytes())
        for name in os.listdir(folder)
    }


def test_second_live_run_on_a_backup_folder_is_refused(tmp_path):
    folder = tmp_path / "backup"
    ready = tmp_path / "ready"
    environment = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), str(ready)],
        env=environment,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if holder.poll() is not None:
                raise RuntimeError(holder.stderr.read())
            assert time.monotonic() < deadline
            time.sleep(0.1)
        model = _dense()
        message = (
            f"{re.escape(str(folder))}.*in use.*process {holder.pid} "
            f"on host '{re.escape(socket.gethostname())}'.*backup_dir"
        )
        before = _snapshot(folder)
        with pytest.raises(RuntimeError, match=message):
            _fit(model, kj.callbacks.BackupAndRestore(str(folder)))
        # The refused run touched nothing of the live run's.
        assert _snapshot(folder) == before
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, 9)
        holder.wait(timeout=30)
    assert holder.returncode == -9
    # The killed run's lock file is still there; it does not block.
    assert sorted(before) == [
        ".backup.lock",
        "latest.weights.h5",
        "training_metadata.json",
    ]
    _fit(model, kj.callbacks.BackupAndRestore(str(folder)))
    assert not os.path.exists(folder)


def test_backup_folder_is_free_again_after_a_run(tmp_path):
    folder = str(tmp_path / "backup")
    model = _dense()
    backup = kj.callbacks.BackupAndRestore(
        folder, save_freq=1, delete_checkpoint=False
    )
    _fit(model, backup)
    _fit(model, kj.callbacks.BackupAndRestore(folder, save_freq=1))

    # A run of this process that raised keeps the folder; a later run of
    # the same process (a notebook cell run again) takes it over.
    class Fail(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model.fit(
            x_small,
            y_small,
            batch_size=4,
            verbose=0,
            callbacks=[kj.callbacks.BackupAndRestore(folder), Fail()],
        )
    _fit(model, kj.callbacks.BackupAndRestore(folder))
    assert os.listdir(tmp_path) == []


def test_nested_atomic_writes_use_one_temporary_file(tmp_path):
    # A model's atomic `save_weights` called by `BackupAndRestore`'s
    # atomic save: a second temporary would be named after the first, and
    # a kill would leave it where nothing recognises it.
    written = []

    def write(path):
        written.append(path)
        with open(path, "w") as f:
            f.write("new")

    target = tmp_path / "latest.weights.h5"
    saving.replace_atomically(
        target, lambda path: saving.replace_atomically(path, write)
    )
    assert target.read_text() == "new"
    assert len(written) == 1
    name = os.path.basename(written[0])
    token = name.split("-")[-1][:12]
    assert name == saving.temporary_name("latest.weights.h5", token=token)
    assert os.listdir(tmp_path) == ["latest.weights.h5"]


def _regularized():
    model = kj.JacobianRegularizedModel(tiny.conv_net(seed=20))
    model.compile(optimizer="adam", loss=tiny.sparse_ce())
    model.build((None, 8, 8, 1))
    model.optimizer.build(model.trainable_variables)
    return model


@pytest.mark.parametrize("method", ["save", "save_weights"])
def test_save_writes_through_a_symbolic_link(tmp_path, method):
    suffix = ".keras" if method == "save" else ".weights.h5"
    os.makedirs(tmp_path / "store")
    os.makedirs(tmp_path / "links")
    target = tmp_path / "store" / f"model{suffix}"
    target.write_bytes(b"old")
    link = tmp_path / "links" / f"model{suffix}"
    os.symlink(os.path.join("..", "store", f"model{suffix}"), link)
    model = _regularized()
    # Weights a fresh model does not have, so that loading is visible.
    model.set_weights([w + 1.0 for w in model.get_weights()])
    getattr(model, method)(str(link))
    assert os.path.islink(link)
    assert os.readlink(link) == os.path.join("..", "store", f"model{suffix}")
    assert os.listdir(tmp_path / "links") == [f"model{suffix}"]
    assert os.listdir(tmp_path / "store") == [f"model{suffix}"]
    if method == "save":
        loaded = keras.saving.load_model(str(target))
    else:
        loaded = _regularized()
        loaded.load_weights(str(target))
    assert len(loaded.get_weights()) == len(model.get_weights())
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", ["save", "save_weights"])
def test_save_into_a_missing_folder_names_the_users_path(tmp_path, method):
    suffix = ".keras" if method == "save" else ".weights.h5"
    path = str(tmp_path / "missing" / f"model{suffix}")
    # Keras raises FileNotFoundError and does not create the folder.
    with pytest.raises(FileNotFoundError, match=re.escape(path)):
        getattr(_dense(), method)(path)
    with pytest.raises(FileNotFoundError) as raised:
        getattr(_regularized(), method)(path)
    message = str(raised.value)
    assert path in message and "does not exist" in message
    assert ".tmp" not in message
    assert os.listdir(tmp_path) == []


def test_multi_worker_backup_deletes_its_checkpoints_only(tmp_path):
    from keras_jacobian.distribute import multi_worker

    folder = tmp_path / "backup"
    os.makedirs(folder)
    (folder / "notes.txt").write_text("mine")
    model = _dense()
    model.fit(x_small, y_small, epochs=1, verbose=0)
    backup = multi_worker.Backup(str(folder), max_to_keep=2)
    for epoch in range(3):
        backup._save(model, epoch + 1, 0)
    assert multi_worker.Backup.position(str(folder)) == (3, 0)
    backup.delete()
    assert os.listdir(folder) == ["notes.txt"]
    assert (folder / "notes.txt").read_text() == "mine"

    # A folder holding nothing else goes with the backup.
    alone = tmp_path / "alone"
    backup = multi_worker.Backup(str(alone))
    backup._save(model, 1, 0)
    backup.delete()
    assert not alone.exists()


@pytest.mark.parametrize("content", ["{garbage", "[]", '{"epoch": "2"}', "{}"])
def test_backup_with_malformed_metadata_is_refused_clearly(tmp_path, content):
    folder = tmp_path / "backup"
    model = _dense()
    _fit(
        model,
        kj.callbacks.BackupAndRestore(str(folder), delete_checkpoint=False),
    )
    (folder / "training_metadata.json").write_text(content)
    before = sorted(os.listdir(folder))
    backup = kj.callbacks.BackupAndRestore(str(folder))
    with pytest.raises(ValueError, match="training_metadata.json"):
        _fit(model, backup, epochs=2)
    assert sorted(os.listdir(folder)) == before
    # The lock was given back: a corrected folder trains again.
    (folder / "training_metadata.json").write_text('{"epoch": 0}')
    _fit(model, kj.callbacks.BackupAndRestore(str(folder)), epochs=2)
