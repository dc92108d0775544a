"""Helpers shared by the example scripts: strategies, runs, evaluation.

The statistics and reports live in `reporting`; they are re-exported here.
"""

import json
import math
import os
import sys
import weakref

import common_flags
import keras
import numpy as np
import reporting
import tensorflow as tf
from absl import app
from absl import flags
from reporting import CONFIDENCE  # noqa: F401
from reporting import Progress  # noqa: F401
from reporting import atomic_write  # noqa: F401
from reporting import differences_table  # noqa: F401
from reporting import format_duration  # noqa: F401
from reporting import markdown_table  # noqa: F401
from reporting import mean_interval  # noqa: F401
from reporting import paired_differences  # noqa: F401
from reporting import plot  # noqa: F401
from reporting import report  # noqa: F401
from reporting import summarize  # noqa: F401
from reporting import t_critical  # noqa: F401
from reporting import write_results  # noqa: F401

from keras_jacobian import callbacks as kj_callbacks
from keras_jacobian.distribute import multi_worker
from keras_jacobian.distribute.strategies import get_strategy  # noqa: F401
from keras_jacobian.distribute.strategies import is_chief
from keras_jacobian.experiments import data as data_lib

FLAGS = flags.FLAGS


# Flags that do not change what a run trains: a backup stays valid.
_NOT_TRAINING = (
    "output_dir",
    "tensorboard_dir",
    "backup_dir",
    "verbose",
    "seeds",
    "methods",
    "samples_per_class",
)


def training_settings():
    """The values of the scripts' flags that change what a run trains."""
    here = os.path.dirname(os.path.abspath(__file__))
    values = {}
    for name, flag_list in FLAGS.flags_by_module_dict().items():
        path = getattr(sys.modules.get(name), "__file__", None) or ""
        if os.path.dirname(os.path.abspath(path)) == here:
            for flag in flag_list:
                values[flag.name] = flag.value
    for name in _NOT_TRAINING + common_flags.REMOVED_FLAGS:
        values.pop(name, None)
    return json.loads(json.dumps(values, default=str))


def check_backup_settings(backup_dir):
    """Refuses to resume backups that other settings wrote.

    `<backup_dir>/settings.json` records the settings of the runs whose
    backups are in the folder; while any is left, a run with other
    settings stops, naming them.
    """
    path = os.path.join(backup_dir, "settings.json")
    settings = training_settings()
    left = os.path.isdir(backup_dir) and any(
        os.path.isdir(os.path.join(backup_dir, name))
        for name in os.listdir(backup_dir)
    )
    if left and os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        changed = sorted(
            name
            for name in set(saved) | set(settings)
            if saved.get(name) != settings.get(name)
        )
        if changed:
            listed = ", ".join(
                f"--{n}: {saved.get(n)!r} there, {settings.get(n)!r} now"
                for n in changed
            )
            raise app.UsageError(
                f"Expected the settings of the backups in --backup_dir="
                f"{backup_dir} to resume them. Received other ones "
                f"({listed}). Pass the same flags to resume, or another "
                "--backup_dir (or delete this one) to start over."
            )
    os.makedirs(backup_dir, exist_ok=True)
    atomic_write(path, json.dumps(settings, indent=1, sort_keys=True))


def flag_values(*modules):
    """The values of the flags defined by the given modules, by name."""
    values = {}
    for module in modules:
        removed = getattr(module, "REMOVED_FLAGS", ())
        for flag in flags.FLAGS.get_flags_for_module(module):
            if flag.name not in removed:
                values[flag.name] = flag.value
    return values


def parse_ints(values, flag, minimum=1):
    """Parses a list flag of integers, with a usage error when it fails."""
    try:
        ints = [int(v) for v in values]
    except (TypeError, ValueError):
        ints = None
    if not ints or min(ints) < minimum:
        raise app.UsageError(
            f"Expected --{flag} to be a comma-separated list of integers >= "
            f"{minimum}. Received: --{flag}={','.join(map(str, values or []))}"
            f". Pass e.g. --{flag}={'0,1,2' if flag == 'seeds' else '1,5,20'}."
        )
    repeated = sorted({i for i in ints if ints.count(i) > 1})
    if repeated:
        raise app.UsageError(
            f"Expected --{flag} without repeats (a repeated value would be "
            f"counted twice in the means and intervals). Received: "
            f"--{flag}={','.join(map(str, values))}, repeating "
            f"{', '.join(map(str, repeated))}."
        )
    return ints


def load_data(validation_fraction=0.0):
    """Loads the full training set, with errors that say what to do."""
    try:
        data = data_lib.load_dataset(
            FLAGS.dataset,
            data_dir=FLAGS.data_dir,
            image_size=FLAGS.image_size,
            split_seed=FLAGS.seed,
            validation_fraction=validation_fraction,
            download=FLAGS.download,
        )
    except data_lib.DatasetNotAvailableError as error:
        raise SystemExit(f"ERROR: {error}") from error
    except ValueError as error:
        raise app.UsageError(f"--dataset={FLAGS.dataset}: {error}") from error
    counts = np.bincount(data.train_labels, minlength=data.num_classes)
    missing = [data.class_names[c] for c in np.flatnonzero(counts == 0)]
    if missing:
        raise app.UsageError(
            f"Expected training images of every class of --dataset="
            f"{FLAGS.dataset}. Received: none of {missing} in its training "
            "split (their images are in another split only). Add training "
            "images of these classes, or remove their folders from every "
            "split."
        )
    tested = np.bincount(data.test_labels, minlength=data.num_classes)
    untested = [data.class_names[c] for c in np.flatnonzero(tested == 0)]
    if untested:
        print(
            f"WARNING: no test images of {untested} in --dataset="
            f"{FLAGS.dataset}: the test accuracy leaves these classes out.",
            flush=True,
        )
    return data


def subset_indices(data, spc, seed):
    """Indices of `spc` training examples per class, drawn with `seed`."""
    counts = np.bincount(data.train_labels, minlength=data.num_classes)
    fewest = int(np.argmin(counts))
    if counts[fewest] < spc:
        raise app.UsageError(
            f"Expected at least {spc} training images in every class for "
            f"--samples_per_class={spc}. Received: {counts[fewest]} of "
            f"class {data.class_names[fewest]!r} in {data.name}. Pass "
            f"--samples_per_class={counts[fewest]} or fewer, or "
            "--samples_per_class=all to keep every image."
        )
    return data_lib.stratified_subsample(
        data.train_labels, spc, seed, num_classes=data.num_classes
    )


def seeds_label(seeds):
    """'1 seed: [0]', '5 seeds: [0, 1, 2, 3, 4]'."""
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}: {seeds}"


def check_no_repeats(values, flag):
    """Refuses a list flag that repeats a value (its runs would be
    counted twice in the means and intervals)."""
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise app.UsageError(
            f"Expected --{flag} without repeats (a repeated value would be "
            f"counted twice in the means and intervals). Received: "
            f"--{flag}={','.join(map(str, values))}, repeating "
            f"{', '.join(repeated)}."
        )


def flag_or(value, default):
    """A list flag's value, or `default` when it is not given (an empty
    list, `--flag=`, is a value: the parsers refuse it)."""
    return default if value is None else value


def parse_samples_per_class(values):
    """Parses --samples_per_class: positive integers or 'all' (`None`)."""
    parsed = []
    for value in values:
        if str(value).lower() == "all":
            parsed.append(None)
            continue
        try:
            k = int(value)
        except ValueError:
            k = 0
        if k < 1:
            raise app.UsageError(
                "Expected --samples_per_class to hold positive integers or "
                f"'all'. Received: {value!r} in --samples_per_class="
                f"{','.join(map(str, values))}. Pass e.g. "
                "--samples_per_class=1,5,20."
            )
        parsed.append(k)
    check_no_repeats([spc_label(k) for k in parsed], "samples_per_class")
    if not parsed:
        raise app.UsageError(
            "Expected at least one value in --samples_per_class. Received "
            "an empty list (--samples_per_class=). Leave the flag out for "
            "the default, or pass e.g. --samples_per_class=1,5,20."
        )
    return parsed


def spc_label(samples_per_class):
    """Column label of a samples-per-class value (`None` is 'all')."""
    return "all" if samples_per_class is None else str(samples_per_class)


def check_choices(values, known, flag):
    """Raises a usage error naming the unknown values of a list flag."""
    unknown = [v for v in values if v not in known]
    if not values:
        raise app.UsageError(
            f"Expected --{flag} to be a non-empty list of {list(known)}. "
            f"Received an empty list (--{flag}=). Leave the flag out for "
            f"the default, or pass e.g. --{flag}="
            f"{','.join(list(known)[:2])}."
        )
    if unknown:
        raise app.UsageError(
            f"Expected --{flag} to be a non-empty list of {list(known)}. "
            f"Received unknown values {unknown}. Pass e.g. "
            f"--{flag}={','.join(list(known)[:2])}."
            + (common_flags.did_you_mean(unknown[0], known) if unknown else "")
        )
    return list(values)


def eval_batch_size(batch_size):
    """Batch size of evaluation pipelines: larger, as no gradient is kept."""
    return max(int(batch_size), 256)


def steps_per_epoch(num_examples, batch_size, min_steps):
    """Steps of one epoch: a pass over the data, at least `min_steps`."""
    return max(math.ceil(num_examples / batch_size), int(min_steps))


def repeat_for_fit(dataset):
    """Repeats a training pipeline, so epochs can be longer than one pass."""
    return dataset.repeat()


def reset_optimizer(optimizer):
    """Zeroes the optimizer's slots and step count (keeps its settings)."""
    for variable in optimizer.variables:
        if "learning_rate" in variable.path:
            continue
        variable.assign(keras.ops.zeros_like(variable))


def callbacks(
    run_name, epochs, learning_rate, schedule, tensorboard_dir, backup_dir
):
    """The callbacks of one training run."""
    result = []
    if schedule == "cosine":
        # Per-epoch cosine: set by a callback rather than baked into the
        # optimizer, so a compiled model is reused by runs of any length.
        def rate(epoch, lr=None):
            return float(
                learning_rate * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
            )

    else:

        def rate(epoch, lr=None):
            return float(learning_rate)

    result.append(keras.callbacks.LearningRateScheduler(rate))
    if tensorboard_dir:
        result.append(
            keras.callbacks.TensorBoard(os.path.join(tensorboard_dir, run_name))
        )
    if backup_dir:
        result.append(
            # Its saves are atomic: a kill during one leaves the previous
            # backup complete (Keras' own callback writes in place).
            kj_callbacks.BackupAndRestore(
                os.path.join(backup_dir, run_name), delete_checkpoint=True
            )
        )
    return result


def train(
    model,
    dataset,
    *,
    epochs,
    steps_per_epoch,
    run_name,
    learning_rate,
    schedule,
    tensorboard_dir,
    backup_dir,
    verbose,
):
    """Trains a compiled model: `fit`, or the multi-worker loop.

    Keras' `fit` does not run under `MultiWorkerMirroredStrategy`; there
    the same training step runs in `keras_jacobian.distribute.multi_worker.fit`,
    which backs up on the chief only. Only the chief writes TensorBoard
    logs.
    """
    if backup_dir:
        check_backup_settings(backup_dir)
    strategy = model.distribute_strategy
    multi = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    run_callbacks = callbacks(
        run_name,
        epochs,
        learning_rate,
        schedule,
        tensorboard_dir if is_chief(strategy) else None,
        None if multi else backup_dir,
    )
    if multi:
        return multi_worker.fit(
            model,
            dataset,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=run_callbacks,
            verbose=verbose,
            backup_dir=(
                os.path.join(backup_dir, run_name) if backup_dir else None
            ),
        )
    history = model.fit(
        dataset,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=run_callbacks,
        verbose=verbose,
        # The pipelines shuffle themselves; `fit`'s default `shuffle=True`
        # only adds a warning for a `tf.data.Dataset`.
        shuffle=False,
    )
    for callback in run_callbacks:
        epoch = getattr(callback, "resumed_epoch", None)
        if isinstance(callback, kj_callbacks.BackupAndRestore) and epoch:
            reporting.RESUMED_RUNS.append({"run": run_name, "epoch": epoch})
            print(f"{run_name}: resumed from its backup at epoch {epoch}")
    return history


_PREDICT = weakref.WeakKeyDictionary()


def accuracy(model, dataset):
    """Top-1 accuracy (%) of a logits model on a labelled pipeline."""
    if model not in _PREDICT:
        # One traced function per model, reused by every evaluation.
        _PREDICT[model] = tf.function(
            lambda x: model(x, training=False), reduce_retracing=True
        )
    predict = _PREDICT[model]
    correct = total = 0
    for x, y in dataset:
        logits = predict(x)
        pred = np.argmax(keras.ops.convert_to_numpy(logits), axis=-1)
        correct += int(np.sum(pred == np.asarray(y)))
        total += int(np.asarray(y).shape[0])
    return 100.0 * correct / max(total, 1)
