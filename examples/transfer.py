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

All methods share one compiled `Distiller` whose term weights are set per
run. The teacher is a `keras.applications` network (`--teacher_arch`:
mobilenet_v2 (default), resnet50, ...) returning logits, with
`--teacher_weights`: `imagenet` (downloaded by Keras; needs network access,
else the script stops and says what to do), a local `.h5` / `.keras` file
(weights of the same architecture, or a whole saved model), or `none`
(random weights, for smoke tests). The teacher sees the images at
`--teacher_image_size` with its own preprocessing, the student at
`--student_image_size` normalised with the training statistics: the input
pipeline yields `x = {"student": xs, "teacher": xt}`.

Writes `transfer.md`, `transfer.json` (test accuracy of the task head, mean
and std over `--seeds`, per method and samples per class) and
`transfer.png` to `--output_dir` (default `/tmp/keras_jacobian/transfer`).

The paper's setting (MIT Indoor 67 laid out as in docs/examples.md; ResNet
teacher; hours on a GPU):

  python examples/transfer.py --dataset=folder:/data/mit_indoor67 \
    --teacher_arch=resnet50 --teacher_weights=imagenet \
    --teacher_image_size=224 --student_image_size=224 --student_width=64 \
    --samples_per_class=25,50,all --seeds=0,1,2 --student_epochs=100 \
    --batch_size=32 --learning_rate=1e-3 --augment --flip

The paper reports (test accuracy %):

  | samples / class             | 25    | 50    | all   |
  |-----------------------------|-------|-------|-------|
  | no transfer                 | 35.19 | 46.38 | 59.33 |
  | LwF                         | 45.08 | 55.22 | 65.22 |
  | LwF + Jacobians             | 45.26 | 56.49 | 66.04 |
  | LwF + attention             | 46.01 | 57.80 | 67.24 |
  | LwF + attention + Jacobians | 47.31 | 58.35 | 67.31 |

A smoke test that runs offline in about 2 minutes (random teacher, so the
numbers mean nothing):

  python examples/transfer.py --dataset=digits --teacher_weights=none \
    --teacher_image_size=32 --student_image_size=8 --teacher_alpha=0.35 \
    --student_width=8 --student_epochs=2 --samples_per_class=5 --seeds=0
"""

import os
import sys
import time

import common_flags
import distill
import experiment
import keras
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

import keras_jacobian
from keras_jacobian import transfer as lwf
from keras_jacobian.experiments import data as data_lib
from keras_jacobian.experiments import models

FLAGS = flags.FLAGS

METHODS = ("none", "lwf", "lwf_jac", "lwf_at", "lwf_at_jac")
LABELS = {
    "none": "no transfer",
    "lwf": "LwF",
    "lwf_jac": "LwF + Jacobians",
    "lwf_at": "LwF + attention",
    "lwf_at_jac": "LwF + attention + Jacobians",
}
DEFAULT_OUTPUT_DIR = "/tmp/keras_jacobian/transfer"
DEFAULT_TEACHER_ARCH = "mobilenet_v2"
APPLICATIONS = {
    "mobilenet_v2": (
        "MobileNetV2",
        "mobilenet_v2",
        [("block_3_expand_relu", "block1_out")],
    ),
    "resnet50": ("ResNet50", "resnet", [("conv2_block3_out", "block1_out")]),
    "resnet101": (
        "ResNet101",
        "resnet",
        [("conv2_block3_out", "block1_out")],
    ),
    "efficientnet_b0": (
        "EfficientNetB0",
        "efficientnet",
        [("block2b_add", "block1_out")],
    ),
}
# Term order in the shared Distiller.
TERMS = ("lwf", "jac", "at", "at_jac")
METHOD_TERMS = {
    "none": (),
    "lwf": ("lwf",),
    "lwf_jac": ("lwf", "jac"),
    "lwf_at": ("lwf", "at"),
    "lwf_at_jac": ("lwf", "at", "at_jac"),
}

flags.DEFINE_string(
    "teacher_weights",
    "imagenet",
    "'imagenet' (downloaded; needs network), a local .h5/.keras file, or "
    "'none' (random weights, for smoke tests).",
)
flags.DEFINE_integer("teacher_image_size", 224, "Teacher input size.")
flags.DEFINE_integer("student_image_size", 64, "Student input size.")
flags.DEFINE_integer(
    "teacher_classes", 1000, "Source classes of the teacher (its output)."
)
flags.DEFINE_float(
    "teacher_alpha", 1.0, "Width multiplier of a MobileNetV2 teacher."
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


def check_flags():
    methods = experiment.check_choices(
        FLAGS.methods or list(METHODS), METHODS, "methods"
    )
    spcs = experiment.parse_samples_per_class(
        FLAGS.samples_per_class or ["5", "all"]
    )
    seeds = experiment.parse_ints(FLAGS.seeds, "seeds", minimum=0)
    arch = FLAGS.teacher_arch or DEFAULT_TEACHER_ARCH
    weights = FLAGS.teacher_weights
    is_file = weights not in ("imagenet", "none")
    if not is_file and arch not in APPLICATIONS:
        raise app.UsageError(
            f"Expected --teacher_arch in {sorted(APPLICATIONS)}. Received: "
            f"{arch!r}. Or pass a whole saved model as --teacher_weights."
        )
    if is_file and not os.path.exists(weights):
        raise SystemExit(
            f"ERROR: --teacher_weights={weights} does not exist. Pass a "
            ".h5/.keras file of the teacher, 'imagenet' to download the "
            "ImageNet weights (needs network access), or 'none' for random "
            "weights."
        )
    pairs = parse_pairs(arch)
    return methods, spcs, seeds, arch, pairs


def parse_pairs(arch):
    if FLAGS.attention_pairs is None:
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


def build_teacher(arch):
    """The teacher, returning logits, and its preprocessing function."""
    weights = FLAGS.teacher_weights
    size = FLAGS.teacher_image_size
    if weights.endswith(".keras") and os.path.exists(weights):
        teacher = keras.saving.load_model(weights, compile=False)
        return teacher, lambda x: x * 255.0 - 127.5
    class_name, module_name, _ = APPLICATIONS[arch]
    module = getattr(keras.applications, module_name)
    kwargs = dict(
        input_shape=(size, size, 3),
        weights=None,
        classes=FLAGS.teacher_classes,
        classifier_activation=None,
    )
    if arch == "mobilenet_v2":
        kwargs["alpha"] = FLAGS.teacher_alpha
    if weights == "imagenet":
        kwargs.update(weights="imagenet", classes=1000)
    try:
        teacher = getattr(keras.applications, class_name)(**kwargs)
    except Exception as error:  # Download failures have many types.
        if weights != "imagenet":
            raise
        raise SystemExit(
            f"ERROR: could not get the ImageNet weights of {class_name} "
            f"({type(error).__name__}: {error}). This machine may have no "
            "network access: download them elsewhere (e.g. "
            f"`keras.applications.{class_name}(weights='imagenet')."
            "save_weights('teacher.weights.h5')`), copy the file here and "
            "pass --teacher_weights=<file>."
        ) from error
    if weights not in ("imagenet", "none"):
        teacher.load_weights(weights)
    return teacher, lambda x: module.preprocess_input(x * 255.0)


def to_rgb(images):
    if images.shape[-1] == 1:
        return np.repeat(images, 3, axis=-1)
    return images


def pipeline(images, labels, preprocess, mean, std, training, seed):
    """Yields ({"student": xs, "teacher": xt}, y): each at its resolution."""
    t_size = (FLAGS.teacher_image_size,) * 2
    s_size = (FLAGS.student_image_size,) * 2
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
        ds = ds.map(lambda x, y: ((x, y), tf.zeros([2], tf.int64)))

    def views(element, element_seed):
        image, label = element
        if training and FLAGS.augment:
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
        xt = tf.image.resize(image, t_size, antialias=True)
        xs = tf.image.resize(image, s_size, antialias=True)
        xs = (xs - mean) / std
        return {"student": xs, "teacher": preprocess(xt)}, label

    ds = ds.map(views, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def build_student(teacher, data):
    """A VGG-9 backbone with a task head and a teacher-mimicking head."""
    size = FLAGS.student_image_size
    vgg = models.vgg9(
        (size, size, 3), data.num_classes, width=FLAGS.student_width
    )
    backbone = keras.Model(
        vgg.inputs, vgg.get_layer("features").output, name="backbone"
    )
    return keras_jacobian.build_lwf_student(
        backbone, data.num_classes, int(teacher.output_shape[-1])
    )


def build_distiller(teacher, data, pairs):
    size = FLAGS.student_image_size
    student = build_student(teacher, data)
    terms = [
        keras_jacobian.LogitsDistillation(
            FLAGS.activation_loss, temperature=FLAGS.temperature
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
    distiller = keras_jacobian.Distiller(
        teacher,
        student,
        terms,
        distillation_output=lwf.SOURCE_HEAD,
        seed=FLAGS.seed,
    )
    distiller.compile(
        optimizer=keras.optimizers.Adam(FLAGS.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    distiller(
        {
            "student": np.zeros((1, size, size, 3), "float32"),
            "teacher": np.zeros(
                (1, FLAGS.teacher_image_size, FLAGS.teacher_image_size, 3),
                "float32",
            ),
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


def run(output_dir):
    methods, spcs, seeds, arch, pairs = check_flags()
    if not pairs and any("at" in METHOD_TERMS[m] for m in methods):
        raise app.UsageError(
            f"Methods {methods} use attention maps: pass --attention_pairs="
            "teacher_layer:student_layer for this teacher."
        )
    start = time.time()
    strategy = experiment.get_strategy(FLAGS.strategy)
    data = distill.load_data()
    subsets = {
        (spc, seed): distill.subset(data, spc, seed)
        for spc in spcs
        for seed in seeds
    }
    with strategy.scope():
        teacher, preprocess = build_teacher(arch)
    train_rgb = to_rgb(data.train_images)
    mean, std = data_lib.channel_stats(train_rgb)
    test_ds = pipeline(
        to_rgb(data.test_images),
        data.test_labels,
        preprocess,
        mean,
        std,
        False,
        0,
    )
    with strategy.scope():
        distiller, task = build_distiller(teacher, data, pairs)
    inits = {}
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        inits[seed] = build_student(teacher, data).get_weights()
    records = []
    for spc in spcs:
        for seed in seeds:
            images, labels = subsets[spc, seed]
            train = pipeline(
                to_rgb(images), labels, preprocess, mean, std, True, seed
            ).repeat()
            steps = experiment.steps_per_epoch(
                len(labels), FLAGS.batch_size, FLAGS.min_steps_per_epoch
            )
            for method in methods:
                t0 = time.time()
                distiller.student.set_weights(inits[seed])
                experiment.reset_optimizer(distiller.optimizer)
                weights = term_weights(method, bool(pairs))
                for variable, value in zip(distiller.term_weights, weights):
                    variable.assign(value)
                distiller.student_loss_weight_variable.assign(
                    FLAGS.student_loss_weight
                )
                run_name = f"{method}_spc{experiment.spc_label(spc)}_s{seed}"
                keras.utils.set_random_seed(seed)
                experiment.train(
                    distiller,
                    train,
                    epochs=FLAGS.student_epochs,
                    steps_per_epoch=steps,
                    run_name=run_name,
                    learning_rate=FLAGS.learning_rate,
                    schedule=FLAGS.lr_schedule,
                    tensorboard_dir=FLAGS.tensorboard_dir,
                    backup_dir=FLAGS.backup_dir,
                    verbose=FLAGS.verbose,
                )
                acc = experiment.accuracy(task, test_ds.map(_student_view))
                records.append(
                    {
                        "method": method,
                        "samples_per_class": experiment.spc_label(spc),
                        "seed": seed,
                        "accuracy": acc,
                    }
                )
                print(
                    f"{run_name}: test accuracy {acc:.2f}% "
                    f"({time.time() - t0:.1f}s)",
                    flush=True,
                )
    elapsed = time.time() - start
    header = (
        f"Test accuracy (%) of the VGG-9 student (task head) on {data.name}, "
        f"teacher {arch} ({FLAGS.teacher_weights}), mean ± std over seeds "
        f"{seeds}; {elapsed:.0f} s."
    )
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
            "flags": experiment.flag_values(
                common_flags, sys.modules[__name__]
            ),
        },
        title=f"Transfer to {data.name}",
        labels=LABELS,
    )
    return summary


def _student_view(x, y):
    return x["student"], y


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    run(FLAGS.output_dir or DEFAULT_OUTPUT_DIR)


if __name__ == "__main__":
    app.run(main)
