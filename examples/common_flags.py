"""Flags shared by the example scripts, and quiet start-up.

Every script imports this module first, so that a flag used by several
scripts is defined once per process (absl refuses a second definition of a
name). Flags whose default differs from one script to another default to
`None` here; each script documents the value it uses then.

Importing this module also silences TensorFlow's start-up lines (CUDA
probing on a CPU machine, oneDNN and CPU-feature notices), which TensorFlow
writes to the standard error before its own logging is configured, so that
a user sees the scripts' progress lines and nothing else. Set
`TF_CPP_MIN_LOG_LEVEL=0` to see them again.
"""

import difflib
import logging as std_logging
import math
import os
import re
import sys
import textwrap
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# The library imports TensorFlow with the standard error muted
# (`keras_jacobian/_quiet.py`); the level above keeps it quiet afterwards.
import keras_jacobian  # noqa: E402, F401

# `fit` warns about `shuffle=True` on every call with a `tf.data.Dataset`;
# the scripts' pipelines shuffle themselves.
warnings.filterwarnings("ignore", message=r"`shuffle=True` was passed")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

# TFDS logs at INFO through absl (dataset info, "Constructing tf.data").
logging.set_verbosity(logging.WARNING)


class _NoRetracingNotice(std_logging.Filter):
    """Drops TensorFlow's notice about retraced evaluation functions.

    Evaluating many students (and a last batch of another size) traces the
    prediction function a few times; the notice says nothing a user can act
    on here.
    """

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


std_logging.getLogger("tensorflow").addFilter(_NoRetracingNotice())

# Data.
flags.DEFINE_string(
    "dataset",
    "digits",
    "'digits' (bundled with scikit-learn, offline), a TensorFlow Datasets "
    "catalog name (e.g. 'cifar100'), or 'folder:<root>' for an image folder "
    "root/<split>/<class>/*.jpg.",
)
flags.DEFINE_string(
    "data_dir", None, "TFDS data directory (default: $TFDS_DATA_DIR)."
)
flags.DEFINE_integer(
    "image_size", None, "Resize images to this size (default: native)."
)
flags.DEFINE_bool(
    "download",
    False,
    "Let TFDS download a missing catalog data set (needs network access).",
)
flags.DEFINE_bool(
    "augment",
    None,
    "Random crops (padding of 1/8 of the image size; flips with --flip) of "
    "the training images (default: see the script). Augmentation shows the "
    "student the teacher around each image, which is what Jacobian "
    "matching does too: expect Jacobians to add less with it.",
)
flags.DEFINE_bool("flip", False, "Random horizontal flips with --augment.")
flags.DEFINE_list(
    "samples_per_class",
    None,
    "Training examples per class, one run per value; 'all' keeps every "
    "example (default: see the script).",
)
flags.DEFINE_list(
    "methods", None, "Methods to compare, one row each (default: see script)."
)

# Models.
flags.DEFINE_string(
    "teacher_arch", None, "Teacher architecture (default: see the script)."
)
flags.DEFINE_integer("teacher_width", 32, "Channels of the teacher's block 1.")
flags.DEFINE_string(
    "teacher_path",
    None,
    "Teacher .keras file, loaded when it exists, else trained and saved "
    "there (default: <output_dir>/teacher.keras).",
)
flags.DEFINE_enum(
    "student_arch", "vgg4", ["vgg9", "vgg4", "resnet"], "Student model."
)
flags.DEFINE_integer("student_width", 16, "Channels of the student's block 1.")

# Distillation losses.
flags.DEFINE_float(
    "supervised_loss_weight",
    1.0,
    "Weight of the cross-entropy on labels, independent of the other "
    "weights (Distiller(supervised_loss_weight=...)).",
)
flags.register_validator(
    "supervised_loss_weight",
    lambda value: math.isfinite(value) and value >= 0,
    message="expected a finite number >= 0, e.g. 1.0.",
)
# The scripts' old name of --supervised_loss_weight, refused at parsing:
# in keras.distillation `student_loss_weight` is a convex mix, so a value
# that kept its old meaning here would be read wrongly by a Keras user.
flags.DEFINE_string(
    "student_loss_weight",
    None,
    "Renamed --supervised_loss_weight; refused.",
)
flags.register_validator(
    "student_loss_weight",
    lambda value: value is None,
    message=(
        "this flag was renamed --supervised_loss_weight (the weight of the "
        "cross-entropy on labels, independent of the other weights); in "
        "keras.distillation, student_loss_weight is a convex mix "
        "w * CE + (1 - w) * terms, which these scripts do not use. Pass "
        "the same value as --supervised_loss_weight."
    ),
)
flags.DEFINE_float(
    "activation_weight", 1.0, "Weight of the activation (logit) matching."
)
flags.DEFINE_float("jacobian_weight", 1.0, "Weight of the Jacobian matching.")
flags.DEFINE_float(
    "whole_jacobian_weight",
    1.0,
    "Weight of the whole-Jacobian term (methods with 'whole'; chosen on "
    "validation data, docs/whole-jacobian.md).",
)
flags.DEFINE_float("temperature", 4.0, "Softmax temperature of KD (kl).")
flags.DEFINE_enum(
    "activation_loss", "kl", ["kl", "mse"], "Activation matching loss."
)
# LogitsDistillation's loss for each --activation_loss: Hinton's KD, or the
# squared logit error summed over classes (not Keras' "mse", a mean of
# logits divided by the temperature).
ACTIVATION_LOSSES = {"kl": "kd", "mse": "squared_logits"}
flags.DEFINE_enum(
    "jacobian_target",
    "teacher_top1",
    ["teacher_top1", "label", "top_k", "all", "random"],
    "Which Jacobian rows are matched.",
)
flags.DEFINE_integer("jacobian_k", None, "k of --jacobian_target=top_k.")
flags.DEFINE_bool(
    "jacobian_normalize",
    True,
    "The target's normalised form (unit rows; relative to the teacher for "
    "all and random); false: raw rows.",
)

# Training.
flags.DEFINE_integer("teacher_epochs", 20, "Teacher training epochs.")
flags.DEFINE_integer("student_epochs", 20, "Student training epochs.")
flags.DEFINE_integer(
    "min_steps_per_epoch",
    20,
    "Training steps per epoch at least (small training sets are repeated), "
    "so that runs with few samples per class still take enough steps.",
)
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_float(
    "learning_rate", None, "Adam learning rate (default: see the script)."
)
flags.register_validator(
    "learning_rate",
    lambda value: value is None or (math.isfinite(value) and value > 0),
    message="expected a finite number > 0, e.g. 1e-3 (or leave it out).",
)
flags.DEFINE_enum(
    "lr_schedule",
    None,
    ["constant", "cosine"],
    "Learning-rate schedule (default: see the script).",
)
flags.DEFINE_enum(
    "strategy",
    "default",
    ["default", "mirrored", "one_device", "multi_worker", "tpu"],
    "tf.distribute strategy.",
)
flags.DEFINE_integer("seed", 0, "Seed of the teacher and of data splits.")
flags.DEFINE_list(
    "seeds",
    ["0", "1", "2", "3", "4"],
    "Seeds of the student runs (subset and init). Runs of one seed share "
    "their subset and initial weights: methods are compared seed by seed.",
)
flags.DEFINE_float(
    "validation_fraction",
    0.2,
    "Fraction of each class's training images held out as validation "
    "images (at least one per class): in transfer.py, of the "
    "--samples_per_class images, to choose the method (no transfer among "
    "the candidates) before retraining on all of them; at 1 image per "
    "class none can be held out (pass --noselect_on_validation). In "
    "distill.py (--evaluate_on=validation) and tune.py, of the whole "
    "training set, before the few-shot subset is drawn.",
)

# Outputs.
flags.DEFINE_string(
    "output_dir", None, "Directory of results (default: see the script)."
)
flags.DEFINE_string(
    "tensorboard_dir", None, "TensorBoard logs, one subdirectory per run."
)
flags.DEFINE_string(
    "backup_dir",
    None,
    "keras_jacobian.callbacks.BackupAndRestore directory, one subdirectory "
    "per run: an interrupted run resumes from its last epoch.",
)
flags.DEFINE_integer("verbose", 0, "Keras fit verbosity (0, 1 or 2).")

FLAGS = flags.FLAGS
# Flags that only refuse an old name; results do not record them.
REMOVED_FLAGS = ("student_loss_weight",)


def value(name, default):
    """The value of flag `name`, or `default` when the flag is `None`."""
    flag_value = getattr(FLAGS, name)
    return default if flag_value is None else flag_value


# Command line: short help, one-line errors.

SHORT_HELP = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")
FULL_HELP = ("--helpfull", "-helpfull")


def did_you_mean(value, choices):
    """' Did you mean ...?' for the choice closest to `value`, or ''."""
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def usage_head(doc):
    """The part of a script's docstring that `--help` prints.

    That is the text above the first section heading (a line underlined
    with dashes); the sections below (tables of results, the paper's
    settings) are printed by `--helpfull` only.
    """
    lines = (doc or "").strip("\n").splitlines()
    for i in range(1, len(lines)):
        if lines[i] and set(lines[i]) == {"-"} and lines[i - 1].strip():
            return "\n".join(lines[: i - 1]).rstrip()
    return "\n".join(lines)


def short_help(doc, names, defaults=None):
    """The text of `--help`: the docstring's head and the main flags."""
    defaults = defaults or {}
    out = [usage_head(doc), "", "Main flags (--helpfull lists every flag):"]
    for name in names:
        flag = FLAGS[name]
        default = defaults.get(name, flag.default_as_str)
        if default is None or default == "None":
            default = "none"
        elif isinstance(default, (list, tuple)):
            default = ",".join(map(str, default))
        text = re.sub(r"\s*\(default: see (the )?script\)", "", flag.help)
        if "(default:" not in text:
            text += f" (default: {str(default).strip(chr(39))})"
        text = f"--{name}: {text}"
        out.append(
            textwrap.fill(
                text, 80, initial_indent="  ", subsequent_indent="      "
            )
        )
    return "\n".join(out)


def _flag_error_message(error):
    """The message of a flag parsing error, with a suggestion if any."""
    message = str(error)
    match = re.match(r"flag --(\w+)=(.*?): ", message)
    if match and match[1] in FLAGS:
        choices = getattr(FLAGS[match[1]].parser, "enum_values", None)
        if choices:
            message = (
                message.rstrip(".") + "." + did_you_mean(match[2], choices)
            )
    return message


# Integer flags that count or size something: 0 or less means nothing.
POSITIVE_INTEGERS = (
    "_size",
    "_width",
    "epochs",
    "_classes",
    "_trials",
    "_projections",
    "jacobian_k",
)


def _number_problem():
    """The first loss weight (`--*_weight`) that is negative or not finite,
    a temperature that is not a finite positive number, or a size, width,
    count of epochs or classes below 1, as a message."""
    for name in sorted(FLAGS):
        value = FLAGS[name].value
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and name.endswith(POSITIVE_INTEGERS)
            and value < 1
        ):
            return (
                f"flag --{name}={value}: expected an integer >= 1 (or the "
                "flag left out for its default)."
            )
        if not isinstance(value, float):
            continue
        if name.endswith("_weight") and not (
            math.isfinite(value) and value >= 0
        ):
            return (
                f"flag --{name}={value}: expected a finite number >= 0, "
                "e.g. 1.0 (0 switches the term off)."
            )
        if name == "temperature" and not (math.isfinite(value) and value > 0):
            return (
                f"flag --{name}={value}: expected a finite number > 0, e.g. "
                "4.0."
            )
    return None


def run(main, names, defaults=None):
    """Runs `main` with absl, with a short `--help` and one-line errors.

    `--help` prints the head of the main module's docstring and the flags
    `names` (with `defaults`, the script's values of flags whose default is
    `None`) and exits with status 0; `--helpfull` prints the whole
    docstring and every flag. A bad flag value, or an `app.UsageError`
    raised by `main`, prints `<script>: error: <message>` to the standard
    error, without a traceback or the usage, and exits with status 1.
    """
    script = os.path.basename(sys.argv[0])
    doc = sys.modules["__main__"].__doc__

    def fail(message):
        sys.stderr.write(
            f"{script}: error: {message}\nRun {script} --help for the main "
            "flags.\n"
        )
        sys.exit(1)

    def parse(argv):
        arguments = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
        if any(a in SHORT_HELP for a in arguments):
            print(short_help(doc, names, defaults))
            sys.exit(0)
        if any(a in FULL_HELP for a in arguments):
            app.usage(writeto_stdout=True)
            sys.exit(0)
        try:
            rest = FLAGS(argv)
        except flags.Error as error:
            fail(_flag_error_message(error))
        problem = _number_problem()
        if problem:
            fail(problem)
        return rest

    def checked_main(argv):
        try:
            return main(argv)
        except app.UsageError as error:
            fail(str(error))

    app.run(checked_main, flags_parser=parse)
