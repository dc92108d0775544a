"""A training loop for several worker processes (`TF_CONFIG`).

Keras 3.15's `Model.fit` fails under `MultiWorkerMirroredStrategy`: the
symbolic build and the per-worker reduction of the logs break once two
worker processes run (keras-team/keras#20585, tensorflow/tensorflow#72388).
`fit` here is a small loop that does what `Model.fit` does for training,
with the model's own `train_step`:

- each step runs `model.train_step` on every replica with `strategy.run`
  inside a `tf.function` (XLA-compiled when `model.jit_compile` is set);
- the logs are the model's metrics read in cross-replica context, so they
  are summed over every replica of every worker (global means);
- Keras callbacks run through a `keras.callbacks.CallbackList` (with a
  `ProgbarLogger` on the chief and a `History` everywhere), and
  `model.stop_training` ends the run;
- with `backup_dir`, the run backs itself up every `save_freq` steps or
  every epoch and resumes from the last backup when started again with the
  same command, as `keras.callbacks.BackupAndRestore` does (see `Backup`).

It runs under any strategy (default, mirrored, multi-worker), so one code
path serves every scale; under a single-process strategy `Model.fit`
works as well.
"""

import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_jacobian import _compat
from keras_jacobian import label_range
from keras_jacobian.distribute import strategies


def _log_value(value):
    value = np.asarray(value)
    return float(value) if value.ndim == 0 else value


class Backup:
    """Backs up a model during training and restores it after a failure.

    The same idea as `keras.callbacks.BackupAndRestore`, made safe for
    several workers and for a process killed at any instant, on
    `tf.train.CheckpointManager`:

    - the checkpoint holds the model's variables (for a `Distiller`: the
      student, term layers, term weights, the student-loss weight and the
      seed generator's state), the optimizer's variables (iterations,
      moments, loss scale) and the position (epoch, step within the
      epoch);
    - `CheckpointManager` writes a new numbered checkpoint, then replaces
      its `checkpoint` index file atomically and deletes the older ones
      (`max_to_keep`), so a kill at any instant leaves the previous backup
      intact and named;
    - every worker saves, since saving reads variables that all workers
      must read together; only the chief writes into `backup_dir`, the
      other workers write into a temporary directory that is deleted
      straight away.

    `backup_dir` must be a directory that every worker can read (a shared
    file system or a bucket) when the workers run on different machines.

    Args:
        backup_dir: where the chief keeps the backup.
        save_freq: `"epoch"` or a number of steps between backups.
        strategy: the model's `tf.distribute.Strategy`.
        max_to_keep: number of checkpoints kept in `backup_dir`.
    """

    def __init__(
        self, backup_dir, save_freq="epoch", strategy=None, max_to_keep=2
    ):
        if not backup_dir:
            raise ValueError(
                "`backup_dir` must be a directory path. Received: "
                f"backup_dir={backup_dir!r}"
            )
        if save_freq != "epoch" and (
            not isinstance(save_freq, int) or save_freq < 1
        ):
            raise ValueError(
                "`save_freq` must be 'epoch' or an integer >= 1 (steps). "
                f"Received: save_freq={save_freq!r}"
            )
        if not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(
                "`max_to_keep` must be an integer >= 1. Received: "
                f"max_to_keep={max_to_keep!r}"
            )
        self.backup_dir = backup_dir
        self.save_freq = save_freq
        self.max_to_keep = max_to_keep
        self.chief = strategies.is_chief(strategy)
        self._count = 0
        self._checkpoint = None
        self._manager = None
        # The position, saved with the variables; created here, outside
        # any strategy scope (`fit` builds the `Backup` there).
        self._epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._step = tf.Variable(0, dtype=tf.int64, trainable=False)

    def _checkpoint_of(self, model):
        """The `tf.train.Checkpoint` of the model, built once."""
        if self._checkpoint is None:
            variables, seen = [], set()
            optimizer = model.optimizer.variables if model.optimizer else []
            for v in list(model.variables) + list(optimizer):
                if id(v) not in seen:
                    seen.add(id(v))
                    variables.append(v)
            self._checkpoint = tf.train.Checkpoint(
                epoch=self._epoch,
                step=self._step,
                **{f"v{i}": v.value for i, v in enumerate(variables)},
            )
        return self._checkpoint

    def restore(self, model):
        """Loads the last backup into `model`; returns (epoch, step)."""
        latest = tf.train.latest_checkpoint(self.backup_dir)
        if latest is None:
            return 0, 0
        checkpoint = self._checkpoint_of(model)
        try:
            checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            raise ValueError(
                f"The backup {latest!r} does not match this model: it was "
                f"written by another model or another version of it "
                f"({error}). Resume with the same model, or pass another "
                "`backup_dir`."
            ) from None
        return int(self._epoch.numpy()), int(self._step.numpy())

    def after_step(self, model, epoch, step):
        """Saves after `step` (0-based) when `save_freq` steps have run."""
        if self.save_freq == "epoch":
            return
        self._count += 1
        if self._count >= self.save_freq:
            self._save(model, epoch, step + 1)

    def after_epoch(self, model, epoch):
        self._save(model, epoch + 1, 0)

    def _save(self, model, epoch, step):
        self._count = 0
        checkpoint = self._checkpoint_of(model)
        self._epoch.assign(epoch)
        self._step.assign(step)
        if not self.chief:
            scratch = tempfile.mkdtemp(prefix="keras_jacobian_backup_")
            try:
                tf.train.CheckpointManager(
                    checkpoint, scratch, max_to_keep=1
                ).save()
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return
        if self._manager is None:
            self._manager = tf.train.CheckpointManager(
                checkpoint, self.backup_dir, max_to_keep=self.max_to_keep
            )
        self._manager.save()

    def delete(self):
        """Removes the backup once training has finished (chief only).

        Only the checkpoint files go (those of the index and the index
        itself); `backup_dir` goes too when nothing else is in it, so a
        folder shared with the user's own files keeps them.
        """
        if not self.chief:
            return
        state = tf.train.get_checkpoint_state(self.backup_dir)
        prefixes = list(state.all_model_checkpoint_paths) if state else []
        for prefix in prefixes:
            if not os.path.isabs(prefix):
                prefix = os.path.join(self.backup_dir, prefix)
            for path in tf.io.gfile.glob(prefix + ".*"):
                tf.io.gfile.remove(path)
        index = os.path.join(self.backup_dir, "checkpoint")
        if tf.io.gfile.exists(index):
            tf.io.gfile.remove(index)
        try:
            if not tf.io.gfile.listdir(self.backup_dir):
                tf.io.gfile.rmtree(self.backup_dir)
        except tf.errors.NotFoundError:
            pass

    @staticmethod
    def position(backup_dir):
        """The (epoch, step) of the last backup in `backup_dir`, or None."""
        latest = tf.train.latest_checkpoint(backup_dir)
        if latest is None:
            return None
        return tuple(
            int(
                tf.train.load_variable(
                    latest, f"{k}/.ATTRIBUTES/VARIABLE_VALUE"
                )
            )
            for k in ("epoch", "step")
        )


def fit(
    model,
    dataset,
    epochs=1,
    steps_per_epoch=None,
    callbacks=None,
    verbose="auto",
    initial_epoch=0,
    backup_dir=None,
    save_freq="epoch",
    delete_backup=True,
):
    """Trains `model` with its `train_step` on every replica and worker.

    The model must be built and compiled inside `strategy.scope()`; the
    strategy is the model's (`model.distribute_strategy`). Every worker
    runs the same command and the same number of steps.

    Args:
        model: a compiled `keras.Model` (e.g. a `Distiller`).
        dataset: a `tf.data.Dataset` of `(x, y)` or `(x, y, sample_weight)`
            batched with the global batch size (split across replicas and
            workers by `experimental_distribute_dataset`), or a function
            `dataset_fn(input_context)` returning the per-replica batches
            of one input pipeline (`distribute_datasets_from_function`).
            Batch with `drop_remainder=True` so that every replica gets
            the same number of examples.
        epochs: index of the last epoch, as in `Model.fit`.
        steps_per_epoch: steps per epoch; default the dataset's
            cardinality (required for a `dataset_fn` or an infinite
            dataset).
        callbacks: Keras callbacks. They run on every worker; build the
            ones that write files (checkpoints, CSV, TensorBoard) only
            where `keras_jacobian.is_chief(strategy)` is true.
        verbose: 0, 1 (progress bar), 2 (a line per epoch) or `"auto"`
            (1). Only the chief prints.
        initial_epoch: epoch to start from (a backup overrides it).
        backup_dir: directory for backups (see `Backup`); `None` for none.
        save_freq: `"epoch"` or a number of steps between backups.
        delete_backup: remove the backup once training has finished, as
            `BackupAndRestore` does, so the next run starts anew.

    Returns:
        A `keras.callbacks.History` with the epochs run by this process.

    Example:

    ```python
    strategy = keras_jacobian.get_strategy("multi_worker")  # TF_CONFIG
    with strategy.scope():
        distiller = keras_jacobian.Distiller(teacher, student, terms)
        distiller.compile(optimizer="adam", loss=loss)
    keras_jacobian.distribute.multi_worker.fit(
        distiller, dataset.batch(64, drop_remainder=True), epochs=10,
        backup_dir="/shared/backup", save_freq=100,
    )
    if keras_jacobian.is_chief(strategy):
        distiller.student.save("student.keras")
    ```
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(
            f"`epochs` must be an integer >= 1. Received: epochs={epochs!r}"
        )
    if model.optimizer is None:
        raise ValueError(
            "The model must be compiled (with an optimizer) before "
            "training. Call `model.compile(...)` inside `strategy.scope()`."
        )
    strategy = model.distribute_strategy
    chief = strategies.is_chief(strategy)
    steps = _steps(dataset, steps_per_epoch)
    _build(model, strategy, dataset)
    train_function = _train_function(model, strategy)

    backup = None
    start_step = 0
    if backup_dir is not None:
        backup = Backup(backup_dir, save_freq, strategy)
        with strategy.scope():
            restored_epoch, start_step = backup.restore(model)
        initial_epoch = max(initial_epoch, restored_epoch)

    verbose = 1 if verbose == "auto" else verbose
    history = keras.callbacks.History()
    callback_list = list(callbacks or []) + [history]
    if verbose and chief:
        callback_list.append(keras.callbacks.ProgbarLogger())
    callback_list = keras.callbacks.CallbackList(
        callback_list,
        model=model,
        verbose=verbose if chief else 0,
        epochs=epochs,
        steps=steps,
    )
    model.stop_training = False
    callback_list.on_train_begin()
    logs = {}
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        first = start_step if epoch == initial_epoch else 0
        iterator = iter(_distribute(strategy, dataset, first))
        for step in range(first, steps):
            callback_list.on_train_batch_begin(step)
            logs = train_function(iterator)
            logs = {k: _log_value(v) for k, v in logs.items()}
            callback_list.on_train_batch_end(step, logs)
            if backup is not None:
                backup.after_step(model, epoch, step)
            if model.stop_training:
                break
        callback_list.on_epoch_end(epoch, dict(logs))
        if backup is not None:
            backup.after_epoch(model, epoch)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    if backup is not None and delete_backup:
        backup.delete()
    return history


def _steps(dataset, steps_per_epoch):
    if steps_per_epoch is not None:
        if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(
                "`steps_per_epoch` must be an integer >= 1. Received: "
                f"steps_per_epoch={steps_per_epoch!r}"
            )
        return steps_per_epoch
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(
            "With a `dataset_fn`, pass `steps_per_epoch`: the number of "
            "steps cannot be read from a function. Received: "
            f"dataset={dataset!r}, steps_per_epoch=None"
        )
    cardinality = int(dataset.cardinality())
    if cardinality < 1:
        raise ValueError(
            "The dataset's length is unknown or infinite (cardinality "
            f"{cardinality}). Pass `steps_per_epoch`."
        )
    return cardinality


def _distribute(strategy, dataset, skip):
    if isinstance(dataset, tf.data.Dataset):
        return strategy.experimental_distribute_dataset(dataset.skip(skip))
    return strategy.distribute_datasets_from_function(
        lambda context: dataset(context).skip(skip)
    )


def _first_batch(strategy, dataset):
    if isinstance(dataset, tf.data.Dataset):
        return next(iter(dataset.take(1)))
    context = tf.distribute.InputContext(
        num_input_pipelines=1,
        input_pipeline_id=0,
        num_replicas_in_sync=strategy.num_replicas_in_sync,
    )
    return next(iter(dataset(context).take(1)))


def _build(model, strategy, dataset):
    """Creates the optimizer's, loss's and metrics' variables in scope.

    Variables must exist before the step runs on the replicas. Shapes and
    dtypes are taken from one batch, without running the model on it.
    """
    with strategy.scope():
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        if _compat.needs_symbolic_build(model):
            batch = _first_batch(strategy, dataset)
            _compat.symbolic_build(model, batch)


def _train_function(model, strategy):
    label_range.loss_monitor(model, strategy)
    step = model.train_step
    if model.jit_compile:
        step = tf.function(step, jit_compile=True, reduce_retracing=True)

    @tf.function
    def train_function(iterator):
        strategy.run(step, args=(next(iterator),))
        return model.get_metrics_result()

    return label_range.checked(train_function, model)
