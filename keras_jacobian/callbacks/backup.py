"""`BackupAndRestore` whose backup survives a kill at any instant."""

import json
import os

import keras

from keras_jacobian.saving import replace_atomically


class BackupAndRestore(keras.callbacks.BackupAndRestore):
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

    Restoring, the resumed epoch and `delete_checkpoint` are Keras' own.
    The backup holds everything the model's `save_weights` stores; for a
    `Distiller` that includes the optimizer's variables, the term weights
    and the seed generator's state.

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

    def _save_model(self):
        # Overrides Keras' method of the same name, which
        # `on_epoch_end` and `on_train_batch_end` call; a test checks that
        # it is still the method that saves.
        if "://" in str(self.backup_dir):
            # Remote storage (`gs://...`): no rename here; Keras' own
            # save, through its file utilities.
            super()._save_model()
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        replace_atomically(
            self._weights_path,
            lambda path: self.model.save_weights(path, overwrite=True),
        )
        metadata = json.dumps(
            {"epoch": self._current_epoch, "batch": self._last_batch_seen}
        )

        def write(path):
            with open(path, "w") as f:
                f.write(metadata)

        replace_atomically(self._training_metadata_path, write)
        # Temporary files of saves cut short by a kill.
        for name in os.listdir(self.backup_dir):
            if name.startswith(".") and ".tmp" in name:
                os.remove(os.path.join(self.backup_dir, name))
