"""`BackupAndRestore` whose backup survives a kill at any instant."""

import json
import os
import socket

from keras_jacobian import _compat
from keras_jacobian import saving

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".backup.lock"

# Backup folders this process holds (their real path): the lock's file
# descriptor and the callback that holds it.
_HELD = {}


class BackupAndRestore(_compat.BackupAndRestoreHooks):
    """Keras' `BackupAndRestore`, with every file replaced atomically.

    Keras' callback writes `latest.weights.h5` and
    `training_metadata.json` in place: a process killed while it saves
    leaves a truncated file, and every restart then fails to load it
    (`OSError: Unable to synchronously open file`, seen in 1 of 6 kills
    during a save). `double_checkpoint=True` keeps a copy of the previous
    files, but an empty `training_metadata.json` (a kill during its
    write) still stops every restart with a `JSONDecodeError`.

    This callback writes each file to a temporary name in `backup_dir`
    and renames it over the previous one (`os.replace`), so the backup
    is at every instant a complete set of files: the weights first, then
    the metadata naming the epoch. A kill between the two leaves newer
    weights with the previous epoch number; the restarted run then trains
    that epoch again from the newer weights, as Keras does after any
    restart (it resumes at the start of the backed-up epoch).

    One run at a time: `on_train_begin` locks `backup_dir` (`flock` on
    `.backup.lock`, which records the process id and host) and raises a
    `RuntimeError` naming the process that holds it if another live run
    does; two runs sharing a folder would overwrite each other's backups.
    The lock ends with its process, so a killed run never blocks the next
    one; a later `fit` of the same process (after one that raised) takes
    the folder over. Without `fcntl` (Windows) the folder is not locked.

    The callback touches only its own files: `latest.weights.h5`,
    `training_metadata.json`, the lock, and its temporary files, named
    `.<name>.<host>-<pid>-<token>.tmp<suffix>`. At `on_train_begin` it
    removes those temporaries left by dead processes of this host (a kill
    during a save); any other file in the folder is left alone.
    `delete_checkpoint` removes the backup files, then the folder if
    nothing else is in it (Keras' callback removes the whole folder).

    Restoring and the resumed epoch are Keras' own, and hold for this
    `fit` only: `resumed_epoch` says where it resumed (`None`: it started
    afresh), and later `fit` calls of the model start at their own
    `initial_epoch` (after Keras' callback, every later `fit` skips the
    restored number of epochs). The backup holds
    everything the model's `save_weights` stores; for a `Distiller` that
    includes the optimizer's variables, the term weights and the seed
    generator's state.

    Args:
        backup_dir: directory of the backup, used by this run only.
        save_freq: `"epoch"` or a number of steps between backups.
        delete_checkpoint: delete the backup once training has finished.

    Example:

    ```python
    backup = keras_jacobian.callbacks.BackupAndRestore(
        "backup/", save_freq=100
    )
    distiller.fit(dataset, epochs=10, callbacks=[backup])
    # Killed? Run the same command again: training resumes.
    ```
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        super().__init__(
            backup_dir,
            save_freq=save_freq,
            double_checkpoint=False,
            delete_checkpoint=delete_checkpoint,
        )
        self._created_folder = False
        self.resumed_epoch = None

    @property
    def _local(self):
        return "://" not in str(self.backup_dir)

    def on_train_begin(self, logs=None):
        # Only this run's backup decides where it starts.
        self.forget_resumed_epoch()
        self._begin(logs)
        self.resumed_epoch = self.restored_epoch

    def _begin(self, logs):
        if self._local:
            self._lock()
            try:
                names = ("latest.weights.h5", "training_metadata.json")
                for path in saving.stale_temporaries(self.backup_dir, names):
                    os.remove(path)
                self._check_metadata()
                super().on_train_begin(logs)
            except BaseException:
                self._unlock()
                raise
        else:
            super().on_train_begin(logs)

    def on_train_end(self, logs=None):
        self.forget_resumed_epoch()
        if not self._local:
            super().on_train_end(logs)
            return
        try:
            if self.delete_checkpoint:
                for path in (self.weights_path, self.metadata_path):
                    if os.path.lexists(path):
                        os.remove(path)
        finally:
            self._unlock()
        if self.delete_checkpoint or self._created_folder:
            try:
                os.rmdir(self.backup_dir)  # only if nothing else is in it
            except OSError:
                pass

    def _check_metadata(self):
        """Raises a clear error for a metadata file this callback cannot
        have written (edited, or another program's), before Keras reads
        it; the backup itself is left untouched."""
        path = self.metadata_path
        if not os.path.isfile(path):
            return
        with open(path, "rb") as f:
            raw = f.read()
        try:
            epoch = json.loads(raw.decode())["epoch"]
            valid = isinstance(epoch, int) and epoch >= 0
        except (ValueError, TypeError, KeyError):
            valid = False
        if not valid:
            raise ValueError(
                f"The backup's metadata file {path!r} is not what "
                "`BackupAndRestore` writes (JSON with an integer `epoch` "
                f">= 0). Received: {raw[:80]!r}. The files of "
                f"{self.backup_dir!r} were left as they are: to start "
                "over, delete `training_metadata.json` and "
                "`latest.weights.h5` there, or pass another `backup_dir`."
            )

    def _lock(self):
        """Takes the folder's lock, or raises if another run holds it."""
        self._created_folder = False
        if not os.path.isdir(self.backup_dir):
            os.makedirs(self.backup_dir, exist_ok=True)
            self._created_folder = True
        folder = os.path.realpath(self.backup_dir)
        if folder in _HELD:
            # An earlier run of this process (it raised, so it never
            # reached `on_train_end`), or this callback's own.
            _HELD[folder] = (_HELD[folder][0], self)
            return
        if fcntl is None:
            return
        path = os.path.join(folder, LOCK_NAME)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise RuntimeError(self._in_use_message(owner)) from None
            except OSError:
                # No `flock` on this file system: the recorded owner, if
                # it is a live process of this host, holds the folder.
                owner = _read_owner(fd)
                if (
                    owner.get("host") == socket.gethostname()
                    and isinstance(owner.get("pid"), int)
                    and owner["pid"] != os.getpid()
                    and saving._process_alive(owner["pid"])
                ):
                    os.close(fd)
                    raise RuntimeError(self._in_use_message(owner)) from None
            # The run that held the lock may have removed its file between
            # our `open` and our `flock`: then lock the new file.
            try:
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        owner = {"pid": os.getpid(), "host": socket.gethostname()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        _HELD[folder] = (fd, self)

    def _unlock(self):
        folder = os.path.realpath(self.backup_dir)
        held = _HELD.get(folder)
        if held is None or held[1] is not self:
            return
        del _HELD[folder]
        fd, _ = held
        try:
            # Removed while still locked, so that no other run locks it
            # in between (see `_lock`).
            os.remove(os.path.join(folder, LOCK_NAME))
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)

    def _in_use_message(self, owner):
        if "pid" in owner:
            who = f"process {owner['pid']} on host {owner.get('host')!r}"
        else:
            who = "another process"
        return (
            f"The backup folder {str(self.backup_dir)!r} is in use by another "
            f"training run: {who} holds its lock file "
            f"{os.path.join(str(self.backup_dir), LOCK_NAME)!r}. Two runs "
            "sharing one backup folder would overwrite each other's "
            "backups. Give this run its own folder (a different "
            "`backup_dir`), or wait until that run ends. "
            f"Received: backup_dir={self.backup_dir!r}"
        )

    def save_backup(self):
        # Called where Keras saves its backup (see `_compat`); a test
        # checks that it is still the method that saves.
        if "://" in str(self.backup_dir):
            # Remote storage (`gs://...`): no rename here; Keras' own
            # save, through its file utilities.
            super().save_backup()
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        saving.replace_atomically(
            self.weights_path,
            lambda path: self.model.save_weights(path, overwrite=True),
        )
        metadata = json.dumps(self.position)

        def write(path):
            with open(path, "w") as f:
                f.write(metadata)

        saving.replace_atomically(self.metadata_path, write)


def _read_owner(fd):
    """The `{"pid": ..., "host": ...}` a lock file records, or `{}`."""
    try:
        owner = json.loads(os.pread(fd, 4096, 0).decode())
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}
