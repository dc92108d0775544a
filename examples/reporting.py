"""Statistics and reports of the example scripts.

Means over seeds with Student-t 95% confidence intervals, paired
differences between methods (runs of one seed share their training subset
and initial weights), Markdown tables, results files written atomically,
plots with interval error bars, and progress lines.
"""

import json
import math
import os
import time

import numpy as np

CONFIDENCE = 0.95


def t_critical(dof, confidence=CONFIDENCE):
    """Two-sided critical value of Student's t with `dof` degrees of freedom.

    Args:
        dof: Degrees of freedom, a positive integer (`n - 1` for `n` runs).
        confidence: Confidence level of the interval, in (0, 1).

    Returns:
        `t` such that `P(|T| <= t) = confidence` for `T ~ t(dof)`.
    """
    from scipy import stats

    if int(dof) < 1 or not 0.0 < float(confidence) < 1.0:
        raise ValueError(
            "Expected dof >= 1 and confidence in (0, 1). Received: "
            f"dof={dof!r}, confidence={confidence!r}."
        )
    return float(stats.t.ppf(0.5 + float(confidence) / 2.0, int(dof)))


def mean_interval(values, confidence=CONFIDENCE, bounds=None):
    """Mean of `values` with its Student-t confidence interval.

    The interval is `mean ± t * s / sqrt(n)`, with `s` the sample standard
    deviation (`ddof=1`) and `t` the critical value of Student's t with
    `n - 1` degrees of freedom, cut at `bounds` (the values' range: an
    accuracy lies in [0, 100]); `half_width` is not cut. With one value
    there is no interval: its bounds are `None`.

    Args:
        values: Sequence of numbers (e.g. one accuracy per seed).
        confidence: Confidence level.
        bounds: `(lowest, highest)` possible value, or `None`.

    Returns:
        A dict with `mean`, `low`, `high`, `half_width` and `n`.
    """
    values = np.asarray(values, dtype="float64").ravel()
    if values.size == 0:
        raise ValueError("Expected at least one value. Received none.")
    mean = float(np.mean(values))
    n = int(values.size)
    if n < 2:
        return {
            "mean": mean,
            "low": None,
            "high": None,
            "half_width": None,
            "n": n,
        }
    sem = float(np.std(values, ddof=1)) / math.sqrt(n)
    half = t_critical(n - 1, confidence) * sem
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {
        "mean": mean,
        "low": low,
        "high": high,
        "half_width": half,
        "n": n,
    }


def summarize(records, row_key, col_key, value_key="accuracy", bounds=None):
    """Mean, standard deviation and 95% interval of each (row, column) cell.

    Args:
        records: list of dicts with keys `row_key`, `col_key`, `value_key`.
        row_key: key of the table rows (e.g. "method").
        col_key: key of the table columns (e.g. "samples_per_class").
        value_key: key of the value.
        bounds: the values' range, which cuts the intervals
            (`mean_interval`).

    Returns:
        A dict `{"rows": [...], "columns": [...], "cells": {row: {col:
        {"mean", "std", "n", "values", "low", "high", "half_width"}}}}`,
        rows and columns in order of appearance. `std` is the sample
        standard deviation over seeds (`ddof=1`, the one of the interval; 0
        for one seed); `low`, `high` and
        `half_width` describe the Student-t 95% confidence interval of the
        mean (`None` for one seed).
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
            interval = mean_interval(values, bounds=bounds)
            out[r][c] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1))
                if len(values) > 1
                else 0.0,
                "n": len(values),
                "values": values,
                "low": interval["low"],
                "high": interval["high"],
                "half_width": interval["half_width"],
            }
    return {"rows": rows, "columns": cols, "cells": out}


def paired_differences(
    records,
    comparisons,
    col_key,
    row_key="method",
    value_key="accuracy",
    bounds=None,
):
    """Mean paired difference of two methods over seeds, with its interval.

    Runs of the same seed share their training subset and initial weights,
    so the difference of two methods is taken seed by seed, and its mean
    gets a Student-t 95% confidence interval (`mean_interval`). A pair is
    skipped when one of its methods is absent from `records`.

    Args:
        records: list of dicts with `row_key`, `col_key`, `"seed"` and
            `value_key`.
        comparisons: sequence of `(method, baseline)` pairs.
        col_key: key of the columns (e.g. "samples_per_class").
        row_key: key of the methods.
        value_key: key of the value.
        bounds: the range of a difference, which cuts the intervals
            (`mean_interval`).

    Returns:
        A list of dicts `{"method", "baseline", "columns": {col: {"mean",
        "low", "high", "half_width", "n", "seeds", "differences"}}}`, the
        differences being `method - baseline`.

    Raises:
        ValueError: when the two methods of a pair were run with different
            seeds in a column (no pairing possible).
    """
    table = {}
    cols = []
    for record in records:
        c = str(record[col_key])
        if c not in cols:
            cols.append(c)
        key = (str(record[row_key]), c)
        table.setdefault(key, {})[int(record["seed"])] = float(
            record[value_key]
        )
    methods = {m for m, _ in table}
    out = []
    for method, baseline in comparisons:
        if method not in methods or baseline not in methods:
            continue
        columns = {}
        for c in cols:
            a, b = table.get((method, c)), table.get((baseline, c))
            if a is None or b is None:
                continue
            if set(a) != set(b):
                raise ValueError(
                    f"Expected {method!r} and {baseline!r} to be run with "
                    f"the same seeds at {col_key}={c}. Received seeds "
                    f"{sorted(a)} and {sorted(b)}."
                )
            seeds = sorted(a)
            diffs = [a[s] - b[s] for s in seeds]
            cell = mean_interval(diffs, bounds=bounds)
            cell.update(seeds=seeds, differences=diffs)
            columns[c] = cell
        out.append({"method": method, "baseline": baseline, "columns": columns})
    return out


def _signed(value):
    return f"{value:+.2f}"


def markdown_table(summary, row_title, col_title, labels=None):
    """A Markdown table of `mean ± h` cells; the best mean in bold.

    `h` is the half-width of the 95% confidence interval of the mean over
    seeds (only the mean is shown for one seed).
    """
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
            text = f"{cell['mean']:.2f}"
            if cell.get("half_width") is not None:
                text += f" ± {cell['half_width']:.2f}"
                half = cell["half_width"]
                if cell["high"] < cell["mean"] + half - 1e-9:
                    text += f" (to {cell['high']:.2f})"
                if cell["low"] > cell["mean"] - half + 1e-9:
                    text += f" (from {cell['low']:.2f})"
            if len(summary["rows"]) > 1 and cell["mean"] == best[c]:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {labels.get(r, r)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def differences_table(differences, columns, col_title, labels=None):
    """A Markdown table of paired differences `mean [low, high]`.

    Intervals that exclude zero are in bold.
    """
    labels = labels or {}
    lines = [
        f"| difference \\ {col_title} | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for item in differences:
        name = (
            f"{labels.get(item['method'], item['method'])} − "
            f"{labels.get(item['baseline'], item['baseline'])}"
        )
        cells = []
        for c in columns:
            cell = item["columns"].get(c)
            if cell is None:
                cells.append("-")
                continue
            if cell["low"] is None:
                cells.append(_signed(cell["mean"]))
                continue
            text = (
                f"{_signed(cell['mean'])} [{_signed(cell['low'])}, "
                f"{_signed(cell['high'])}]"
            )
            if cell["low"] > 0 or cell["high"] < 0:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def atomic_write(path, text):
    """Writes `text` to `path` through a temporary file and `os.replace`.

    A reader (or a run killed while writing) never sees a half-written
    file: `path` holds either its old or its new content.
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def write_results(output_dir, stem, summary, records, table, extra=None):
    """Writes `<stem>.md` and `<stem>.json` atomically; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    md_path = os.path.join(output_dir, f"{stem}.md")
    json_path = os.path.join(output_dir, f"{stem}.json")
    payload = {"summary": summary, "runs": records}
    payload.update(extra or {})
    atomic_write(json_path, json.dumps(payload, indent=2) + "\n")
    atomic_write(md_path, table + "\n")
    return md_path, json_path


INTERVAL_NOTE = (
    "Cells: mean ± half-width of the 95% confidence interval of the mean "
    "over seeds (Student t, n - 1 degrees of freedom), cut at 0 and 100 "
    "(shown as '(to 100.00)'); bold: the best mean of a column."
)
# Accuracies in %, the values every report summarises.
ACCURACY_BOUNDS = (0.0, 100.0)
DIFFERENCE_NOTE = (
    "Paired differences in points (same seed = same training subset and "
    "initial weights): mean [95% confidence interval] over seeds; bold "
    "when the interval excludes zero."
)


# Runs of this process that resumed from a --backup_dir backup:
# {"run": run name, "epoch": epoch resumed at}.
RESUMED_RUNS = []


def resumed_note(resumed):
    """Markdown: which runs resumed from a backup, and what that means."""
    runs = ", ".join(f"{r['run']} (at epoch {r['epoch']})" for r in resumed)
    return (
        f"Resumed from a --backup_dir backup: {runs}. A resumed run sees "
        "its training images in another order after the restart than an "
        "uninterrupted one, so its accuracy may differ from a rerun's by "
        "a little; the other runs are unaffected."
    )


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
    comparisons=(),
):
    """Summarises the runs over seeds and reports them.

    Writes `<stem>.md` and `<stem>.json` (the accuracy table with `header`
    above it, then the paired differences of `comparisons`), plots
    `<stem>.png` with 95% intervals and prints the tables.

    Returns:
        The summary of `summarize(records, "method", column_key)`, with
        the paired differences under `"differences"`.
    """
    summary = summarize(records, "method", column_key, bounds=ACCURACY_BOUNDS)
    differences = paired_differences(
        records,
        comparisons,
        column_key,
        bounds=(-ACCURACY_BOUNDS[1], ACCURACY_BOUNDS[1]),
    )
    table = markdown_table(summary, row_title, column_title, labels=labels)
    text = header + "\n\n" + INTERVAL_NOTE + "\n\n" + table
    if differences:
        text += (
            "\n\n"
            + DIFFERENCE_NOTE
            + "\n\n"
            + differences_table(
                differences, summary["columns"], column_title, labels
            )
        )
    if RESUMED_RUNS:
        text += "\n\n" + resumed_note(RESUMED_RUNS)
    payload = dict(extra or {})
    payload["differences"] = differences
    payload["resumed_runs"] = list(RESUMED_RUNS)
    write_results(output_dir, stem, summary, records, text, extra=payload)
    plot(
        summary,
        os.path.join(output_dir, f"{stem}.png"),
        column_title,
        "test accuracy (%)",
        title,
        labels=labels,
        log_x=log_x,
        differences=differences,
    )
    print(text, flush=True)
    print(
        f"Wrote {stem}.md, {stem}.json and {stem}.png to {output_dir}",
        flush=True,
    )
    summary["differences"] = differences
    return summary


def _x_positions(cols):
    numeric = all(_is_number(c) for c in cols)
    xs = [float(c) for c in cols] if numeric else list(range(len(cols)))
    return numeric, xs


def _set_x_axis(ax, cols, xs, numeric, log_x, xlabel):
    if not numeric:
        ax.set_xticks(xs)
        ax.set_xticklabels(cols)
    elif log_x and min(xs) > 0:
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(xs)
        ax.set_xticklabels(cols)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)


def _error_bars(cells):
    """Lower and upper error-bar lengths of interval cells (0 for n = 1)."""
    lower = [0.0 if c["low"] is None else c["mean"] - c["low"] for c in cells]
    upper = [0.0 if c["high"] is None else c["high"] - c["mean"] for c in cells]
    return np.array([lower, upper])


def plot(
    summary,
    path,
    xlabel,
    ylabel,
    title,
    labels=None,
    log_x=False,
    differences=(),
):
    """Plots each row's mean with 95% interval error bars over the columns.

    With `differences` (from `paired_differences`), a second panel shows
    each paired difference with its interval and a line at zero. The file
    is written atomically.
    """
    # A bare Figure (matplotlib's object API): the global backend and
    # pyplot's state are left alone.
    from matplotlib.figure import Figure

    labels = labels or {}
    cols = summary["columns"]
    numeric, xs = _x_positions(cols)
    panels = 2 if differences else 1
    fig = Figure(figsize=(6 * panels, 4))
    axes = fig.subplots(1, panels, squeeze=False)
    ax = axes[0][0]
    for r in summary["rows"]:
        points = [
            (x, summary["cells"][r][c])
            for x, c in zip(xs, cols)
            if c in summary["cells"][r]
        ]
        x = np.array([p[0] for p in points])
        cells = [p[1] for p in points]
        ax.errorbar(
            x,
            [c["mean"] for c in cells],
            yerr=_error_bars(cells),
            marker="o",
            capsize=3,
            label=labels.get(r, r),
        )
    _set_x_axis(ax, cols, xs, numeric, log_x, xlabel)
    ax.set_ylabel(ylabel + ", 95% interval")
    ax.set_title(title)
    ax.legend(fontsize=8)
    if differences:
        ax = axes[0][1]
        for item in differences:
            points = [
                (x, item["columns"][c])
                for x, c in zip(xs, cols)
                if c in item["columns"]
            ]
            if not points:
                continue
            x = np.array([p[0] for p in points])
            cells = [p[1] for p in points]
            name = (
                f"{labels.get(item['method'], item['method'])} − "
                f"{labels.get(item['baseline'], item['baseline'])}"
            )
            ax.errorbar(
                x,
                [c["mean"] for c in cells],
                yerr=_error_bars(cells),
                marker="o",
                capsize=3,
                label=name,
            )
        ax.axhline(0.0, color="black", linewidth=0.8)
        _set_x_axis(ax, cols, xs, numeric, log_x, xlabel)
        ax.set_ylabel("paired difference (points), 95% interval")
        ax.set_title("Paired differences over seeds")
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}"
    fig.savefig(tmp, dpi=120, format="png")
    os.replace(tmp, path)
    return path


def format_duration(seconds):
    """'1 min 05 s' style text of a duration."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60:02d} s"


class Progress:
    """Prints one line per finished run, with an estimate of the time left.

    The estimate is the mean duration of the finished runs times the number
    of runs left.

    Args:
        total: Number of runs.
    """

    def __init__(self, total):
        self.total = int(total)
        self.done = 0
        self.start = time.time()

    def run_done(self, text):
        """Counts one finished run and prints `text` with the time left."""
        self.done += 1
        elapsed = time.time() - self.start
        left = elapsed / self.done * max(self.total - self.done, 0)
        print(
            f"[{self.done}/{self.total}] {text}; about "
            f"{format_duration(left)} left",
            flush=True,
        )


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True
