"""Saving models: the random-draw state with the weights, and files written
so that a kill during a save never loses the previous file."""

import os
import uuid

SEED_STATE = "seed_generator_state"

# File endings Keras reads the format from; a temporary file keeps them.
_SUFFIXES = (".weights.h5", ".keras", ".h5", ".hdf5")


def replace_atomically(filepath, write):
    """Calls `write(temporary_path)`, then renames it to `filepath`.

    The temporary file is in the same directory as `filepath` and has the
    same ending (Keras reads the format from it), so the rename is an
    atomic `os.replace`: `filepath` is at every instant either the
    previous complete file or the new complete one, even if the process
    is killed while writing. On an error the temporary file is removed
    and the previous file is left untouched.

    Args:
        filepath: the final path (`str` or `os.PathLike`), on a local
            file system.
        write: a function writing the whole file to the path it is given.
    """
    filepath = os.fspath(filepath)
    directory, name = os.path.split(os.path.abspath(filepath))
    suffix = next((s for s in _SUFFIXES if name.endswith(s)), "")
    stem = name[: len(name) - len(suffix)]
    temporary = os.path.join(
        directory, f".{stem}.{uuid.uuid4().hex[:12]}.tmp{suffix}"
    )
    try:
        write(temporary)
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, filepath)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _atomic_target(filepath, suffixes):
    """Whether `filepath` is a local file that can be replaced atomically."""
    try:
        filepath = os.fspath(filepath)
    except TypeError:
        return False
    return (
        isinstance(filepath, str)
        and "://" not in filepath
        and filepath.endswith(suffixes)
        and not os.path.isdir(filepath)
    )


class SavingMixin:
    """Saves `self.seed_generator`'s state; saves files atomically.

    Keras leaves a `SeedGenerator`'s state out of weights files, so a run
    resumed from a backup would repeat its random draws (projections,
    noise). Weights files without the entry still load.

    `save` and `save_weights` write to a temporary file in the same
    directory and rename it over the target (`os.replace`), so a process
    killed during a save leaves the previous file complete and loadable
    (Keras writes in place). Remote paths (`gs://...`), sharded weights
    and unzipped saves are written by Keras as usual.
    """

    def save_own_variables(self, store):
        super().save_own_variables(store)
        store[SEED_STATE] = self.seed_generator.state

    def load_own_variables(self, store):
        keys = list(store.keys())
        super().load_own_variables(
            {key: store[key] for key in keys if key != SEED_STATE}
        )
        if SEED_STATE in keys:
            self.seed_generator.state.assign(store[SEED_STATE])

    def save(self, filepath, overwrite=True, zipped=None, **kwargs):
        if zipped is False or not _atomic_target(filepath, (".keras",)):
            return super().save(
                filepath, overwrite=overwrite, zipped=zipped, **kwargs
            )
        if not overwrite and os.path.exists(filepath):
            # Keras asks the user whether to overwrite.
            return super().save(
                filepath, overwrite=overwrite, zipped=zipped, **kwargs
            )
        replace_atomically(
            filepath,
            lambda path: super(SavingMixin, self).save(
                path, overwrite=True, zipped=zipped, **kwargs
            ),
        )

    def save_weights(self, filepath, overwrite=True, max_shard_size=None):
        if max_shard_size is not None or not _atomic_target(
            filepath, (".weights.h5",)
        ):
            return super().save_weights(
                filepath, overwrite=overwrite, max_shard_size=max_shard_size
            )
        if not overwrite and os.path.exists(filepath):
            return super().save_weights(filepath, overwrite=overwrite)
        replace_atomically(
            filepath,
            lambda path: super(SavingMixin, self).save_weights(
                path, overwrite=True
            ),
        )
