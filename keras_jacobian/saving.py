"""Saving models: the random-draw state with the weights, and files written
so that a kill during a save never loses the previous file."""

import errno
import hashlib
import os
import re
import socket
import stat
import uuid

SEED_STATE = "seed_generator_state"

# File endings Keras reads the format from; a temporary file keeps them.
_SUFFIXES = (".weights.h5", ".keras", ".h5", ".hdf5")

# Temporary files are named `.<stem>.<host>-<pid>-<token>.tmp<suffix>`:
# the host (a hash of its name) and the process id tell a leftover of a
# dead process (`stale_temporaries`) from a save still in progress.
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TEMPORARY = re.compile(
    r"\.(?P<stem>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)"
    r"-(?P<token>[0-9a-f]{12})\.tmp(?P<suffix>.*)"
)
# Temporary files this process is writing now.
_WRITING = set()


def _split_suffix(name):
    suffix = next((s for s in _SUFFIXES if name.endswith(s)), "")
    return name[: len(name) - len(suffix)], suffix


def temporary_name(name, pid=None, token=None):
    """The name `replace_atomically` writes `name` to before the rename.

    Args:
        name: the final file name, without its directory.
        pid: the writing process's id; this process's by default.
        token: 12 hexadecimal digits; random by default.

    Returns:
        `.<stem>.<host>-<pid>-<token>.tmp<suffix>`, where `<suffix>` is
        the ending Keras reads the format from (`.keras`, `.weights.h5`,
        ...) and `<host>` 8 hexadecimal digits of this host's name.
    """
    stem, suffix = _split_suffix(name)
    pid = os.getpid() if pid is None else int(pid)
    token = uuid.uuid4().hex[:12] if token is None else token
    return f".{stem}.{_HOST}-{pid}-{token}.tmp{suffix}"


def _process_alive(pid):
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return True  # no safe liveness check: assume alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return True


def stale_temporaries(directory, names):
    """Temporary files of `names` in `directory` that no live save uses.

    Only files that are provably leftovers of `replace_atomically` are
    returned: regular files named by `temporary_name` for one of `names`,
    written on this host by a process that is no longer alive (or by this
    process, outside a save in progress). Anything else, however its name
    looks, belongs to someone else.

    Args:
        directory: a local directory.
        names: final file names (without directory) whose temporaries to
            look for.

    Returns:
        A list of paths.
    """
    found = []
    for entry in os.listdir(directory):
        match = _TEMPORARY.fullmatch(entry)
        if match is None or match["host"] != _HOST:
            continue
        name = match["stem"] + match["suffix"]
        if (
            name not in names
            or temporary_name(name, match["pid"], match["token"]) != entry
        ):
            continue
        path = os.path.join(directory, entry)
        pid = int(match["pid"])
        if pid == os.getpid():
            if os.path.realpath(path) in _WRITING:
                continue
        elif _process_alive(pid):
            continue
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                found.append(path)
        except FileNotFoundError:
            pass
    return found


def replace_atomically(filepath, write):
    """Calls `write(temporary_path)`, then renames it to `filepath`.

    The temporary file is in the same directory as `filepath` and has the
    same ending (Keras reads the format from it), so the rename is an
    atomic `os.replace`: `filepath` is at every instant either the
    previous complete file or the new complete one, even if the process
    is killed while writing. On an error the temporary file is removed
    and the previous file is left untouched.

    A symbolic link is written through, as Keras' own saves do: the file
    it points to is replaced and the link is kept. A missing directory is
    an error, as in Keras (`FileNotFoundError` naming `filepath`).

    Args:
        filepath: the final path (`str` or `os.PathLike`), on a local
            file system.
        write: a function writing the whole file to the path it is given.
    """
    filepath = os.fspath(filepath)
    target = os.path.realpath(filepath)
    if target in _WRITING:
        # The temporary file of an enclosing call (a model's atomic
        # `save_weights` inside `BackupAndRestore`'s): it is renamed once
        # written, so writing it directly is already atomic.
        write(target)
        return
    directory, name = os.path.split(target)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            errno.ENOENT,
            f"Cannot save to {filepath!r}: its folder {directory!r} does not "
            "exist. Create it first (`os.makedirs`) or save elsewhere. "
            f"Received: filepath={filepath!r}",
        )
    temporary = os.path.join(directory, temporary_name(name))
    _WRITING.add(temporary)
    try:
        write(temporary)
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    finally:
        _WRITING.discard(temporary)


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
    (Keras writes in place). As in Keras, a symbolic link is written
    through (the file it points to is replaced, the link kept) and a
    missing folder raises `FileNotFoundError`. Remote paths
    (`gs://...`), sharded weights and unzipped saves are written by Keras
    as usual.
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
