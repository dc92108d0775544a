"""Teachers of examples/transfer.py: pretrained here, saved, or applications.

`--teacher_weights=pretrain` trains a VGG-9 on `--source_classes` of the
data set (the other classes form the target task); a saved `.keras` model
needs `--teacher_preprocessing`; `imagenet`, a `.h5` weights file or `none`
build a `keras.applications` network (`--teacher_arch`).
"""

import dataclasses
import json
import os
import warnings
import zipfile

import common_flags  # noqa: F401  (first: quiet TensorFlow start-up)
import experiment
import keras
import numpy as np
import reporting
import tensorflow as tf
from absl import app
from absl import flags

from keras_jacobian import saving
from keras_jacobian.experiments import data as data_lib
from keras_jacobian.experiments import models

FLAGS = flags.FLAGS

PREPROCESSING = (
    "unit",
    "standardize",
    "symmetric",
    "centered255",
    "application",
)
DEFAULT_SOURCE_CLASSES = ("0", "1", "2", "3", "4")
SOURCE_TASKS = ("classes", "transforms")
DEFAULT_SOURCE_TASK = "classes"
# The 8 symmetries of the square: (quarter turns anticlockwise, mirrored
# left-right first).
TRANSFORMS = tuple((turns, mirror) for mirror in (0, 1) for turns in range(4))
TEACHER_LEARNING_RATE = 3e-3
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

flags.DEFINE_string(
    "teacher_weights",
    "pretrain",
    "'pretrain' (train a VGG-9 on --source_classes of --dataset, offline, "
    "saved to <output_dir>/teacher_<data>_<classes>.keras and reused), "
    "'imagenet' "
    "(downloaded; needs network), a local .h5/.keras file, or 'none' "
    "(random weights, for smoke tests).",
)
flags.DEFINE_list(
    "source_classes",
    None,
    "Class ids of --dataset that form the source task; the other classes "
    "form the target task, relabelled 0..k-1 (default: 0,1,2,3,4 with "
    "--teacher_weights=pretrain, else none: every class is a target "
    "class). Pass them with a saved teacher trained on those classes.",
)
flags.DEFINE_enum(
    "source_task",
    DEFAULT_SOURCE_TASK,
    list(SOURCE_TASKS),
    "The task a --teacher_weights=pretrain teacher learns: 'classes' "
    "(the --source_classes as they are) or 'transforms' (each source "
    "class under each of the 8 symmetries of the square, rotations by "
    "multiples of 90 degrees of the image and of its mirror image, is a "
    "class of its own: 40 classes and 8 times the images for digits "
    "0-4). The teacher learns it at --teacher_image_size.",
)
flags.DEFINE_enum(
    "teacher_preprocessing",
    "auto",
    list(("auto",) + tuple(PREPROCESSING)),
    "How the teacher's inputs are made from images in [0, 1]: 'unit' "
    "(unchanged), 'standardize' (per-channel mean and std of the target "
    "training images), 'symmetric' (2x - 1), 'centered255' (255x - 127.5), "
    "'application' (keras.applications' preprocess_input of "
    "--teacher_arch). 'auto': 'application' for keras.applications "
    "teachers, 'unit' for a pretrained one (trained on [0, 1] images); a "
    "saved teacher file needs an explicit value.",
)
flags.DEFINE_integer(
    "teacher_image_size",
    None,
    "Teacher input size (default: the input size of a saved or pretrained "
    "teacher, else 224).",
)
flags.DEFINE_integer(
    "teacher_classes", 1000, "Source classes of the teacher (its output)."
)
flags.DEFINE_float(
    "teacher_alpha", 1.0, "Width multiplier of a MobileNetV2 teacher."
)


def source_classes():
    """The source-task class ids (empty: every class is a target class)."""
    values = FLAGS.source_classes
    if values is None:
        values = (
            DEFAULT_SOURCE_CLASSES
            if FLAGS.teacher_weights == "pretrain"
            else ()
        )
    return (
        experiment.parse_ints(values, "source_classes", minimum=0)
        if (values)
        else []
    )


def _subset_classes(data, classes, name):
    """An ImageDataset of the given classes of `data`, relabelled 0..k-1."""
    lookup = {c: i for i, c in enumerate(classes)}

    def select(images, labels):
        keep = np.isin(labels, classes)
        relabelled = np.array(
            [lookup[int(c)] for c in labels[keep]], dtype="int32"
        )
        return images[keep], relabelled

    train = select(data.train_images, data.train_labels)
    test = select(data.test_images, data.test_labels)
    return data_lib.ImageDataset(
        name=name,
        train_images=train[0],
        train_labels=train[1],
        test_images=test[0],
        test_labels=test[1],
        num_classes=len(classes),
        class_names=tuple(data.class_names[c] for c in classes),
    )


def split_tasks(data):
    """(source, target) data sets; source is `None` without source classes."""
    classes = source_classes()
    if not classes:
        return None, data
    unknown = [c for c in classes if c >= data.num_classes]
    target = [c for c in range(data.num_classes) if c not in classes]
    if unknown or not target:
        raise app.UsageError(
            f"Expected --source_classes among 0..{data.num_classes - 1}, "
            f"leaving at least one target class. Received: {classes}."
        )
    label = ",".join(map(str, classes))
    source = _subset_classes(data, classes, f"{data.name}[{label}]")
    target_name = f"{data.name}[{','.join(map(str, target))}]"
    return source, _subset_classes(data, target, target_name)


def transform_images(images, turns, mirror):
    """`images` (N, H, W, C) mirrored left-right, then turned anticlockwise.

    Args:
        images: Square images, shape `(N, H, W, C)`.
        turns: Quarter turns anticlockwise, 0 to 3.
        mirror: Whether to mirror left-right before turning.

    Returns:
        The transformed images, same shape.
    """
    if mirror:
        images = images[:, :, ::-1]
    return np.ascontiguousarray(np.rot90(images, turns, axes=(1, 2)))


def transformed_task(source):
    """The source task with each class under each of `TRANSFORMS`.

    Class `c` under transform `t` (an index into `TRANSFORMS`) gets label
    `c * len(TRANSFORMS) + t`; train and test images are all transformed.
    """
    if source.input_shape[0] != source.input_shape[1]:
        raise app.UsageError(
            "Expected square images with --source_task=transforms (they are "
            "turned by 90 degrees). Received: images of shape "
            f"{source.input_shape}. Pass --image_size=N or "
            "--source_task=classes."
        )
    n = len(TRANSFORMS)

    def expand(images, labels):
        out = [transform_images(images, *t) for t in TRANSFORMS]
        new = [labels * n + i for i in range(n)]
        return np.concatenate(out), np.concatenate(new).astype("int32")

    train = expand(source.train_images, source.train_labels)
    test = expand(source.test_images, source.test_labels)
    names = tuple(
        f"{name}/rot{90 * turns}{'m' if mirror else ''}"
        for name in source.class_names
        for turns, mirror in TRANSFORMS
    )
    return data_lib.ImageDataset(
        name=f"{source.name}x{n}",
        train_images=train[0],
        train_labels=train[1],
        test_images=test[0],
        test_labels=test[1],
        num_classes=source.num_classes * n,
        class_names=names,
    )


def resize_images(images, size):
    """Images resized to `size` x `size` as the transfer pipeline does."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    return tf.image.resize(images, (size, size), antialias=True).numpy()


def source_task(source, size=None):
    """The task a pretrained teacher learns: `--source_task`, at `size`."""
    if FLAGS.source_task == "transforms":
        source = transformed_task(source)
    if size is None or size == source.input_shape[0]:
        return source
    return dataclasses.replace(
        source,
        train_images=resize_images(source.train_images, size),
        test_images=resize_images(source.test_images, size),
        mean=None,
        std=None,
    )


def pretrained_teacher_path(source, task, output_dir):
    """`--teacher_path`, or a file name that says what the teacher learnt."""
    if FLAGS.teacher_path:
        return FLAGS.teacher_path
    classes = "_".join(map(str, source_classes()))
    name = f"teacher_{source.name.split('[')[0]}_{classes}"
    if FLAGS.source_task != "classes":
        name += f"_{FLAGS.source_task}"
    if task.input_shape != source.input_shape:
        name += f"_{task.input_shape[0]}px"
    return os.path.join(output_dir, name + ".keras")


def pretrain_teacher(source, output_dir):
    """Loads, or trains and saves, a VGG-9 teacher of the source task.

    The task is `--source_task` of `source` at `--teacher_image_size`
    (default: the images' size). The teacher sees images in [0, 1]
    (`--teacher_preprocessing=unit`), augmented with random crops, for
    `--teacher_epochs` epochs (Adam 3e-3, cosine schedule). Returns the
    teacher, its source-task test accuracy and its file.
    """
    task = source_task(source, FLAGS.teacher_image_size)
    path = pretrained_teacher_path(source, task, output_dir)
    test = data_lib.make_pipeline(
        task.test_images,
        task.test_labels,
        experiment.eval_batch_size(FLAGS.batch_size),
        training=False,
    )
    settings = _teacher_settings(task)
    if os.path.exists(path):
        _check_settings(path, settings)
        teacher = load_teacher_file(
            path, f"Delete {path} (and its .json) to train a new one"
        )
        found = (tuple(teacher.input_shape[1:]), teacher.output_shape[-1])
        want = (task.input_shape, task.num_classes)
        if found != want:
            raise app.UsageError(
                f"Expected the teacher {path} to take images of shape "
                f"{want[0]} and give {want[1]} classes "
                f"(--source_task={FLAGS.source_task}, "
                f"--teacher_image_size={FLAGS.teacher_image_size}). "
                f"Received: a teacher of input shape {found[0]} and "
                f"{found[1]} classes. Delete the file or pass another "
                "--teacher_path."
            )
        return teacher, experiment.accuracy(teacher, test), path
    print(
        f"No teacher at {path}: pretraining a VGG-9 on {task.name} "
        f"({task.num_classes} classes) for {FLAGS.teacher_epochs} epochs, "
        "saved there.",
        flush=True,
    )
    keras.utils.set_random_seed(FLAGS.seed)
    teacher = models.vgg9(
        task.input_shape,
        task.num_classes,
        width=FLAGS.teacher_width,
        name="teacher",
    )
    teacher.compile(
        optimizer=keras.optimizers.Adam(TEACHER_LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    train = data_lib.make_pipeline(
        task.train_images,
        task.train_labels,
        FLAGS.batch_size,
        training=True,
        augment=True,
        flip=FLAGS.flip,
        crop_padding=max(1, task.input_shape[0] // 8),
        seed=FLAGS.seed,
    ).repeat()
    experiment.train(
        teacher,
        train,
        epochs=FLAGS.teacher_epochs,
        steps_per_epoch=experiment.steps_per_epoch(
            len(task.train_labels),
            FLAGS.batch_size,
            FLAGS.min_steps_per_epoch,
        ),
        run_name="teacher",
        learning_rate=TEACHER_LEARNING_RATE,
        schedule="cosine",
        tensorboard_dir=FLAGS.tensorboard_dir,
        backup_dir=None,
        verbose=FLAGS.verbose,
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # The settings first: a teacher file always has the settings it was
    # trained with beside it (a kill in between leaves settings alone, and
    # the next run trains again).
    reporting.atomic_write(
        path + ".json", json.dumps(settings, indent=1, sort_keys=True)
    )
    saving.replace_atomically(path, teacher.save)
    return teacher, experiment.accuracy(teacher, test), path


def _teacher_settings(task):
    """What a pretrained teacher depends on, as saved beside its file."""
    return {
        "source_task": FLAGS.source_task,
        "source_classes": list(source_classes()),
        "dataset": FLAGS.dataset,
        "input_shape": list(task.input_shape),
        "num_classes": int(task.num_classes),
        "teacher_width": FLAGS.teacher_width,
        "teacher_epochs": FLAGS.teacher_epochs,
        "seed": FLAGS.seed,
        "batch_size": FLAGS.batch_size,
        "min_steps_per_epoch": FLAGS.min_steps_per_epoch,
        "flip": FLAGS.flip,
    }


def _check_settings(path, settings):
    """Refuses to reuse a teacher trained with other settings.

    A teacher file without its settings (saved by hand, or by an older
    version) is reused as it is.
    """
    if not os.path.exists(path + ".json"):
        return
    with open(path + ".json") as f:
        saved = json.load(f)
    changed = {
        k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v
    }
    if changed:
        listed = ", ".join(
            f"{k}: {old!r} there, {new!r} now"
            for k, (old, new) in sorted(changed.items())
        )
        raise app.UsageError(
            f"Expected the pretrained teacher {path} to have been trained "
            f"with this run's settings. Received a teacher trained with "
            f"other ones ({listed}). Delete {path} (and its .json) to "
            "train a new one, or pass another --teacher_path or --output_dir."
        )


def load_teacher_file(path, fix):
    """A saved `.keras` teacher; a file that cannot be read stops the run.

    Keras reports a truncated or corrupt file as "File not found"; the file
    is there, so say what is wrong with it and how to fix it.
    """
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Corrupt archives fail in many ways.
        kind = "not a zip archive" if not zipfile.is_zipfile(path) else None
        reason = kind or f"{type(error).__name__}: {error}".splitlines()[0]
        raise app.UsageError(
            f"Expected {path} to be a model saved by Keras (`.keras`). "
            f"Received a file that exists but cannot be read ({reason}; "
            f"{os.path.getsize(path)} bytes): truncated by an interrupted "
            f"copy or save, or corrupt. {fix}, or pass another "
            "--teacher_path / --teacher_weights."
        ) from error
    if not isinstance(model, keras.Model):
        raise app.UsageError(
            f"Expected {path} to hold a whole Keras model (a keras.Model "
            "saved with model.save). Received a file holding a "
            f"{type(model).__name__}. Save the teacher model itself, or "
            "pass another --teacher_path / --teacher_weights."
        )
    return model


def preprocessing(name, arch, mean, std):
    """The function making the teacher's inputs from images in [0, 1].

    Functions, not lambdas: AutoGraph, which converts the `tf.data` map
    functions, cannot tell apart several lambdas on nearby lines and may
    convert the wrong one.
    """
    if name == "application":
        if arch not in APPLICATIONS:
            raise app.UsageError(
                "Expected --teacher_arch among keras.applications teachers "
                f"{sorted(APPLICATIONS)} with --teacher_preprocessing="
                f"application. Received: {arch!r}."
            )
        module = getattr(keras.applications, APPLICATIONS[arch][1])

    @tf.autograph.experimental.do_not_convert
    def preprocess(x):
        if name == "unit":
            return x
        if name == "standardize":
            return (x - mean) / std
        if name == "symmetric":
            return 2.0 * x - 1.0
        if name == "centered255":
            return x * 255.0 - 127.5
        return module.preprocess_input(x * 255.0)

    return preprocess


def build_teacher(arch):
    """A keras.applications teacher (or a saved one) returning logits."""
    weights = FLAGS.teacher_weights
    if weights.endswith(".keras") and os.path.exists(weights):
        return load_teacher_file(weights, "Save the teacher again")
    size = FLAGS.teacher_image_size or 224
    class_name, _, _ = APPLICATIONS[arch]
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
        try:
            with warnings.catch_warnings(record=True) as skipped:
                # Keras warns of each part it skips: raised below as one
                # error, also when it then loads the rest without one.
                warnings.simplefilter("always")
                teacher.load_weights(weights)
            skipped = [
                str(w.message) for w in skipped if "Skipping" in str(w.message)
            ]
            if skipped:
                raise ValueError(
                    f"{len(skipped)} part(s) skipped. {skipped[0]}"
                )
        except Exception as error:  # Mismatches fail in many ways.
            lines = [x for x in str(error).splitlines() if x.strip()]
            reason = " ".join(lines[:2])[:300]
            given = "" if FLAGS.teacher_arch else ", the default"
            raise app.UsageError(
                f"Expected --teacher_weights={weights} to hold the weights "
                f"of a {class_name} of input {kwargs['input_shape']} and "
                f"{kwargs['classes']} classes (--teacher_arch={arch}{given}, "
                "--teacher_image_size, --teacher_classes"
                + (", --teacher_alpha" if arch == "mobilenet_v2" else "")
                + f"). Received weights that do not fit "
                f"({type(error).__name__}: {reason}). Pass "
                "the settings the weights were saved with, or save the "
                "whole model (model.save('teacher.keras')) and pass that."
            ) from error
    return teacher


def teacher_description(arch, pretrained_path):
    """How the results table names the teacher."""
    weights = FLAGS.teacher_weights
    if weights == "pretrain":
        task = (
            " under the 8 symmetries of the square"
            if FLAGS.source_task == "transforms"
            else ""
        )
        return (
            f"VGG-9 pretrained on classes {source_classes()}{task} "
            f"({pretrained_path})"
        )
    if weights.endswith(".keras"):
        return f"saved model {os.path.basename(weights)}"
    return f"{arch} ({weights})"
