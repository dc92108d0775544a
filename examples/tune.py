r"""Searches the distillation loss weights with keras-tuner.

Trains (or loads) the teacher as `examples/distill.py` does, holds out a
validation split (`--validation_fraction` of each class, never used for
training), draws `--samples_per_class` training examples per class (one
value, default 5, seed `--seed`), and searches, with
`keras_jacobian.tuning.DistillerHyperModel`, the cross-entropy weight,
whether to use activation matching and its weight (log scale) and
temperature, and whether to use Jacobian matching and its weight (log
scale) and target. The objective is the student's validation accuracy
(`val_accuracy`, maximised). `--tuner` picks random search, Bayesian
optimisation or Hyperband.

Results go to `--tune_dir` (default `<output_dir>/search`, output_dir
default `/tmp/keras_jacobian/tune`). A second run with the same directory
resumes the search: finished trials are not run again (pass `--overwrite`
to start afresh). The best configuration is printed and saved to
`<output_dir>/best.json`, with the `examples/distill.py` command that
reproduces it.

Default command (offline, digits, 8 random trials of 15 epochs):

  python examples/tune.py

What it printed and the CIFAR-100 setting: docs/examples.md, or
--helpfull.

Results of the default run
--------------------------

It took 4 min 45 s (wall; 1 min 50 s of CPU time) on 2 CPU cores busy with
other jobs, teacher included, and printed (measured with earlier defaults
of the shared flags: random-crop augmentation, Adam 3e-3 with a cosine
schedule, a student with BatchNormalization; the defaults are now those of
examples/distill.py):

  Best of 8 trials: val_accuracy 0.8619
  {"supervised_loss_weight": 0.5, "use_activation": false,
   "use_jacobian": true, "jacobian_weight": 1.2876,
   "jacobian_target": "random"}
  Reproduce with:
    python examples/distill.py --methods=jac_ce --samples_per_class=5 ...

The teacher of a search is trained without the validation images, so the
reproducing command (which trains its own teacher on every training image)
gives close, not identical, numbers.

Bayesian optimisation on CIFAR-100 with 10 samples per class:

  python examples/tune.py --tuner=bayesian --max_trials=30 \
    --dataset=cifar100 --data_dir=DIR --teacher_width=64 \
    --student_width=64 --samples_per_class=10 --tuning_epochs=50 \
    --augment --flip
"""

import json
import os
import shlex

import common_flags
import distill
import experiment
import keras
from absl import app
from absl import flags

from keras_jacobian import tuning

FLAGS = flags.FLAGS
DEFAULT_OUTPUT_DIR = "/tmp/keras_jacobian/tune"

flags.DEFINE_enum("tuner", "random", list(tuning.TUNERS), "Search algorithm.")
flags.DEFINE_integer("max_trials", 8, "Trials (random and bayesian).")
flags.DEFINE_integer(
    "tuning_epochs", 15, "Epochs per trial (Hyperband: the most per trial)."
)
flags.DEFINE_string(
    "tune_dir", None, "Search directory (default: <output_dir>/search)."
)
flags.DEFINE_string("project_name", "distill", "Search subdirectory.")
flags.DEFINE_bool(
    "overwrite", False, "Start the search afresh instead of resuming it."
)


def distill_command(values, spc):
    """The examples/distill.py command that trains the best configuration."""
    parts = []
    if values.get("use_activation"):
        parts.append("act")
    if values.get("use_jacobian"):
        parts.append("jac")
    # Searches saved before the rename name the same (independent) weight
    # `student_loss_weight`.
    ce_weight = values.get(
        "supervised_loss_weight", values.get("student_loss_weight", 1.0)
    )
    if ce_weight > 0:
        parts.append("ce")
    if not parts:
        parts = ["act"]
    args = {
        "methods": "_".join(parts),
        "samples_per_class": str(spc),
        "dataset": FLAGS.dataset,
    }
    if ce_weight > 0:
        args["supervised_loss_weight"] = f"{ce_weight:g}"
    if values.get("use_activation"):
        args["activation_weight"] = f"{values['activation_weight']:.4g}"
        args["temperature"] = f"{values['temperature']:g}"
    if values.get("use_jacobian"):
        args["jacobian_weight"] = f"{values['jacobian_weight']:.4g}"
        args["jacobian_target"] = values["jacobian_target"]
    for name in (
        "data_dir",
        "image_size",
        "teacher_arch",
        "teacher_path",
        "student_arch",
        "activation_loss",
    ):
        if FLAGS[name].present or FLAGS[name].value != FLAGS[name].default:
            args[name] = str(FLAGS[name].value)
    # The training setup the search ran with, always: a default may change.
    args["learning_rate"] = f"{distill.learning_rate():g}"
    args["batch_size"] = str(FLAGS.batch_size)
    args["min_steps_per_epoch"] = str(FLAGS.min_steps_per_epoch)
    batch_norm = common_flags.value(
        "student_batch_norm", distill.DEFAULT_STUDENT_BATCH_NORM
    )
    args["student_batch_norm"] = str(bool(batch_norm)).lower()
    args["teacher_width"] = str(FLAGS.teacher_width)
    args["student_width"] = str(FLAGS.student_width)
    args["student_epochs"] = str(FLAGS.tuning_epochs)
    if distill.augment():
        args["augment"] = "true"
        args["flip"] = str(FLAGS.flip).lower()
    return "python examples/distill.py " + " ".join(
        f"--{k}={shlex.quote(v)}" for k, v in args.items()
    )


def run(output_dir):
    spcs = experiment.parse_samples_per_class(
        experiment.flag_or(FLAGS.samples_per_class, ["5"])
    )
    if len(spcs) != 1:
        raise app.UsageError(
            "Expected one value of --samples_per_class for tune.py. "
            f"Received {FLAGS.samples_per_class}."
        )
    spc = spcs[0]
    if not 0 < FLAGS.validation_fraction < 1:
        raise app.UsageError(
            "Expected --validation_fraction in (0, 1), e.g. 0.2."
        )
    teacher_arch = FLAGS.teacher_arch or distill.DEFAULT_TEACHER_ARCH
    if teacher_arch not in distill.models.MODELS:
        raise app.UsageError(
            f"Expected --teacher_arch in {sorted(distill.models.MODELS)}. "
            f"Received: {teacher_arch!r}."
        )
    strategy = experiment.get_strategy(FLAGS.strategy)
    data = distill.load_data(FLAGS.validation_fraction)
    images, labels = distill.subset(data, spc, FLAGS.seed)
    teacher = distill.get_teacher(data, strategy, teacher_arch, output_dir)
    train = distill.pipeline(data, images, labels, True, FLAGS.seed).repeat()
    val = distill.pipeline(data, data.val_images, data.val_labels, False)
    # The search reads the validation split only.
    teacher_acc = experiment.accuracy(teacher, val)
    print(f"Teacher validation accuracy: {teacher_acc:.2f}%", flush=True)
    steps = experiment.steps_per_epoch(
        len(labels), FLAGS.batch_size, FLAGS.min_steps_per_epoch
    )

    def student_builder():
        return distill.build_student(data, "student")

    hypermodel = tuning.DistillerHyperModel(
        teacher,
        student_builder,
        learning_rate=distill.learning_rate(),
        activation_loss=common_flags.ACTIVATION_LOSSES[FLAGS.activation_loss],
        jacobian_normalize=None if FLAGS.jacobian_normalize else False,
        seed=FLAGS.seed,
    )
    tune_dir = FLAGS.tune_dir or os.path.join(output_dir, "search")
    tuner = tuning.build_tuner(
        FLAGS.tuner,
        hypermodel,
        tune_dir,
        FLAGS.project_name,
        max_trials=FLAGS.max_trials,
        max_epochs=FLAGS.tuning_epochs,
        overwrite=FLAGS.overwrite,
        seed=FLAGS.seed,
        distribution_strategy=(
            None if FLAGS.strategy == "default" else strategy
        ),
    )
    keras.utils.set_random_seed(FLAGS.seed)
    tuner.search(
        train,
        validation_data=val,
        epochs=FLAGS.tuning_epochs,
        steps_per_epoch=steps,
        verbose=FLAGS.verbose,
        shuffle=False,  # The pipeline shuffles; avoids Keras' warning.
    )
    best = tuning.best_values(tuner)
    best["command"] = distill_command(best["values"], spc)
    best["teacher_accuracy"] = teacher_acc
    best["tuner"] = FLAGS.tuner
    best["directory"] = os.path.join(tune_dir, FLAGS.project_name)
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "best.json"), "w") as f:
        json.dump(best, f, indent=2)
    print(
        f"Best of {best['num_trials']} trials: val_accuracy "
        f"{best['score']:.4f}\n"
        + json.dumps(best["values"], indent=2)
        + f"\nReproduce with:\n  {best['command']}\n"
        + f"Wrote best.json to {output_dir}; the search is in {tune_dir}",
        flush=True,
    )
    return best


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    run(FLAGS.output_dir or DEFAULT_OUTPUT_DIR)


HELP_FLAGS = (
    "samples_per_class",
    "seed",
    "output_dir",
    "dataset",
    "tuner",
    "max_trials",
    "tune_dir",
)

if __name__ == "__main__":
    common_flags.run(
        main,
        HELP_FLAGS,
        defaults={"samples_per_class": "5", "output_dir": DEFAULT_OUTPUT_DIR},
    )
