r"""Few-data distillation with Jacobian matching (paper, section 5, table 1).

A teacher is trained on the whole training set (or loaded from
`--teacher_path`, default `<output_dir>/teacher.keras`, and reused by later
runs). A student is then trained from `k` examples per class only, for each
`k` in `--samples_per_class` and each seed in `--seeds` (the seed draws the
subset and initialises the student), with each method of `--methods`:

  ce          cross-entropy on the labels only (no teacher)
  act_ce      activation matching (KD, `--activation_loss`) + cross-entropy
  act_jac_ce  activations + Jacobian matching + cross-entropy
  act         activation matching only (labels unused)
  act_jac     activations + Jacobians (labels unused)
  act_whole   activations + the whole Jacobian, every class
              (`JacobianMatching(target="all")`, weight
              `--whole_jacobian_weight`; not in the default run)

(any combination of `act`, `jac`, `whole` and `ce` joined by `_` is
accepted, e.g. `jac_ce`). The loss of a method is `supervised_loss_weight *
CE + activation_weight * KD + jacobian_weight * JacobianMatching` (each
weight independent of the others), the terms a method leaves out having
weight 0.

Writes `results.md`, `results.json` (accuracy: mean over seeds with its 95%
interval, the paper's comparisons as paired differences, every run) and
`results.png` to `--output_dir` (default `/tmp/keras_jacobian/distill`),
and prints one line per finished run, then the tables.

Default command: the regime where the paper's claim is tested, few images
per class (offline; digits, 8x8 images, 10 classes, 1,198 training and 599
test images; a VGG-9 width 32 teacher trained on every training image with
random crops, Adam 3e-3, cosine schedule, 20 epochs; a VGG-4 width 16
student without BatchNormalization; no augmentation of the student's
images; KD at temperature 4 with weight 1, Jacobian matching of the
teacher's top-1 class, normalised rows, weight 1; Adam 1e-3, constant,
20 epochs of 20 steps, batch 32; 1 and 5 images per class x 5 seeds x 5
methods = 50 students):

  python examples/distill.py

Tables of its results, of the paper's setting and of how the defaults
were chosen: docs/examples.md, or --helpfull.

Results of the default run
--------------------------

It took 5 min 15 s of wall-clock time on 2 quiet CPU cores (load 1; the
teacher 28 s), and 21 min 9 s on cores shared with other jobs (load 11 to
13.5); two runs printed the same table (test accuracy %, mean ± half-width
of the 95% interval over seeds 0-4; teacher 97.83%):

  | method \ samples/class       | 1            | 5            |
  |------------------------------|--------------|--------------|
  | cross-entropy only           | 55.93 ± 4.60 | 82.57 ± 4.06 |
  | activations + CE             | 59.53 ± 3.87 | 84.47 ± 3.95 |
  | activations + Jacobians + CE | 66.41 ± 3.83 | 87.28 ± 2.53 |
  | activations only             | 58.96 ± 5.23 | 84.64 ± 3.83 |
  | activations + Jacobians only | 67.01 ± 4.38 | 88.28 ± 3.20 |

  paired differences (points, mean [95% interval]):

  | difference         | 1                     | 5                    |
  |--------------------|-----------------------|----------------------|
  | act_jac_ce−act_ce  | +6.88 [+4.90, +8.85]  | +2.80 [+0.46, +5.15] |
  | act_jac−act        | +8.05 [+3.49, +12.61] | +3.64 [+2.25, +5.03] |
  | act_ce−ce          | +3.61 [-1.09, +8.31]  | +1.90 [-0.74, +4.54] |

As in the paper, Jacobian matching adds to activation matching with few
images, with and without cross-entropy, and adds less with more images.

How the defaults were chosen, on validation data only: with
`--evaluate_on=validation`, 20% of each class of the training images is
held out (`--validation_fraction`); the teacher (saved apart, as
`teacher_val.keras`) and the students train on the rest, and accuracy is
measured on the held-out images; the test set is not read. Starting
from the recipe of a first trial through the library's API (no
augmentation, Adam 1e-3, 400 steps, default term settings), one setting
at a time was varied at 1 image per class, seeds 0-2, with

  python examples/distill.py --evaluate_on=validation \
    --samples_per_class=1 --seeds=0,1,2 --methods=act_ce,act_jac_ce \
    --teacher_path=/tmp/grid/teacher_val.keras --output_dir=/tmp/grid/NAME \
    [--student_batch_norm | --jacobian_weight=0.3 | --jacobian_weight=3 |
     --activation_loss=mse]

Validation accuracy (%, mean over seeds 0-2; teacher 98.33%):

  | setting               | act_ce | act_jac_ce | paired difference       |
  |-----------------------|--------|------------|-------------------------|
  | defaults              | 64.57  | 72.52      | +7.95 [-0.56, +16.46]   |
  | --student_batch_norm  | 56.35  | 53.42      | -2.93 [-23.00, +17.15]  |
  |  + --norecompute_...  | 56.35  | 26.22      | -30.13 [-56.28, -3.98]  |
  | --jacobian_weight=0.3 | 64.57  | 70.15      | +5.58 [+1.64, +9.51]    |
  | --jacobian_weight=3   | 64.57  | 71.55      | +6.97 [+0.21, +13.74]   |
  | --activation_loss=mse | 62.06  | 64.02      | +1.95 [-5.57, +9.47]    |

The activation loss was chosen by the baseline's accuracy (KL: 64.57
against 62.06 with MSE), BatchNormalization by both methods' accuracy
(without it the baseline gains 7 to 8 points and Jacobians add +7.95
instead of -2.93; the BatchNorm rows were run with a later version of the
library, with which the defaults row gives 63.74, 71.69 and +7.95), and
the Jacobian weight by the accuracy of activations + Jacobians + CE (72.52
at 1, against 70.15 at 0.3 and 71.55 at 3). The learning rate, the
number of steps and the temperature were not searched.

The BatchNorm rows above predate 0.3.0, whose Jacobian terms hold a
training-mode student's batch statistics constant: with them a BatchNorm
student gains +7.28 [+4.52, +10.04] (seeds 0-4) and +5.27 [+2.99, +7.55]
without recomputed statistics (docs/reproducing.md). A BatchNorm
student's moving statistics are set, after training, to the mean of its
training batches' statistics (`--recompute_batch_norm`, on by default).

Where Jacobians help and where they do not (test accuracy, 5 seeds, paired
difference of activations + Jacobians + CE minus activations + CE, points;
commands and tables in docs/reproducing.md):

  | images/class | no augmentation       | --augment (random crops) |
  |--------------|-----------------------|--------------------------|
  | 1            | +6.88 [+4.90, +8.85]  | +4.31 [+1.58, +7.04]     |
  | 5            | +2.80 [+0.46, +5.15]  | +1.00 [-0.20, +2.20]     |
  | 20           | +0.73 [+0.14, +1.33]  |                          |
  | 50           | -0.03 [-0.57, +0.50]  |                          |

Augmentation shows the student the teacher on shifted copies of each image,
which is what Jacobian matching does too (distillation under input noise):
it raises the baseline and shrinks the Jacobians' gain. More images shrink
it too, to nothing measurable at 50 per class.

The paper's CIFAR-100 setting (VGG-9 teacher, VGG-4 student; needs
`tfds build cifar100 --data_dir=DIR` done on a machine with network access
and copied here; hours on a GPU):

  python examples/distill.py --dataset=cifar100 --data_dir=DIR \
    --teacher_arch=vgg9 --teacher_width=64 --student_arch=vgg4 \
    --student_width=64 --samples_per_class=10,50,500 --seeds=0,1,2,3,4 \
    --augment --flip --teacher_epochs=200 --student_epochs=100 \
    --min_steps_per_epoch=100 --batch_size=128 --learning_rate=1e-3 \
    --temperature=4 --activation_weight=1 --jacobian_weight=1 \
    --output_dir=/tmp/distill_cifar100

The paper reports (test accuracy %, teacher 64.78%):

  | samples / class              | 10    | 50    | 500   |
  |------------------------------|-------|-------|-------|
  | cross-entropy only           | 20.03 | 37.6  | 54.28 |
  | activations + CE             | 33.92 | 46.47 | 56.65 |
  | activations + Jacobians + CE | 39.55 | 49.49 | 54.57 |
  | activations only             | 33.6  | 45.73 | 56.59 |
  | activations + Jacobians only | 38.16 | 47.79 | 51.33 |
"""

import math
import os
import sys
import time

import common_flags
import experiment
import keras
import numpy as np
from absl import app
from absl import flags
from absl import logging

import keras_jacobian
from keras_jacobian import saving
from keras_jacobian.experiments import data as data_lib
from keras_jacobian.experiments import models

FLAGS = flags.FLAGS

flags.DEFINE_bool(
    "teacher_augment",
    True,
    "Random crops of the teacher's training images (the teacher is trained "
    "on every training image, with Adam 3e-3 and a cosine schedule; "
    "--augment only concerns the students).",
)
flags.DEFINE_bool(
    "student_batch_norm",
    None,
    "BatchNormalization in the student (default: off with few images).",
)
flags.DEFINE_bool(
    "recompute_batch_norm",
    True,
    "After training, set the student's BatchNorm moving statistics to the "
    "mean of its training batches' statistics (one pass). The moving "
    "averages lag behind the last ~100 steps (+7.3 against +5.3 points "
    "of Jacobian gain at 1 image per class; docs/reproducing.md).",
)
flags.DEFINE_enum(
    "evaluate_on",
    "test",
    ["test", "validation"],
    "Where the students are evaluated. 'validation' holds out "
    "--validation_fraction of each class of the training images (teacher "
    "and students never train on it) and reports accuracy on it: choose "
    "settings there, never on the test set.",
)

PAPER_METHODS = ("ce", "act_ce", "act_jac_ce", "act", "act_jac")
# The paper's comparisons, (method, baseline): Jacobians on top of
# activation matching with and without cross-entropy, and distillation
# against cross-entropy alone.
COMPARISONS = (
    ("act_jac_ce", "act_ce"),
    ("act_jac", "act"),
    ("act_ce", "ce"),
    ("act_whole", "act"),
    ("act_whole", "act_jac"),
    ("act_whole_ce", "act_ce"),
)
DEFAULT_SAMPLES_PER_CLASS = ("1", "5")
DEFAULT_AUGMENT = False
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_LR_SCHEDULE = "constant"
TEACHER_LEARNING_RATE = 3e-3
DEFAULT_TEACHER_ARCH = "vgg9"
DEFAULT_OUTPUT_DIR = "/tmp/keras_jacobian/distill"
PARTS = ("act", "jac", "whole", "ce")
LABELS = {
    "ce": "cross-entropy only",
    "act_ce": "activations + CE",
    "act_jac_ce": "activations + Jacobians + CE",
    "act": "activations only",
    "act_jac": "activations + Jacobians only",
    "jac_ce": "Jacobians + CE",
    "jac": "Jacobians only",
    "act_whole": "activations + whole Jacobian",
    "act_whole_ce": "activations + whole Jacobian + CE",
}


def parse_method(name):
    """Parses a method name into its parts, e.g. "act_ce" -> {act, ce}.

    Args:
        name: parts among "act", "jac", "whole" and "ce" joined by "_".

    Returns:
        A frozenset of parts.

    Raises:
        app.UsageError: for unknown or repeated parts.
    """
    parts = str(name).split("_")
    if (
        not name
        or any(p not in PARTS for p in parts)
        or len(set(parts)) != len(parts)
    ):
        raise app.UsageError(
            f"Expected --methods entries made of {list(PARTS)} joined by "
            f"'_' (e.g. {','.join(PAPER_METHODS)}). Received: {name!r}."
            + common_flags.did_you_mean(name, PAPER_METHODS + ("act_whole",))
        )
    return frozenset(parts)


def canonical_method(parts):
    """The method name of a set of parts, in the order act, jac, whole, ce."""
    return "_".join(p for p in PARTS if p in parts)


def method_weights(parts):
    """(supervised_loss_weight, activation_weight, jacobian_weight,
    whole_jacobian_weight) of a method."""
    return (
        FLAGS.supervised_loss_weight if "ce" in parts else 0.0,
        FLAGS.activation_weight if "act" in parts else 0.0,
        FLAGS.jacobian_weight if "jac" in parts else 0.0,
        FLAGS.whole_jacobian_weight if "whole" in parts else 0.0,
    )


def check_flags():
    """Validates the flags before any data is read; returns parsed values."""
    methods = [
        canonical_method(parse_method(m))
        for m in experiment.flag_or(FLAGS.methods, PAPER_METHODS)
    ]
    if not methods:
        experiment.check_choices([], PAPER_METHODS, "methods")
    experiment.check_no_repeats(methods, "methods")
    spcs = experiment.parse_samples_per_class(
        experiment.flag_or(FLAGS.samples_per_class, DEFAULT_SAMPLES_PER_CLASS)
    )
    seeds = experiment.parse_ints(FLAGS.seeds, "seeds", minimum=0)
    teacher_arch = FLAGS.teacher_arch or DEFAULT_TEACHER_ARCH
    if teacher_arch not in models.MODELS:
        raise app.UsageError(
            f"Expected --teacher_arch in {sorted(models.MODELS)}. Received: "
            f"{teacher_arch!r}."
        )
    for name in (
        "supervised_loss_weight",
        "activation_weight",
        "jacobian_weight",
        "whole_jacobian_weight",
    ):
        if getattr(FLAGS, name) < 0:
            raise app.UsageError(f"Expected --{name} >= 0.")
    if FLAGS.jacobian_target == "top_k" and not FLAGS.jacobian_k:
        raise app.UsageError(
            "Expected --jacobian_k with --jacobian_target=top_k, e.g. "
            "--jacobian_k=3."
        )
    return methods, spcs, seeds, teacher_arch


def augment():
    """Whether the students' training images are augmented."""
    return common_flags.value("augment", DEFAULT_AUGMENT)


def learning_rate():
    """The students' Adam learning rate."""
    return common_flags.value("learning_rate", DEFAULT_LEARNING_RATE)


def load_data(validation_fraction=0.0):
    """Loads the full training set, with errors that say what to do."""
    return experiment.load_data(validation_fraction)


def pipeline(data, images, labels, training, seed=0, augment_images=None):
    """A pipeline normalised with the full training set's statistics."""
    if augment_images is None:
        augment_images = augment()
    return data_lib.make_pipeline(
        images,
        labels,
        FLAGS.batch_size
        if training
        else experiment.eval_batch_size(FLAGS.batch_size),
        training=training,
        augment=augment_images and training,
        flip=FLAGS.flip,
        crop_padding=max(1, data.input_shape[0] // 8),
        mean=data.mean,
        std=data.std,
        seed=seed,
    )


DEFAULT_STUDENT_BATCH_NORM = False


def build_model(
    arch, width, data, name, dropout=None, batch_norm=True, input_shape=None
):
    kwargs = {"width": width, "name": name, "batch_norm": batch_norm}
    if dropout is not None:
        kwargs["dropout"] = dropout
    if arch == "resnet":
        kwargs.update(depth=10)
    return models.MODELS[arch](
        input_shape or data.input_shape, data.num_classes, **kwargs
    )


def fit(
    model,
    train_images,
    train_labels,
    data,
    epochs,
    run_name,
    seed,
    *,
    teacher=False,
):
    """Trains a compiled model (student, or the teacher) on a subset."""
    ds = experiment.repeat_for_fit(
        pipeline(
            data,
            train_images,
            train_labels,
            True,
            seed,
            augment_images=FLAGS.teacher_augment if teacher else None,
        )
    )
    steps = experiment.steps_per_epoch(
        len(train_labels), FLAGS.batch_size, FLAGS.min_steps_per_epoch
    )
    experiment.train(
        model,
        ds,
        epochs=epochs,
        steps_per_epoch=steps,
        run_name=run_name,
        learning_rate=TEACHER_LEARNING_RATE if teacher else learning_rate(),
        schedule=(
            "cosine"
            if teacher
            else common_flags.value("lr_schedule", DEFAULT_LR_SCHEDULE)
        ),
        tensorboard_dir=FLAGS.tensorboard_dir,
        backup_dir=FLAGS.backup_dir,
        verbose=FLAGS.verbose,
    )
    if not teacher and FLAGS.recompute_batch_norm:
        models.recompute_batch_norm_statistics(
            model.student,
            pipeline(data, train_images, train_labels, True, seed),
            steps=math.ceil(len(train_labels) / FLAGS.batch_size),
        )


def teacher_path(output_dir, data):
    """The teacher file (its own name when validation images are held out)."""
    name = "teacher.keras" if data.val_labels is None else "teacher_val.keras"
    return FLAGS.teacher_path or os.path.join(output_dir, name)


def get_teacher(data, strategy, arch, output_dir):
    """Loads the teacher from its .keras file, or trains and saves it.

    Reads no evaluation split: callers measure the teacher on theirs.
    """
    path = teacher_path(output_dir, data)
    if os.path.exists(path):
        with strategy.scope():
            teacher = keras.saving.load_model(path, compile=False)
        got = (tuple(teacher.input_shape[1:]), teacher.output_shape[-1])
        want = (data.input_shape, data.num_classes)
        if got != want:
            raise app.UsageError(
                f"The teacher in {path} takes inputs {got[0]} with "
                f"{got[1]} classes; the data set has {want[0]} with "
                f"{want[1]}. Delete the file or pass another --teacher_path."
            )
        logging.info("Loaded the teacher from %s.", path)
    else:
        keras.utils.set_random_seed(FLAGS.seed)
        with strategy.scope():
            teacher = build_model(arch, FLAGS.teacher_width, data, "teacher")
            teacher.compile(
                optimizer=keras.optimizers.Adam(TEACHER_LEARNING_RATE),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True
                ),
            )
        fit(
            teacher,
            data.train_images,
            data.train_labels,
            data,
            FLAGS.teacher_epochs,
            "teacher",
            FLAGS.seed,
            teacher=True,
        )
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # Written to a temporary file and renamed: a kill during the save
        # never leaves a truncated teacher for the next run to load.
        saving.replace_atomically(path, teacher.save)
        logging.info("Saved the teacher to %s.", path)
    return teacher


def evaluation_split(data):
    """(images, labels, name) of the split the students are evaluated on."""
    if FLAGS.evaluate_on == "validation":
        return data.val_images, data.val_labels, "validation"
    return data.test_images, data.test_labels, "test"


def make_terms():
    """The activation and Jacobian terms shared by every method."""
    return [
        keras_jacobian.LogitsDistillation(
            temperature=FLAGS.temperature,
            loss=common_flags.ACTIVATION_LOSSES[FLAGS.activation_loss],
        ),
        keras_jacobian.JacobianMatching(
            target=FLAGS.jacobian_target,
            k=FLAGS.jacobian_k if FLAGS.jacobian_target == "top_k" else None,
            normalize=None if FLAGS.jacobian_normalize else False,
        ),
        # The whole Jacobian, every class, with the library's defaults.
        keras_jacobian.JacobianMatching(target="all", name="whole_jacobian"),
    ]


def build_student(data, name="student"):
    """The student network of `--student_arch`."""
    return build_model(
        FLAGS.student_arch,
        FLAGS.student_width,
        data,
        name,
        batch_norm=common_flags.value(
            "student_batch_norm", DEFAULT_STUDENT_BATCH_NORM
        ),
    )


def build_distiller(teacher, data, strategy):
    """One Distiller for every method: methods only change its weights."""
    with strategy.scope():
        student = build_student(data, "student")
        terms = make_terms()
        distiller = keras_jacobian.Distiller(
            teacher,
            student,
            terms,
            distillation_loss_weights=[1.0] * len(terms),
            supervised_loss_weight=1.0,
            seed=FLAGS.seed,
        )
        distiller.compile(
            optimizer=keras.optimizers.Adam(learning_rate()),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        # Built before fit, as keras.callbacks.BackupAndRestore requires.
        distiller(np.zeros((1,) + data.input_shape, "float32"))
    return distiller


def initial_student_weights(data, seed):
    keras.utils.set_random_seed(seed)
    model = build_student(data, "init")
    return model.get_weights()


def subset(data, spc, seed):
    """The training images and labels of `spc` examples per class."""
    if spc is None:
        return data.train_images, data.train_labels
    idx = experiment.subset_indices(data, spc, seed)
    return data.train_images[idx], data.train_labels[idx]


def run(output_dir):
    """Runs the experiment; returns the summary dict."""
    methods, spcs, seeds, teacher_arch = check_flags()
    if not 0 < FLAGS.validation_fraction < 1:
        raise app.UsageError(
            "Expected --validation_fraction in (0, 1), e.g. 0.2. Received: "
            f"{FLAGS.validation_fraction}."
        )
    start = time.time()
    strategy = experiment.get_strategy(FLAGS.strategy)
    data = load_data(
        FLAGS.validation_fraction if FLAGS.evaluate_on == "validation" else 0
    )
    subsets = {
        (spc, seed): subset(data, spc, seed) for spc in spcs for seed in seeds
    }
    teacher = get_teacher(data, strategy, teacher_arch, output_dir)
    eval_images, eval_labels, split = evaluation_split(data)
    eval_ds = pipeline(data, eval_images, eval_labels, False)
    teacher_acc = experiment.accuracy(teacher, eval_ds)
    print(
        f"Teacher {split} accuracy: {teacher_acc:.2f}% "
        f"({time.time() - start:.0f} s)",
        flush=True,
    )
    distiller = build_distiller(teacher, data, strategy)
    inits = {seed: initial_student_weights(data, seed) for seed in seeds}
    records = []
    progress = experiment.Progress(len(spcs) * len(seeds) * len(methods))
    for spc in spcs:
        for seed in seeds:
            images, labels = subsets[spc, seed]
            for method in methods:
                weights = method_weights(parse_method(method))
                ce_w, act_w, jac_w, whole_w = weights
                distiller.student.set_weights(inits[seed])
                experiment.reset_optimizer(distiller.optimizer)
                distiller.supervised_loss_weight = ce_w
                distiller.term_weights[0].assign(act_w)
                distiller.term_weights[1].assign(jac_w)
                distiller.term_weights[2].assign(whole_w)
                run_name = f"{method}_spc{experiment.spc_label(spc)}_s{seed}"
                t0 = time.time()
                keras.utils.set_random_seed(seed)
                fit(
                    distiller,
                    images,
                    labels,
                    data,
                    FLAGS.student_epochs,
                    run_name,
                    seed,
                )
                acc = experiment.accuracy(distiller.student, eval_ds)
                seconds = time.time() - t0
                records.append(
                    {
                        "method": method,
                        "samples_per_class": experiment.spc_label(spc),
                        "seed": seed,
                        "accuracy": acc,
                        "seconds": seconds,
                    }
                )
                progress.run_done(
                    f"{LABELS.get(method, method)}, "
                    f"{experiment.spc_label(spc)}/class, seed {seed}: "
                    f"{split} accuracy {acc:.2f}% ({seconds:.1f} s)"
                )
    elapsed = time.time() - start
    header = (
        f"{split.capitalize()} accuracy (%) of the {FLAGS.student_arch} "
        f"student on {data.name} ({experiment.seeds_label(seeds)}; "
        f"augmentation {'on' if augment() else 'off'}); teacher "
        f"({teacher_arch}) {teacher_acc:.2f}%; {elapsed:.0f} s."
    )
    config = experiment.flag_values(common_flags, sys.modules[__name__])
    summary = experiment.report(
        output_dir,
        "results",
        records,
        header,
        column_key="samples_per_class",
        row_title="method",
        column_title="samples/class",
        extra={
            "teacher_accuracy": teacher_acc,
            "evaluated_on": split,
            "seconds": elapsed,
            "flags": config,
        },
        title=f"Distillation on {data.name}",
        labels=LABELS,
        log_x=True,
        comparisons=COMPARISONS,
    )
    summary["teacher_accuracy"] = teacher_acc
    summary["seconds"] = elapsed
    return summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    run(FLAGS.output_dir or DEFAULT_OUTPUT_DIR)


HELP_FLAGS = (
    "samples_per_class",
    "methods",
    "seeds",
    "output_dir",
    "dataset",
    "teacher_path",
    "jacobian_weight",
    "evaluate_on",
)

if __name__ == "__main__":
    common_flags.run(
        main,
        HELP_FLAGS,
        defaults={
            "samples_per_class": ",".join(DEFAULT_SAMPLES_PER_CLASS),
            "methods": ",".join(PAPER_METHODS),
            "output_dir": DEFAULT_OUTPUT_DIR,
        },
    )
