r"""Transfer by distillation (LwF) from a pretrained network, with Jacobians.

The paper's transfer experiment (section 4, table 2): a teacher trained on a
source task (ImageNet) teaches a VGG-9 student a target task (MIT Indoor
67) from few target images. The student has two heads
(`keras_jacobian.transfer.build_lwf_student`): a task head trained with
cross-entropy on the target labels, and a head that mimics the teacher's
source-task outputs on the target images (Learning without Forgetting).
Each method of `--methods` adds terms on top:

  none        no transfer: cross-entropy on the target labels only
  lwf         LwF: + KD between the teacher's and the mimic head's logits
  lwf_jac     LwF + Jacobians: + Jacobian matching of the mimic head
              (the teacher's top-1 source class, `--jacobian_target`)
  lwf_at      LwF + attention: + attention transfer (`--attention_pairs`)
  lwf_at_jac  LwF + attention + Jacobians: + attention transfer and
              matching of the input gradients of the attention maps

By default (`--select_on_validation`) the method is chosen per run: each
method of `--methods` and no transfer (always a candidate) is trained on
the target training images but a held-out `--validation_fraction` of each
class; the one of highest validation accuracy (ties: no transfer) is
retrained on all the training images and tested, against no transfer.
The test images play no part in the choice; the choices are printed and
written to the results. `--noselect_on_validation` tests every method of
`--methods` with its fixed weights instead; it is needed at 1 image per
class, which leaves no image to hold out (the script stops and says so).

Default command (offline: digits, a teacher pretrained here on digits 0-4,
a student on digits 5-9):

  python examples/transfer.py

The teachers, the results of the default run and the paper's setting:
docs/examples.md, or --helpfull.

Details
-------

All methods share one compiled `Distiller` whose term weights are set per
run. The teacher (`--teacher_weights`) is

- `pretrain` (default, offline): a VGG-9 trained here on the
  `--source_classes` of `--dataset` (default digits 0-4; random crops, Adam
  3e-3, cosine schedule, `--teacher_epochs`) at `--teacher_image_size`
  (default: the images' size), saved to
  `<output_dir>/teacher_<data>_<classes>[_<task>][_<size>px].keras` (or
  `--teacher_path`) with its settings beside it (`.keras.json`) and
  reused by later runs of the same settings (others are refused, naming
  the differences); the target task is the
  other classes (digits 5-9), relabelled 0..k-1. `--source_task=
  transforms` makes each source class under each of the 8 symmetries of
  the square (quarter turns of the image and of its mirror image) a class
  of its own: 40 classes and 8 times the images for digits 0-4;
- a saved `.keras` model, with `--teacher_preprocessing` saying how its
  training images were scaled (required: a teacher fed inputs on another
  scale than its training images gives meaningless outputs and Jacobians);
  pass `--source_classes` too when it was trained on classes of the same
  data set;
- `imagenet` (a `keras.applications` network, `--teacher_arch`,
  downloaded by Keras; needs network access, else the script stops and says
  what to do), a `.h5` weights file of that architecture, or `none`
  (random weights, for smoke tests).

The teacher sees the images at `--teacher_image_size` (default: its input
size) through `--teacher_preprocessing`, the student at
`--student_image_size` (default: the data's) standardised with the
per-channel mean and standard deviation of every target training image
(all of them, not only the few labelled ones of a run; the same for every
method and seed): the input pipeline yields `x = {"student": xs,
"teacher": xt}`. Grey images are repeated to 3 channels for a colour
teacher. A saved teacher's input size and channels are checked against
the images before training; with `--source_classes` it is scored on the
source classes' test images as this run feeds them. The validation split
of the choice is drawn once per seed and images per class from the run's
images; every candidate trains and is scored on it.

Writes `transfer.md`, `transfer.json` (test accuracy of the task head per
method and samples per class: mean over seeds with its 95% interval, and
the paired differences, seed by seed, with their intervals: chosen − no
transfer, with each run's validation accuracies, choice and term weights
under `selections`; with `--noselect_on_validation`, LwF − no transfer,
LwF + Jacobians − LwF, LwF + attention − LwF, LwF + attention +
Jacobians − LwF + attention) and `transfer.png` to `--output_dir`
(default `/tmp/keras_jacobian/transfer`).

Default command (offline; VGG-9 width 32 teacher pretrained on digits 0-4,
99.33% on their test images; VGG-4 width 16 student without
BatchNormalization on digits 5-9 from 5 images per class; no augmentation;
Adam 1e-3, constant, 400 steps; the method chosen per seed among the 5 of
`--methods` on 1 held-out image per class, seeds 0-4):

  python examples/transfer.py

It took 200 s on 2 shared CPU cores and chose (validation accuracy %
of each candidate, "none" for no transfer; ties fall to it):

  | seed | none  | LwF   | LwF+Jac | LwF+att | LwF+att+Jac | chosen |
  |------|-------|-------|---------|---------|-------------|--------|
  | 0    | 100.0 | 100.0 | 100.0   | 100.0   | 100.0       | none   |
  | 1    | 100.0 | 100.0 | 100.0   | 100.0   | 100.0       | none   |
  | 2    | 80.0  | 100.0 | 100.0   | 100.0   | 80.0        | LwF    |
  | 3    | 100.0 | 100.0 | 100.0   | 100.0   | 100.0       | none   |
  | 4    | 60.0  | 80.0  | 80.0    | 80.0    | 80.0        | LwF    |

Test accuracy (%, mean ± half-width of the 95% interval over seeds 0-4):

  | method               | 5 / class    |
  |----------------------|--------------|
  | no transfer          | 88.29 ± 5.01 |
  | chosen on validation | 88.70 ± 4.43 |

  | paired difference (points)          | 5 / class            |
  |-------------------------------------|----------------------|
  | chosen on validation − no transfer  | +0.40 [-1.49, +2.29] |

Seed by seed the choice cost 1.00 point (seed 2) and gained 3.01 (seed 4);
with 5 validation images the choice is coarse, and ties fall to no
transfer, so it mostly keeps the student at no transfer.

Every method with its fixed weights (`--noselect_on_validation`, the
default before; 5 methods x 5 seeds):

  python examples/transfer.py --noselect_on_validation

It took 12 min 30 s of wall-clock time (2 min 48 s of CPU time) on 2 CPU
cores shared with other jobs (load average about 12), and printed (test
accuracy %, mean ± half-width of the 95% interval over seeds 0-4):

  | method                      | 5 / class    |
  |-----------------------------|--------------|
  | no transfer                 | 88.29 ± 5.01 |
  | LwF                         | 88.76 ± 3.64 |
  | LwF + Jacobians             | 87.29 ± 5.09 |
  | LwF + attention             | 89.30 ± 4.82 |
  | LwF + attention + Jacobians | 88.49 ± 5.15 |

  | paired difference (points)              | 5 / class            |
  |-----------------------------------------|----------------------|
  | LwF − no transfer                       | +0.47 [-3.32, +4.26] |
  | LwF + Jacobians − LwF                   | -1.47 [-4.11, +1.16] |
  | LwF + attention − LwF                   | +0.54 [-1.83, +2.90] |
  | LwF + att. + Jacobians − LwF + att.     | -0.80 [-1.50, -0.11] |

On this small source task no transfer method helps or hurts by more than
the seed-to-seed noise: the paper's transfer gains are not reproduced here
(at 1 image per class either). With a BatchNormalization student
(`--student_batch_norm`, what this script used to train) evaluated with
its moving statistics (`--norecompute_batch_norm`), LwF + Jacobians
collapsed before 0.3.0 (31.22 ± 28.31% against 86.96 ± 5.45% for LwF,
seeds 0-2), and still lost 12.15 [1.12, 23.18] points against LwF with
the statistics recomputed after training. Since 0.3.0 the Jacobian terms
hold the student's batch statistics constant: LwF + Jacobians − LwF is
-2.07 [-6.65, +2.50] with the moving statistics and -3.21 [-7.35, +0.93]
recomputed (5 seeds). docs/reproducing.md has the commands and the other
settings tried.

The weight of the LwF term against the cross-entropy (weight 1), LwF
alone against no transfer (88.29 ± 5.01), 5 seeds, 5 images per class:

  | `--activation_weight` | LwF          | LwF − no transfer    |
  |-----------------------|--------------|----------------------|
  | 0.3                   | 88.90 ± 3.44 | +0.60 [-1.66, +2.87] |
  | 1 (default)           | 88.76 ± 3.64 | +0.47 [-3.32, +4.26] |
  | 3                     | 88.96 ± 2.61 | +0.67 [-3.08, +4.42] |
  | 10                    | 87.63 ± 3.62 | -0.67 [-3.90, +2.56] |
  | 30                    | 86.76 ± 4.38 | -1.54 [-3.90, +0.82] |

Up to a weight of 3 LwF is level with no transfer; beyond it LwF loses
ground as its weight grows (seed by seed at weight 30: −3.01, +1.00,
−2.68, −3.01, 0 points), though no interval excludes zero. Probes of the
shared features (benchmarks/transfer_mechanism.py, docs/reproducing.md,
"Why LwF can hurt: measured") put the loss in the features, not the head:
their nearest class means lose -4.21 [-6.77, -1.66] points at weight 30,
while a probe trained on every target image does not; the pull toward
the source classes does not grow with the weight, so the cause is not
isolated. Commands (about 1 minute each on 2 shared cores):

  python examples/transfer.py --noselect_on_validation --methods=none,lwf \
    --activation_weight=W    # W in 0.3, 3, 10, 30

A richer source task, across resolutions (`--source_task=transforms`):
the teacher learns digits 0-4 under the 8 symmetries of the square (40
classes, 8 times the images) at 16x16 (the 8x8 images enlarged) for 5
epochs, the student digits 5-9 at 8x8 as before. The teacher reaches
84.75% on its 40-class test images (some classes cannot be told apart:
a 0 turned by 180 degrees is a 0). Commands (S: 1, 5 or 25 images per
class; --noselect_on_validation at 1):

  python examples/transfer.py --source_task=transforms \
    --teacher_image_size=16 --teacher_epochs=5 --samples_per_class=S

Validation accuracy of a transfer method minus that of no transfer
(points, seeds 0-4; 1 held-out image per class at 5 per class, 5 at 25;
the default `pretrain` teacher is "classes"):

  | source task, images/class | LwF − none            | LwF+att+Jac − none    |
  |---------------------------|-----------------------|-----------------------|
  | classes, 5                | +8.00 [-5.60, +21.60] | +4.00 [-7.11, +15.11] |
  | transforms, 5             | +4.00 [-7.11, +15.11] | +4.00 [-7.11, +15.11] |
  | classes, 25               | -4.00 [-10.08, +2.08] | -4.80 [-11.28, +1.68] |
  | transforms, 25            | -4.80 [-10.24, +0.64] | -4.00 [-7.51, -0.49]  |

Test accuracy, chosen on validation − no transfer (points; no transfer
88.29 ± 5.01% at 5 per class, 95.72 ± 1.11% at 25):

  | source task | 5 / class            | 25 / class           |
  |-------------|----------------------|----------------------|
  | classes     | +0.40 [-1.49, +2.29] | +0.00 [+0.00, +0.00] |
  | transforms  | -0.07 [-0.25, +0.12] | +0.00 [+0.00, +0.00] |

Every method with its fixed weights (`--noselect_on_validation`), test
accuracy % by source task and images per class:

  | method      | classes, 1   | transforms, 1 | classes, 5   | transforms, 5 |
  |-------------|--------------|---------------|--------------|---------------|
  | none        | 66.96 ± 8.90 | 66.96 ± 8.90  | 88.29 ± 5.01 | 88.29 ± 5.01  |
  | LwF         | 65.95 ± 7.13 | 63.81 ± 5.82  | 88.76 ± 3.64 | 88.23 ± 3.71  |
  | LwF+Jac     | 65.02 ± 9.79 | 63.68 ± 5.47  | 87.29 ± 5.09 | 87.16 ± 5.71  |
  | LwF+att     | 65.15 ± 8.34 | 63.21 ± 5.20  | 89.30 ± 4.82 | 88.09 ± 4.72  |
  | LwF+att+Jac | 63.61 ± 6.88 | 61.87 ± 4.73  | 88.49 ± 5.15 | 87.76 ± 3.77  |

  | 1 / class, points     | classes              | transforms            |
  |-----------------------|----------------------|-----------------------|
  | LwF − none            | -1.00 [-6.41, +4.40] | -3.14 [-15.59, +9.30] |
  | LwF+Jac − LwF         | -0.94 [-4.68, +2.81] | -0.13 [-3.68, +3.41]  |
  | LwF+att − LwF         | -0.80 [-2.72, +1.11] | -0.60 [-2.81, +1.60]  |
  | LwF+att+Jac − LwF+att | -1.54 [-6.26, +3.18] | -1.34 [-3.22, +0.54]  |

  | 5 / class, points     | classes              | transforms           |
  |-----------------------|----------------------|----------------------|
  | LwF − none            | +0.47 [-3.32, +4.26] | -0.07 [-3.80, +3.66] |
  | LwF+Jac − LwF         | -1.47 [-4.11, +1.16] | -1.07 [-5.98, +3.84] |
  | LwF+att − LwF         | +0.54 [-1.83, +2.90] | -0.13 [-2.97, +2.71] |
  | LwF+att+Jac − LwF+att | -0.80 [-1.50, -0.11] | -0.33 [-2.83, +2.16] |

The teacher at 32x32 (`--teacher_image_size=32`, 82.54% on its test
images, 9 minutes of its 15 on 2 shared cores), 1 image per class:

  | method      | test %       | paired difference (points)      |
  |-------------|--------------|---------------------------------|
  | none        | 66.96 ± 8.90 |                                 |
  | LwF         | 65.42 ± 7.18 | − none: -1.54 [-8.72, +5.64]    |
  | LwF+Jac     | 64.68 ± 6.50 | − LwF: -0.74 [-4.32, +2.85]     |
  | LwF+att     | 64.08 ± 7.46 | − LwF: -1.34 [-4.42, +1.74]     |
  | LwF+att+Jac | 63.21 ± 8.36 | − LwF+att: -0.87 [-4.52, +2.78] |

The richer source task does not make transfer help. At 5 images per
class the validation choice picks transfer in 1 seed of 5 (2 with the
default teacher) and ends level with no transfer; at 25 every transfer
method is below no transfer on the validation images with either
teacher (the only interval that excludes zero: LwF + attention +
Jacobians with the transforms teacher), no transfer is chosen in every
run, so the choice costs nothing, and the student is at 95.72%, near
the ceiling. At 1 image per class, where no image can be held out,
every method with its fixed weights is at or below no transfer with
either teacher and either teacher resolution, LwF a little lower with
the 16x16 transforms teacher (LwF
minus LwF of the default teacher, seed by seed: −8.03, −8.70, −2.34,
+6.69, +1.67 points); at 5 with fixed weights no difference exceeds the
seed-to-seed noise with the transforms teacher. On validation data the
transforms teacher is no better a testbed, so the default stays the
source classes as they are.

The paper's setting (MIT Indoor 67 laid out as in docs/examples.md; ResNet
teacher; hours on a GPU):

  python examples/transfer.py --dataset=folder:/data/mit_indoor67 \
    --teacher_arch=resnet50 --teacher_weights=imagenet \
    --teacher_image_size=224 --student_image_size=224 --student_width=64 \
    --teacher_preprocessing=application \
    --student_arch=vgg9 --student_batch_norm \
    --samples_per_class=25,50,all --seeds=0,1,2,3,4 --student_epochs=100 \
    --batch_size=32 --learning_rate=1e-3 --augment --flip

The paper reports (test accuracy %):

  | samples / class             | 25    | 50    | all   |
  |-----------------------------|-------|-------|-------|
  | no transfer                 | 35.19 | 46.38 | 59.33 |
  | LwF                         | 45.08 | 55.22 | 65.22 |
  | LwF + Jacobians             | 45.26 | 56.49 | 66.04 |
  | LwF + attention             | 46.01 | 57.80 | 67.24 |
  | LwF + attention + Jacobians | 47.31 | 58.35 | 67.31 |

A smoke test of the keras.applications path that runs offline in about 2
minutes (random teacher, so the numbers mean nothing):

  python examples/transfer.py --dataset=digits --teacher_weights=none \
    --teacher_image_size=32 --student_image_size=8 --teacher_alpha=0.35 \
    --student_width=8 --student_epochs=2 --samples_per_class=5 --seeds=0
"""

import math
import os
import re
import sys
import time

import common_flags
import distill
import experiment
import keras
import numpy as np
import teachers
import tensorflow as tf
from absl import app
from absl import flags
from teachers import APPLICATIONS
from teachers import DEFAULT_TEACHER_ARCH
from teachers import PREPROCESSING
from teachers import build_teacher
from teachers import preprocessing
from teachers import pretrain_teacher
from teachers import source_classes
from teachers import split_tasks
from teachers import teacher_description

import keras_jacobian
from keras_jacobian import endpoints
from keras_jacobian import transfer as lwf
from keras_jacobian.experiments import data as data_lib
from keras_jacobian.experiments import models

FLAGS = flags.FLAGS

METHODS = ("none", "lwf", "lwf_jac", "lwf_at", "lwf_at_jac")
# Paired comparisons (method, baseline), seed by seed.
COMPARISONS = (
    ("lwf", "none"),
    ("lwf_jac", "lwf"),
    ("lwf_at", "lwf"),
    ("lwf_at_jac", "lwf_at"),
)
PRETRAINED_PAIRS = [("block1_out", "block1_out")]
LABELS = {
    "none": "no transfer",
    "lwf": "LwF",
    "lwf_jac": "LwF + Jacobians",
    "lwf_at": "LwF + attention",
    "lwf_at_jac": "LwF + attention + Jacobians",
    "selected": "chosen on validation",
}
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_LR_SCHEDULE = "constant"
DEFAULT_AUGMENT = False
DEFAULT_SAMPLES_PER_CLASS = ("5",)
DEFAULT_OUTPUT_DIR = "/tmp/keras_jacobian/transfer"
TERMS = ("lwf", "jac", "at", "at_jac")
METHOD_TERMS = {
    "none": (),
    "lwf": ("lwf",),
    "lwf_jac": ("lwf", "jac"),
    "lwf_at": ("lwf", "at"),
    "lwf_at_jac": ("lwf", "at", "at_jac"),
}

flags.DEFINE_integer(
    "student_image_size",
    None,
    "Student input size (default: the size of the data set's images).",
)
flags.DEFINE_list(
    "attention_pairs",
    None,
    "teacher_layer:student_layer pairs for attention terms (default: one "
    "early pair per known --teacher_arch).",
)
flags.DEFINE_float("attention_weight", 1.0, "Attention transfer weight.")
flags.DEFINE_float(
    "attention_jacobian_weight", 1.0, "Attention-Jacobian matching weight."
)
flags.DEFINE_bool(
    "select_on_validation",
    True,
    "Choose the transfer method per run: each of --methods (and no "
    "transfer, always) is trained on the target training images but a "
    "held-out --validation_fraction of each class, the one of highest "
    "validation accuracy (ties: the earlier, no transfer first) is "
    "retrained on all of them and tested against no transfer. "
    "--noselect_on_validation tests every method of --methods with its "
    "fixed weights instead.",
)


def check_flags():
    methods = experiment.check_choices(
        experiment.flag_or(FLAGS.methods, list(METHODS)), METHODS, "methods"
    )
    experiment.check_no_repeats(methods, "methods")
    spcs = experiment.parse_samples_per_class(
        experiment.flag_or(FLAGS.samples_per_class, DEFAULT_SAMPLES_PER_CLASS)
    )
    seeds = experiment.parse_ints(FLAGS.seeds, "seeds", minimum=0)
    arch = FLAGS.teacher_arch or DEFAULT_TEACHER_ARCH
    weights = FLAGS.teacher_weights
    is_file = weights not in ("imagenet", "none", "pretrain")
    check_teacher_flags(weights, is_file)
    if weights in ("imagenet", "none") and arch not in APPLICATIONS:
        raise app.UsageError(
            f"Expected --teacher_arch in {sorted(APPLICATIONS)}. Received: "
            f"{arch!r}. Or pass a whole saved model as --teacher_weights."
        )
    if FLAGS.source_task != "classes" and weights != "pretrain":
        raise app.UsageError(
            "Expected --teacher_weights=pretrain with --source_task="
            f"{FLAGS.source_task} (the task a teacher pretrained here "
            f"learns). Received: --teacher_weights={weights}. Drop "
            "--source_task or pass --teacher_weights=pretrain."
        )
    if is_file and not os.path.exists(weights):
        raise SystemExit(
            f"ERROR: --teacher_weights={weights} does not exist. Pass a "
            ".h5/.keras file of the teacher, 'pretrain' to pretrain one on "
            "--source_classes (offline), 'imagenet' to download the "
            "ImageNet weights (needs network access), or 'none' for random "
            "weights."
        )
    if (
        weights.endswith(".keras")
        and is_file
        and FLAGS.teacher_preprocessing == "auto"
    ):
        raise app.UsageError(
            f"Expected --teacher_preprocessing with the saved teacher "
            f"{weights}: how were its training images scaled? Pass 'unit' "
            "for images in [0, 1], 'standardize' for per-channel "
            "standardised images, 'symmetric' for [-1, 1], 'centered255' "
            "for 255x - 127.5 or 'application' for keras.applications' "
            f"preprocessing. Choices: {list(PREPROCESSING)}."
        )
    pairs = parse_pairs(arch)
    return methods, spcs, seeds, arch, pairs


def check_teacher_flags(weights, is_file):
    """Refuses teacher flags that would be ignored or misread."""
    path = FLAGS.teacher_path
    if path and weights != "pretrain":
        raise app.UsageError(
            "Expected --teacher_path only with --teacher_weights=pretrain "
            "(where a teacher pretrained here is kept). Received: "
            f"--teacher_path={path} with --teacher_weights={weights}. Pass "
            "your saved teacher as --teacher_weights=<file> alone."
        )
    if weights == "pretrain" and FLAGS.teacher_preprocessing not in (
        "auto",
        "unit",
    ):
        if path and os.path.exists(path):
            where = f"--teacher_path={path}, a teacher pretrained here"
        elif path:
            where = (
                f"--teacher_path={path}, which does not exist, so a new "
                "teacher would be pretrained"
            )
        else:
            where = "a teacher pretrained here"
        raise app.UsageError(
            "Expected --teacher_preprocessing=unit (or none) for a teacher "
            "pretrained here, which learns from images in [0, 1]. "
            f"Received: --teacher_preprocessing={FLAGS.teacher_preprocessing}"
            f" with {where}. Pass your own saved teacher as "
            "--teacher_weights=<file> (--teacher_path keeps teachers "
            "pretrained here), fix the path, or leave "
            "--teacher_preprocessing out."
        )
    if (
        is_file
        and FLAGS.teacher_preprocessing == "application"
        and FLAGS.teacher_arch is None
    ):
        raise app.UsageError(
            "Expected --teacher_arch with --teacher_preprocessing="
            "application and a saved teacher: the keras.applications family "
            "whose preprocess_input it was trained with. Received no "
            f"--teacher_arch. Pass one of {sorted(APPLICATIONS)}, or "
            f"another --teacher_preprocessing of {list(PREPROCESSING)}."
        )


def parse_pairs(arch):
    if FLAGS.attention_pairs is None:
        if FLAGS.teacher_weights == "pretrain":
            return list(PRETRAINED_PAIRS)
        if FLAGS.teacher_weights.endswith(".keras"):
            # A saved model of the user's: no layer names are known.
            return []
        return APPLICATIONS.get(arch, (None, None, []))[2]
    pairs = []
    for item in FLAGS.attention_pairs:
        parts = item.split(":")
        if len(parts) != 2 or not all(parts):
            raise app.UsageError(
                "Expected --attention_pairs as teacher_layer:student_layer "
                f"items. Received: {item!r}. Pass e.g. "
                "--attention_pairs=block_3_expand_relu:block1_out."
            )
        pairs.append(tuple(parts))
    return pairs


def to_channels(images, channels=3):
    """Images with the teacher's channels.

    Grey images are repeated to 3 channels for a colour teacher; images
    whose 3 channels are equal (grey images stored as colour: image
    folders decode every image to 3 channels) keep one for a grey teacher.
    """
    if images.shape[-1] == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    if images.shape[-1] == 3 and channels == 1:
        return images[..., :1]
    return images


def is_grey(data):
    """Whether the 3 channels of every image of `data` are equal."""
    return all(
        np.array_equal(x[..., 0], x[..., c])
        for x in (data.train_images, data.test_images)
        for c in (1, 2)
    )


def image_sizes(data, teacher):
    """(teacher, student) input sizes."""
    native = data.input_shape[0]
    t_size = FLAGS.teacher_image_size
    if t_size is None:
        t_size = teacher.input_shape[1] or 224
    return int(t_size), int(FLAGS.student_image_size or native)


def is_saved_file():
    """Whether the teacher is a file of the user's (not pretrained here)."""
    return FLAGS.teacher_weights not in ("pretrain", "imagenet", "none")


def check_teacher_input(teacher, data, sizes, source=None):
    """Refuses, before any training, a teacher that cannot take the images.

    The teacher sees `sizes[0]` x `sizes[0]` images with the data's
    channels, as `to_channels` makes them.
    """
    shape = tuple(teacher.input_shape[1:])
    height, width, channels = shape[0], shape[1], shape[-1]
    data_channels = data.input_shape[-1]
    wanted = sizes[0]
    if (height is not None and height != wanted) or (
        width is not None and width != wanted
    ):
        given = FLAGS.teacher_image_size
        raise app.UsageError(
            f"Expected --teacher_image_size to match the teacher's input, "
            f"{height}x{width}. Received: --teacher_image_size={given}, "
            f"images of {wanted}x{wanted} for the teacher. Pass "
            f"--teacher_image_size={height} or leave it out."
        )
    if channels == data_channels or (channels, data_channels) == (3, 1):
        return
    grey = [d for d in (data, source) if d is not None]
    if (channels, data_channels) == (1, 3) and all(map(is_grey, grey)):
        return
    accepted = (
        "1 channel (or 3: grey images are repeated to colour)"
        if data_channels == 1
        else f"{data_channels} channels"
    )
    raise app.UsageError(
        f"Expected a teacher taking images of {accepted}, as {data.name} "
        f"has. Received: a teacher of input shape {shape}."
        + (
            " A grey teacher takes 3-channel images only when the 3 "
            "channels of every image are equal (grey images stored as "
            "colour); these are in colour."
            if (channels, data_channels) == (1, 3)
            else ""
        )
        + " Pass a teacher trained on images with these channels."
    )


def saved_teacher_source_accuracy(
    teacher, source, preprocess, mean, std, sizes, channels
):
    """A saved teacher's `source_scores` on the `--source_classes` test
    images.

    Seen as in the run: at its image size, through
    `--teacher_preprocessing`; a wrong preprocessing shows here as a low
    accuracy.
    """
    classes = source_classes()
    if int(teacher.output_shape[-1]) != len(classes):
        raise app.UsageError(
            f"Expected the saved teacher to give one logit per source class "
            f"(--source_classes={','.join(map(str, classes))}: "
            f"{len(classes)}). Received: a teacher of "
            f"{teacher.output_shape[-1]} outputs. Pass the classes it was "
            "trained on, in the order of its outputs."
        )
    ds = pipeline(
        to_channels(source.test_images, channels),
        source.test_labels,
        preprocess,
        mean,
        std,
        False,
        0,
        sizes,
    )
    return source_scores(teacher, ds.map(_teacher_view))


def source_scores(teacher, dataset):
    """(accuracy %, mean |logit|) of a logits model on a pipeline.

    The logits' scale shows inputs scaled otherwise than the teacher
    learnt, which the accuracy of a ReLU network hardly does: inputs 255
    times too large give logits about 100 times too large and nearly the
    same top classes.
    """
    correct = total = 0
    magnitude = 0.0
    for x, y in dataset:
        logits = np.asarray(teacher(x, training=False), "float64")
        y = np.asarray(y)
        magnitude += float(np.abs(logits).mean(-1).sum())
        correct += int(np.sum(np.argmax(logits, -1) == y))
        total += len(y)
    return 100.0 * correct / max(total, 1), magnitude / max(total, 1)


def check_preprocessing(preprocess, method, arch, size, channels):
    """Refuses, before any training, a preprocessing that cannot take the
    teacher's images (keras.applications' BGR ones need 3 channels)."""
    try:
        preprocess(tf.zeros((size, size, channels)))
    except (ValueError, tf.errors.OpError) as error:
        reason = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*", "", str(error))
        reason = reason.splitlines()[0][:160]
        raise app.UsageError(
            f"Expected images the --teacher_preprocessing={method} of "
            f"{arch!r} can take. Received: {size}x{size} images of "
            f"{channels} channel(s) ({type(error).__name__}: {reason}). "
            "keras.applications' preprocessing of most families takes "
            "colour images: pass a teacher on 3 channels, or another "
            f"--teacher_preprocessing of {list(PREPROCESSING)}."
        ) from error


def chance_warnings(accuracy, classes):
    """A warning when a source-task accuracy is close to chance (below
    twice chance, at most 50%)."""
    chance = 100.0 / classes
    if accuracy >= min(2 * chance, 50.0):
        return []
    return [
        f"the teacher scores {accuracy:.2f}% on its source-task test "
        f"images, close to chance ({chance:.2f}% for {classes} classes). "
        + (
            "Check that --source_classes are the classes it was trained "
            "on, in the order of its outputs, and --teacher_preprocessing."
            if is_saved_file()
            else "Train it longer (--teacher_epochs) or wider "
            "(--teacher_width)."
        )
    ]


def teacher_warnings(teacher, source, method, accuracy, stats, sizes, chans):
    """What a saved teacher's source-task scores say is likely wrong.

    Close to chance (below twice chance, at most 50%): `--source_classes`
    are not the classes of its outputs, in their order, or its inputs are
    wrong. Another `--teacher_preprocessing`, not close to chance, 5
    points more accurate: the teacher was trained on other inputs than
    `method`'s; the warning names every one within a point of the best
    and gives each candidate's accuracy and mean |logit|.
    """
    classes = int(teacher.output_shape[-1])
    found = chance_warnings(accuracy, classes)
    arch = FLAGS.teacher_arch
    scores = {}
    for name in PREPROCESSING:
        if name == "application" and arch is None:
            continue
        ds = pipeline(
            to_channels(source.test_images, chans),
            source.test_labels,
            preprocessing(name, arch, *stats),
            *stats,
            False,
            0,
            sizes,
        )
        try:
            scores[name] = source_scores(teacher, ds.map(_teacher_view))
        except (ValueError, tf.errors.OpError):
            continue  # a preprocessing these images cannot take
    if method not in scores:
        return found
    acc = scores[method][0]
    better = [
        name
        for name, (a, _) in scores.items()
        if a >= acc + 5.0 and not chance_warnings(a, classes)
    ]
    if better:
        top = max(scores[name][0] for name in better)
        named = [n for n in better if scores[n][0] >= top - 1.0]
        table = ", ".join(
            f"{name} {a:.2f}% / {m:.3g}" for name, (a, m) in scores.items()
        )
        found.append(
            f"the teacher scores up to {top:.2f}% on its source-task test "
            f"images with --teacher_preprocessing={' or '.join(named)} "
            f"(within a point of the best), against {acc:.2f}% with "
            f"{method} (accuracy / mean |logit| "
            f"per preprocessing: {table}): check how its training images "
            "were scaled. Preprocessings of equal accuracy may still differ "
            "in the logits' scale, which the distillation terms read."
        )
    return found


def pipeline(images, labels, preprocess, mean, std, training, seed, sizes):
    """Yields ({"student": xs, "teacher": xt}, y): each at its resolution."""
    t_size = (sizes[0],) * 2
    s_size = (sizes[1],) * 2
    batch = (
        FLAGS.batch_size
        if training
        else experiment.eval_batch_size(FLAGS.batch_size)
    )
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if training:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
        seeds = tf.data.Dataset.random(
            seed=seed, rerandomize_each_iteration=True
        ).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds))
    else:
        ds = ds.map(_with_zero_seed)
    augment = common_flags.value("augment", DEFAULT_AUGMENT)

    @tf.autograph.experimental.do_not_convert
    def views(element, element_seed):
        image, label = element
        if training and augment:
            flip_seed, crop_seed = tf.unstack(
                tf.random.experimental.stateless_split(element_seed, 2)
            )
            if FLAGS.flip:
                image = tf.image.stateless_random_flip_left_right(
                    image, flip_seed
                )
            h, w = image.shape[0], image.shape[1]
            pad = max(1, h // 8)
            image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], "REFLECT")
            image = tf.image.stateless_random_crop(
                image, (h, w, image.shape[-1]), seed=crop_seed
            )
        xt = image
        if image.shape[0] != t_size[0] or image.shape[1] != t_size[1]:
            xt = tf.image.resize(image, t_size, antialias=True)
        xs = image
        if image.shape[0] != s_size[0] or image.shape[1] != s_size[1]:
            xs = tf.image.resize(image, s_size, antialias=True)
        xs = (xs - mean) / std
        return {"student": xs, "teacher": preprocess(xt)}, label

    ds = ds.map(views, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


@tf.autograph.experimental.do_not_convert
def _with_zero_seed(x, y):
    return (x, y), tf.zeros([2], tf.int64)


def build_student(teacher, data, size, channels=3):
    """A `--student_arch` backbone with a task head and a mimicking head."""
    net = distill.build_model(
        FLAGS.student_arch,
        FLAGS.student_width,
        data,
        "backbone_net",
        batch_norm=common_flags.value(
            "student_batch_norm", distill.DEFAULT_STUDENT_BATCH_NORM
        ),
        input_shape=(size, size, channels),
    )
    backbone = keras.Model(
        net.inputs, net.get_layer("features").output, name="backbone"
    )
    return keras_jacobian.build_lwf_student(
        backbone, data.num_classes, int(teacher.output_shape[-1])
    )


def check_attention_pairs(teacher, student, pairs):
    """Refuses, before any training, a layer name the networks lack."""
    for role, model, names in (
        ("teacher", teacher, [t for t, _ in pairs]),
        ("student", student, [s for _, s in pairs]),
    ):
        have = endpoints.layer_names(model)
        for name in names:
            if name not in have:
                shown = have if len(have) <= 40 else have[:40] + ["..."]
                raise app.UsageError(
                    f"Expected --attention_pairs of teacher_layer:"
                    f"student_layer names. Received: {name!r}, which the "
                    f"{role} ({model.name}) has no layer of. Its layers: "
                    f"{', '.join(shown)}."
                    + common_flags.did_you_mean(name, have)
                )


def build_distiller(teacher, data, pairs, sizes, channels=3):
    student = build_student(teacher, data, sizes[1], channels)
    check_attention_pairs(teacher, student, pairs)
    terms = [
        keras_jacobian.LogitsDistillation(
            temperature=FLAGS.temperature,
            loss=common_flags.ACTIVATION_LOSSES[FLAGS.activation_loss],
        ),
        keras_jacobian.JacobianMatching(
            target=FLAGS.jacobian_target,
            k=FLAGS.jacobian_k if FLAGS.jacobian_target == "top_k" else None,
            normalize=FLAGS.jacobian_normalize,
        ),
    ]
    if pairs:
        terms += [
            keras_jacobian.AttentionTransfer(pairs),
            keras_jacobian.AttentionJacobianMatching(pairs),
        ]
    try:
        distiller = keras_jacobian.Distiller(
            teacher,
            student,
            terms,
            distillation_output=lwf.SOURCE_HEAD,
            seed=FLAGS.seed,
            supervised_loss_weight=1.0,
        )
    except ValueError as error:  # the library says what and how to fix
        raise app.UsageError(str(error)) from error
    distiller.compile(
        optimizer=keras.optimizers.Adam(
            common_flags.value("learning_rate", DEFAULT_LEARNING_RATE)
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    distiller(
        {
            "student": np.zeros((1, sizes[1], sizes[1], channels), "float32"),
            "teacher": np.zeros((1, sizes[0], sizes[0], channels), "float32"),
        }
    )
    return distiller, lwf.extract_task_model(distiller)


def term_weights(method, has_attention):
    chosen = METHOD_TERMS[method]
    values = {
        "lwf": FLAGS.activation_weight,
        "jac": FLAGS.jacobian_weight,
        "at": FLAGS.attention_weight,
        "at_jac": FLAGS.attention_jacobian_weight,
    }
    names = TERMS if has_attention else TERMS[:2]
    return [values[n] if n in chosen else 0.0 for n in names]


def selection_grid(methods):
    """The candidates of the validation choice: no transfer, then methods."""
    return ["none"] + [m for m in methods if m != "none"]


def choose(validation_accuracies):
    """The candidate of highest validation accuracy.

    Ties go to the earlier candidate, so to no transfer when it is first:
    a transfer method is chosen only when it beats no transfer on the
    validation images.

    Args:
        validation_accuracies: dict from candidate name to validation
            accuracy, in grid order.

    Returns:
        The chosen name.
    """
    best = max(validation_accuracies.values())
    return next(n for n, a in validation_accuracies.items() if a == best)


def validation_split(images, labels, seed, class_names=None):
    """(kept images, kept labels, held-out images, held-out labels)."""
    fraction = FLAGS.validation_fraction
    if not 0 < fraction < 1:
        raise app.UsageError(
            "Expected --validation_fraction in (0, 1), e.g. 0.2. Received: "
            f"{fraction}. Or pass --noselect_on_validation."
        )
    # At least one held out of each class (as --validation_fraction says).
    kept, held = data_lib.stratified_split(labels, fraction, seed, minimum=1)
    classes = np.unique(labels)
    if not (
        np.array_equal(np.unique(labels[kept]), classes)
        and np.array_equal(np.unique(labels[held]), classes)
    ):
        counts = {int(c): int(np.sum(labels == c)) for c in classes}
        fewest = min(counts.values())
        short = [c for c, n in counts.items() if n == fewest]
        names = ", ".join(
            f"{class_names[c]!r}" if class_names else f"{c}" for c in short[:5]
        ) + (", ..." if len(short) > 5 else "")
        need = minimum_images(fraction)
        raise app.UsageError(
            f"Expected at least {need} training images in every class to "
            f"hold out --validation_fraction={fraction} of them (at least "
            "one, and one left to train on) for the choice of the transfer "
            f"method. Received: {fewest} image(s) in class(es) {names}. "
            f"Pass --samples_per_class={need} or more (where the data has "
            + (
                "them), a smaller --validation_fraction"
                if need > 2
                else "them)"
            )
            + ", or --noselect_on_validation to test every method of "
            "--methods with its fixed weights."
        )
    return images[kept], labels[kept], images[held], labels[held]


def minimum_images(fraction):
    """The fewest images of a class of which `fraction` holds out at least
    one and keeps at least one (as `validation_split` splits them)."""
    n = 2
    while int(round(fraction * n)) > n - 1:
        n += 1
    return n


def run(output_dir):
    methods, spcs, seeds, arch, pairs = check_flags()
    select = FLAGS.select_on_validation
    grid = selection_grid(methods) if select else methods
    if not pairs and any("at" in METHOD_TERMS[m] for m in grid):
        raise app.UsageError(
            f"Methods {[m for m in grid if 'at' in METHOD_TERMS[m]]} use "
            "attention maps: pass --attention_pairs="
            "teacher_layer:student_layer for this teacher."
        )
    start = time.time()
    strategy = experiment.get_strategy(FLAGS.strategy)
    source, data = split_tasks(distill.load_data())
    subsets = {
        (spc, seed): distill.subset(data, spc, seed)
        for spc in spcs
        for seed in seeds
    }
    if select:
        # Fails before the teacher is trained when a split is impossible.
        for (spc, seed), (images, labels) in subsets.items():
            validation_split(images, labels, seed, data.class_names)
    pretrained_path = source_acc = None
    warnings = []
    with strategy.scope():
        if FLAGS.teacher_weights == "pretrain":
            teacher, source_acc, pretrained_path = pretrain_teacher(
                source, output_dir
            )
            print(
                f"Teacher source-task test accuracy: {source_acc:.2f}% "
                f"({time.time() - start:.0f} s)",
                flush=True,
            )
            warnings = chance_warnings(source_acc, teacher.output_shape[-1])
        else:
            teacher = build_teacher(arch)
    sizes = image_sizes(data, teacher)
    check_teacher_input(teacher, data, sizes, source)
    channels = int(teacher.input_shape[-1])
    train_images = to_channels(data.train_images, channels)
    mean, std = data_lib.channel_stats(train_images)
    method = FLAGS.teacher_preprocessing
    if method == "auto":
        method = (
            "unit" if FLAGS.teacher_weights == "pretrain" else "application"
        )
    preprocess = preprocessing(method, arch, mean, std)
    check_preprocessing(preprocess, method, arch, sizes[0], channels)
    test_ds = pipeline(
        to_channels(data.test_images, channels),
        data.test_labels,
        preprocess,
        mean,
        std,
        False,
        0,
        sizes,
    )
    if is_saved_file() and not source_classes():
        print(
            "No --source_classes: every class of the data set is a target "
            "class, and the teacher's source-task accuracy is not measured. "
            "Pass the classes it was trained on to keep them out of the "
            "target task and to check the teacher on them.",
            flush=True,
        )
    if source_acc is None and is_saved_file() and source_classes():
        source_acc, magnitude = saved_teacher_source_accuracy(
            teacher, source, preprocess, mean, std, sizes, channels
        )
        print(
            f"Teacher source-task test accuracy: {source_acc:.2f}% (inputs "
            f"'{method}'; mean |logit| {magnitude:.3g})",
            flush=True,
        )
        warnings = teacher_warnings(
            teacher, source, method, source_acc, (mean, std), sizes, channels
        )
    for warning in warnings:
        print(f"WARNING: {warning}", flush=True)
    with strategy.scope():
        distiller, task = build_distiller(teacher, data, pairs, sizes, channels)
    inits = {}
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        inits[seed] = build_student(
            teacher, data, sizes[1], channels
        ).get_weights()
    records = []
    selections = []
    runs_per_seed = len(grid) + 2 if select else len(methods)
    progress = experiment.Progress(len(spcs) * len(seeds) * runs_per_seed)

    def fit_and_score(name, images, labels, seed, eval_ds, run_name):
        """Trains `name` from the seed's init; accuracy on `eval_ds`."""
        train = pipeline(
            to_channels(images, channels),
            labels,
            preprocess,
            mean,
            std,
            True,
            seed,
            sizes,
        ).repeat()
        distiller.student.set_weights(inits[seed])
        experiment.reset_optimizer(distiller.optimizer)
        for variable, value in zip(
            distiller.term_weights, term_weights(name, bool(pairs))
        ):
            variable.assign(value)
        distiller.supervised_loss_weight = FLAGS.supervised_loss_weight
        keras.utils.set_random_seed(seed)
        experiment.train(
            distiller,
            train,
            epochs=FLAGS.student_epochs,
            steps_per_epoch=experiment.steps_per_epoch(
                len(labels), FLAGS.batch_size, FLAGS.min_steps_per_epoch
            ),
            run_name=run_name,
            learning_rate=common_flags.value(
                "learning_rate", DEFAULT_LEARNING_RATE
            ),
            schedule=common_flags.value("lr_schedule", DEFAULT_LR_SCHEDULE),
            tensorboard_dir=FLAGS.tensorboard_dir,
            backup_dir=FLAGS.backup_dir,
            verbose=FLAGS.verbose,
        )
        if FLAGS.recompute_batch_norm:
            models.recompute_batch_norm_statistics(
                distiller.student,
                train.map(_student_view),
                steps=math.ceil(len(labels) / FLAGS.batch_size),
            )
        return experiment.accuracy(task, eval_ds.map(_student_view))

    def select_method(images, labels, seed, spc):
        """Chooses among `grid` on a validation split of the training set.

        Sees the target training images only: the test set is not an
        argument.
        """
        kept_x, kept_y, val_x, val_y = validation_split(
            images, labels, seed, data.class_names
        )
        val_ds = pipeline(
            to_channels(val_x, channels),
            val_y,
            preprocess,
            mean,
            std,
            False,
            0,
            sizes,
        )
        accuracies = {}
        for name in grid:
            t0 = time.time()
            accuracies[name] = fit_and_score(
                name,
                kept_x,
                kept_y,
                seed,
                val_ds,
                f"val_{name}_spc{experiment.spc_label(spc)}_s{seed}",
            )
            progress.run_done(
                f"{LABELS[name]}, {experiment.spc_label(spc)}/class, seed "
                f"{seed}: validation accuracy {accuracies[name]:.2f}% "
                f"({time.time() - t0:.1f} s)"
            )
        return choose(accuracies), accuracies, len(val_y)

    for spc in spcs:
        for seed in seeds:
            images, labels = subsets[spc, seed]
            if select:
                chosen, val_acc, n_val = select_method(
                    images, labels, seed, spc
                )
                weights = dict.fromkeys(TERMS, 0.0)
                weights.update(zip(TERMS, term_weights(chosen, bool(pairs))))
                selections.append(
                    {
                        "samples_per_class": experiment.spc_label(spc),
                        "seed": seed,
                        "chosen": chosen,
                        "weights": weights,
                        "validation_accuracy": val_acc,
                        "validation_images": n_val,
                    }
                )
                print(
                    f"Seed {seed}, {experiment.spc_label(spc)}/class: chose "
                    f"{LABELS[chosen]} (weights {weights}) on "
                    f"{n_val} validation images",
                    flush=True,
                )
                to_run = [("none", "none"), ("selected", chosen)]
            else:
                to_run = [(name, name) for name in methods]
            scores = {}
            for row, name in to_run:
                t0 = time.time()
                reused = name in scores
                if reused:
                    acc = scores[name]
                else:
                    acc = scores[name] = fit_and_score(
                        name,
                        images,
                        labels,
                        seed,
                        test_ds,
                        f"{row}_spc{experiment.spc_label(spc)}_s{seed}",
                    )
                seconds = time.time() - t0
                record = {
                    "method": row,
                    "samples_per_class": experiment.spc_label(spc),
                    "seed": seed,
                    "accuracy": acc,
                    "seconds": seconds,
                }
                if row == "selected":
                    record["chosen"] = name
                    record["reused"] = reused
                records.append(record)
                progress.run_done(
                    f"{LABELS[row]}"
                    + (f" ({LABELS[name]})" if row != name else "")
                    + f", {experiment.spc_label(spc)}/class, seed {seed}: "
                    f"test accuracy {acc:.2f}% ({seconds:.1f} s)"
                )
    elapsed = time.time() - start
    header = (
        f"Test accuracy (%) of the {FLAGS.student_arch} student (task head) "
        f"on {data.name}; teacher: "
        f"{teacher_description(arch, pretrained_path)}, inputs "
        f"'{method}'; {experiment.seeds_label(seeds)}; augmentation "
        f"{'on' if common_flags.value('augment', DEFAULT_AUGMENT) else 'off'}"
        f"; {elapsed:.0f} s."
    )
    if source_acc is not None:
        header += f" Teacher source-task test accuracy: {source_acc:.2f}%."
    for warning in warnings:
        header += f"\n\nWarning: {warning}"
    if select:
        header += "\n\n" + selection_table(selections, grid)
    summary = experiment.report(
        output_dir,
        "transfer",
        records,
        header,
        column_key="samples_per_class",
        row_title="method",
        column_title="samples/class",
        extra={
            "seconds": elapsed,
            "teacher_preprocessing": method,
            "teacher_source_accuracy": source_acc,
            "teacher_warnings": warnings,
            "selections": selections,
            "flags": experiment.flag_values(
                common_flags, teachers, sys.modules[__name__]
            ),
        },
        title=f"Transfer to {data.name}",
        labels=LABELS,
        comparisons=(("selected", "none"),) if select else COMPARISONS,
    )
    summary["selections"] = selections
    return summary


def selection_table(selections, grid):
    """Markdown: per run, the validation accuracies and the choice."""
    lines = [
        "Transfer method chosen per run on the validation images "
        f"(--validation_fraction={FLAGS.validation_fraction} of each "
        "class of the training images; validation accuracy %, ties to "
        "the earlier column):",
        "",
        "| samples/class | seed | "
        + " | ".join(LABELS[n] for n in grid)
        + " | chosen |",
        "|---" * (len(grid) + 3) + "|",
    ]
    for item in selections:
        cells = [f"{item['validation_accuracy'][n]:.1f}" for n in grid]
        lines.append(
            f"| {item['samples_per_class']} | {item['seed']} | "
            + " | ".join(cells)
            + f" | {LABELS[item['chosen']]} |"
        )
    return "\n".join(lines)


@tf.autograph.experimental.do_not_convert
def _student_view(x, y):
    return x["student"], y


@tf.autograph.experimental.do_not_convert
def _teacher_view(x, y):
    return x["teacher"], y


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    run(FLAGS.output_dir or DEFAULT_OUTPUT_DIR)


HELP_FLAGS = (
    "samples_per_class",
    "methods",
    "select_on_validation",
    "seeds",
    "output_dir",
    "dataset",
    "teacher_weights",
)

if __name__ == "__main__":
    common_flags.run(
        main,
        HELP_FLAGS,
        defaults={
            "samples_per_class": ",".join(DEFAULT_SAMPLES_PER_CLASS),
            "methods": ",".join(METHODS),
            "output_dir": DEFAULT_OUTPUT_DIR,
        },
    )
