r"""Which whole-Jacobian term trains the best student per unit of step time.

Few-data distillation on scikit-learn's digits (offline): a VGG-9 (width
32) teacher trained on every training image; VGG-4 (width 16) students,
with or without BatchNormalization, trained from `k` images per class by
activation matching (KD, temperature 4) plus one Jacobian term, Adam
1e-3, 400 steps of batch 10. Accuracy is measured on a validation split
(20% of each class of the training images, never trained on: the
choices are made there) and on the test split (reported, not chosen on).

`--dataset=wine` or `--dataset=breast_cancer` runs the same protocol on
scikit-learn's bundled tabular sets (offline; `benchmarks/tabular.py`):
features standardised with the training pool's statistics, a ReLU MLP
teacher (2x64) trained on the training pool, ReLU MLP students (2x16,
with or without BatchNormalization before each ReLU).

Each run appends one JSON line to `--output`; finished runs are skipped
when the command is run again, so a killed study resumes.

Configurations are named `NAME` or `NAME@WEIGHT` (Jacobian weight,
default 1), NAME one of `CONFIGS` below, e.g.:

  python benchmarks/whole_jacobian_study.py --configs=act,top1,fd4_rel \
    --samples_per_class=1,5 --seeds=0,1,2,3,4 --batch_norm=false,true \
    --output=/tmp/whole/runs.jsonl

`python benchmarks/whole_jacobian_study.py --summarize=/tmp/whole/runs.jsonl`
prints the paired gains over `act` (mean and 95% interval over seeds) and
the median step-time ratio to `act` of the same process; `--baseline=top1`
pairs with another config instead.
"""

import json
import os
import pathlib
import sys
import time

if __name__ == "__main__":
    sys.path.insert(
        0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

STEPS = 400
BATCH = 10
# Hidden widths of the tabular sets' MLPs.
TABULAR_TEACHER = (64, 64)
TABULAR_STUDENT = (16, 16)


def _configs():
    configs = {
        "act": None,
        "top1": {},
        "exact_cos": dict(target="all", estimator="exact", normalize=True),
        "exact_rel": dict(target="all", estimator="exact", normalize="teacher"),
        "exact_raw": dict(target="all", estimator="exact", normalize=False),
        "default_all": dict(target="all"),
    }
    short = {
        "fd": "forward_difference",
        "cd": "finite_difference",
        "jvp": "jvp",
        "vjp": "vjp",
    }
    for prefix, estimator in short.items():
        for r in (1, 2, 4, 8, 10, 16):
            for suffix, normalize in (("rel", "teacher"), ("raw", False)):
                configs[f"{prefix}{r}_{suffix}"] = dict(
                    target="all",
                    estimator=estimator,
                    num_projections=r,
                    normalize=normalize,
                )
    return configs


CONFIGS = _configs()

flags.DEFINE_list("configs", ["act", "top1", "exact_rel"], "Configurations.")
flags.DEFINE_list("samples_per_class", ["1", "5"], "Images per class.")
flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Seeds.")
flags.DEFINE_list("batch_norm", ["false"], "Student BatchNorm: false,true.")
flags.DEFINE_string(
    "dataset",
    "digits",
    "A load_dataset name (VGG networks) or a scikit-learn tabular set, "
    "'wine' or 'breast_cancer' (MLPs, benchmarks/tabular.py).",
)
flags.DEFINE_string("output", "/tmp/whole/runs.jsonl", "JSON lines file.")
flags.DEFINE_string("summarize", None, "Print the summary of this file.")
flags.DEFINE_string(
    "baseline", "act", "With --summarize: the config gains are paired with."
)
flags.DEFINE_string("plot", None, "With --summarize: write the Pareto plot.")
flags.DEFINE_integer("steps", STEPS, "Training steps per student.")
flags.DEFINE_integer("threads", 0, "TensorFlow threads per pool (0: all).")
flags.DEFINE_bool(
    "recompute_batch_norm",
    False,
    "After training, set a BatchNorm student's moving statistics to the "
    "mean of 10 training batches' statistics (write to another --output: "
    "the runs' keys do not record it).",
)
FLAGS = flags.FLAGS


def _load_data(name):
    from benchmarks import tabular

    if name in tabular.LOADERS:
        return tabular.load_tabular(name, validation_fraction=0.2)
    from keras_jacobian.experiments.data import datasets

    return datasets.load_dataset(name, validation_fraction=0.2)


def _tabular(data):
    from benchmarks import tabular

    return isinstance(data, tabular.TabularDataset)


def _student(data, batch_norm):
    from keras_jacobian.experiments import models

    if _tabular(data):
        from benchmarks import tabular

        return tabular.mlp(
            data.input_shape,
            data.num_classes,
            TABULAR_STUDENT,
            batch_norm=batch_norm,
            name="student",
        )
    return models.vgg4(
        data.input_shape, data.num_classes, width=16, batch_norm=batch_norm
    )


def _teacher(data, path):
    import keras

    from keras_jacobian.experiments import models

    if path.exists():
        return keras.saving.load_model(path)
    keras.utils.set_random_seed(1234)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if _tabular(data):
        from benchmarks import tabular

        teacher = tabular.mlp(
            data.input_shape, data.num_classes, TABULAR_TEACHER, name="teacher"
        )
        teacher.compile(keras.optimizers.Adam(3e-3), loss)
        x, y = data.split("train")
        x = ((x - data.mean) / data.std).astype("float32")
        teacher.fit(x, y, batch_size=32, epochs=100, verbose=0)
    else:
        teacher = models.vgg9(data.input_shape, data.num_classes, width=32)
        teacher.compile(keras.optimizers.Adam(3e-3), loss, metrics=["accuracy"])
        teacher.fit(data.pipeline("train", 64), epochs=20, verbose=0)
    teacher.save(path)
    return teacher


def _accuracy(model, x, y):
    logits = model.predict(x, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y) * 100.0)


def _run(data, teacher, config, k, seed, batch_norm):
    import keras
    import tensorflow as tf

    import keras_jacobian as kj
    from keras_jacobian.experiments import models
    from keras_jacobian.experiments.data import sampling

    name, _, weight = config.partition("@")
    weight = float(weight or 1.0)
    keras.utils.set_random_seed(seed)
    x, y = data.split("train")
    idx = sampling.stratified_subsample(y, k, seed)
    norm = lambda a: (a - data.mean) / data.std  # noqa: E731
    xs, ys = norm(x[idx]).astype("float32"), y[idx]
    student = _student(data, batch_norm)
    terms = [kj.LogitsDistillation(temperature=4.0, loss="kd")]
    weights = [1.0]
    if CONFIGS[name] is not None:
        terms.append(kj.JacobianMatching(**CONFIGS[name]))
        weights.append(weight)
    distiller = kj.Distiller(
        teacher,
        student,
        terms,
        distillation_loss_weights=weights,
        supervised_loss_weight=0.0,
        seed=seed,
    )
    distiller.compile(keras.optimizers.Adam(1e-3))
    ds = (
        tf.data.Dataset.from_tensor_slices((xs, ys))
        .repeat()
        .shuffle(len(ys), seed=seed)
        .batch(BATCH, drop_remainder=True)
    )

    class Times(keras.callbacks.Callback):
        def __init__(self):
            self.times = []

        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    times = Times()
    distiller.fit(
        ds,
        steps_per_epoch=FLAGS.steps,
        epochs=1,
        verbose=0,
        callbacks=[times],
    )
    if FLAGS.recompute_batch_norm:
        models.recompute_batch_norm_statistics(student, ds, steps=10)
    xv, yv = data.split("val")
    xt, yt = data.split("test")
    return {
        "val": _accuracy(student, norm(xv).astype("float32"), yv),
        "test": _accuracy(student, norm(xt).astype("float32"), yt),
        "step_ms": float(np.median(times.times[10:]) * 1e3),
    }


def _key(r):
    return (r["config"], r["k"], r["seed"], r["batch_norm"])


def _load(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def paired(runs, config, k, batch_norm, split):
    """Seed-paired gains over `act` and step-time ratios of one config."""
    by = {_key(r): r for r in runs}
    gains, ratios = [], []
    for seed in sorted({r["seed"] for r in runs}):
        r = by.get((config, k, seed, batch_norm))
        a = by.get(("act", k, seed, batch_norm))
        if r is not None and a is not None:
            gains.append(r[split] - a[split])
            ratios.append(r["step_ms"] / a["step_ms"])
    return np.array(gains), np.array(ratios)


def plot(path, output, split="val"):
    """Pareto plot: paired gain (95% interval) against step-time ratio."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from scipy import stats

    runs = _load(pathlib.Path(path))
    groups = sorted({(r["k"], r["batch_norm"]) for r in runs})
    configs = sorted({r["config"] for r in runs} - {"act"})
    fig = Figure(figsize=(5 * len(groups), 4.2))
    for i, (k, bn) in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), i + 1)
        for c in configs:
            gains, ratios = paired(runs, c, k, bn, split)
            if len(gains) < 2:
                continue
            half = stats.t.ppf(0.975, len(gains) - 1) * gains.std(ddof=1)
            half /= np.sqrt(len(gains))
            x = float(np.median(ratios))
            ax.errorbar(x, gains.mean(), yerr=half, fmt="o", capsize=3)
            ax.annotate(
                c,
                (x, gains.mean()),
                fontsize=7,
                xytext=(4, 2),
                textcoords="offset points",
            )
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xlabel("step time / activation-only step")
        ax.set_ylabel(f"{split} accuracy gain over activations (points)")
        norm = "BatchNorm" if bn else "plain"
        ax.set_title(f"{k} image(s) per class, {norm} student")
    fig.tight_layout()
    fig.savefig(output, dpi=110)


def summarize(path, split="val", baseline="act"):
    """Markdown tables of accuracy and seed-paired gain over `baseline`."""
    runs = _load(pathlib.Path(path))
    by = {_key(r): r for r in runs}
    groups = sorted({(r["k"], r["batch_norm"]) for r in runs})
    lines = []
    for k, bn in groups:
        lines.append(f"\n## k={k} batch_norm={bn} ({split})")
        lines.append(
            f"| config | acc | gain vs {baseline} [95%] | n | step ratio |"
        )
        lines.append("|---|---|---|---|---|")
        configs = sorted({r["config"] for r in runs})
        for c in configs:
            pairs = []
            ratios = []
            accs = []
            for s in sorted({r["seed"] for r in runs}):
                r = by.get((c, k, s, bn))
                a = by.get((baseline, k, s, bn))
                if r is None:
                    continue
                accs.append(r[split])
                if a is not None:
                    pairs.append(r[split] - a[split])
                    ratios.append(r["step_ms"] / a["step_ms"])
            if not accs:
                continue
            d = np.array(pairs)
            if len(d) > 1:
                from scipy import stats

                half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1)
                half /= np.sqrt(len(d))
                gain = f"{d.mean():+.1f} [{d.mean() - half:+.1f}, "
                gain += f"{d.mean() + half:+.1f}]"
            else:
                gain = "-"
            ratio = f"{np.median(ratios):.2f}" if ratios else "-"
            lines.append(
                f"| {c} | {np.mean(accs):.1f} | {gain} | {len(accs)} | "
                f"{ratio} |"
            )
    return "\n".join(lines)


def main(argv):
    del argv
    if FLAGS.summarize:
        for split in ("val", "test"):
            print(summarize(FLAGS.summarize, split, FLAGS.baseline))
        if FLAGS.plot:
            plot(FLAGS.summarize, FLAGS.plot)
        return
    import tensorflow as tf

    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
    out = pathlib.Path(FLAGS.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {_key(r) for r in _load(out)}
    data = _load_data(FLAGS.dataset)
    teacher = _teacher(data, out.parent / f"teacher_{FLAGS.dataset}.keras")
    xv, yv = data.split("val")
    print(
        "teacher val",
        _accuracy(teacher, ((xv - data.mean) / data.std).astype("float32"), yv),
        flush=True,
    )
    for config in FLAGS.configs:
        name = config.partition("@")[0]
        if name not in CONFIGS:
            raise app.UsageError(f"Unknown config {name!r}: {list(CONFIGS)}")
    norms = [bn.lower() in ("true", "1", "yes") for bn in FLAGS.batch_norm]
    for k in map(int, FLAGS.samples_per_class):
        for seed in map(int, FLAGS.seeds):
            for batch_norm in norms:
                for config in FLAGS.configs:
                    key = (config, k, seed, batch_norm)
                    if key in done:
                        continue
                    result = _run(data, teacher, config, k, seed, batch_norm)
                    result.update(
                        config=config,
                        k=k,
                        seed=seed,
                        batch_norm=batch_norm,
                        dataset=FLAGS.dataset,
                    )
                    with out.open("a") as f:
                        f.write(json.dumps(result) + "\n")
                    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(app.run(main))
