"""Helpers shared by the example scripts: strategies, runs, tables, plots."""

import json
import math
import os
import weakref

import keras
import numpy as np
import tensorflow as tf
from absl import app

from keras_jacobian.distribute import multi_worker
from keras_jacobian.distribute.strategies import get_strategy  # noqa: F401
from keras_jacobian.distribute.strategies import is_chief


def flag_values(*modules):
    """The values of the flags defined by the given modules, by name."""
    from absl import flags

    values = {}
    for module in modules:
        for flag in flags.FLAGS.get_flags_for_module(module):
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
            f". Pass e.g. --{flag}=1,5,20."
        )
    return ints


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
    if not parsed:
        raise app.UsageError(
            "Expected at least one value in --samples_per_class. Pass e.g. "
            "--samples_per_class=1,5,20."
        )
    return parsed


def spc_label(samples_per_class):
    """Column label of a samples-per-class value (`None` is 'all')."""
    return "all" if samples_per_class is None else str(samples_per_class)


def check_choices(values, known, flag):
    """Raises a usage error naming the unknown values of a list flag."""
    unknown = [v for v in values if v not in known]
    if unknown or not values:
        raise app.UsageError(
            f"Expected --{flag} to be a non-empty list of {list(known)}. "
            f"Received unknown values {unknown}. Pass e.g. "
            f"--{flag}={','.join(list(known)[:2])}."
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
            keras.callbacks.BackupAndRestore(
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
    return model.fit(
        dataset,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=run_callbacks,
        verbose=verbose,
    )


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


def summarize(records, row_key, col_key, value_key="accuracy"):
    """Mean and standard deviation over seeds of each (row, column) cell.

    Args:
        records: list of dicts with keys `row_key`, `col_key`, `value_key`.
        row_key: key of the table rows (e.g. "method").
        col_key: key of the table columns (e.g. "samples_per_class").
        value_key: key of the value.

    Returns:
        A dict `{"rows": [...], "columns": [...], "cells": {row: {col:
        {"mean", "std", "n", "values"}}}}`, rows and columns in order of
        appearance. `std` is the population standard deviation over seeds
        (0 for one seed).
    """
    rows, cols, cells = [], [], {}
    for record in records:
        r, c = str(record[row_key]), str(record[col_key])
        if r not in rows:
            rows.append(r)
        if c not in cols:
            cols.append(c)
        cells.setdefault(r, {}).setdefault(c, []).append(
            float(record[value_key])
        )
    out = {}
    for r in rows:
        out[r] = {}
        for c, values in cells[r].items():
            out[r][c] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values)),
                "n": len(values),
                "values": values,
            }
    return {"rows": rows, "columns": cols, "cells": out}


def markdown_table(summary, row_title, col_title, labels=None):
    """A Markdown table of `mean ± std` cells; the best mean in bold."""
    labels = labels or {}
    cols = summary["columns"]
    lines = [
        f"| {row_title} \\ {col_title} | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    best = {}
    for c in cols:
        means = [
            summary["cells"][r][c]["mean"]
            for r in summary["rows"]
            if c in summary["cells"][r]
        ]
        best[c] = max(means) if means else None
    for r in summary["rows"]:
        cells = []
        for c in cols:
            cell = summary["cells"][r].get(c)
            if cell is None:
                cells.append("-")
                continue
            text = f"{cell['mean']:.2f} ± {cell['std']:.2f}"
            if len(summary["rows"]) > 1 and cell["mean"] == best[c]:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {labels.get(r, r)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(output_dir, stem, summary, records, table, extra=None):
    """Writes `<stem>.md` and `<stem>.json`; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    md_path = os.path.join(output_dir, f"{stem}.md")
    json_path = os.path.join(output_dir, f"{stem}.json")
    with open(md_path, "w") as f:
        f.write(table + "\n")
    payload = {"summary": summary, "runs": records}
    payload.update(extra or {})
    with open(json_path, "w") as f:
        json.dump(payload, f, indent=2)
    return md_path, json_path


def report(
    output_dir,
    stem,
    records,
    header,
    *,
    column_key,
    row_title,
    column_title,
    extra,
    title,
    labels,
    log_x=False,
):
    """Summarises the runs over seeds and reports them.

    Writes `<stem>.md` and `<stem>.json` (the table with `header` above
    it), plots `<stem>.png` and prints the table.

    Returns:
        The summary of `summarize(records, "method", column_key)`.
    """
    summary = summarize(records, "method", column_key)
    table = markdown_table(summary, row_title, column_title, labels=labels)
    text = header + "\n\n" + table
    write_results(output_dir, stem, summary, records, text, extra=extra)
    plot(
        summary,
        os.path.join(output_dir, f"{stem}.png"),
        column_title,
        "test accuracy (%)",
        title,
        labels=labels,
        log_x=log_x,
    )
    print(text, flush=True)
    return summary


def plot(summary, path, xlabel, ylabel, title, labels=None, log_x=False):
    """Plots one line per row (mean, with ±std bands) over the columns."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    labels = labels or {}
    cols = summary["columns"]
    numeric = all(_is_number(c) for c in cols)
    xs = [float(c) for c in cols] if numeric else list(range(len(cols)))
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in summary["rows"]:
        points = [
            (x, summary["cells"][r][c])
            for x, c in zip(xs, cols)
            if c in summary["cells"][r]
        ]
        x = np.array([p[0] for p in points])
        mean = np.array([p[1]["mean"] for p in points])
        std = np.array([p[1]["std"] for p in points])
        ax.plot(x, mean, marker="o", label=labels.get(r, r))
        ax.fill_between(x, mean - std, mean + std, alpha=0.15)
    if not numeric:
        ax.set_xticks(xs)
        ax.set_xticklabels(cols)
    elif log_x and min(xs) > 0:
        ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels(cols)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True
