"""Flags shared by the example scripts.

Every script imports this module, so that a flag used by several scripts is
defined once per process (absl refuses a second definition of a name).
Flags whose default differs from one script to another default to `None`
here; each script documents the value it uses then.
"""

from absl import flags

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
    True,
    "Random crops (padding of 1/8 of the image size; flips with --flip) of "
    "the training images. With few samples per class, distillation on "
    "augmented images is where the teacher's knowledge comes through.",
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
    "student_loss_weight", 1.0, "Weight of the cross-entropy on labels."
)
flags.DEFINE_float(
    "activation_weight", 1.0, "Weight of the activation (logit) matching."
)
flags.DEFINE_float("jacobian_weight", 1.0, "Weight of the Jacobian matching.")
flags.DEFINE_float("temperature", 4.0, "Softmax temperature of KD (kl).")
flags.DEFINE_enum(
    "activation_loss", "kl", ["kl", "mse"], "Activation matching loss."
)
flags.DEFINE_enum(
    "jacobian_target",
    "teacher_top1",
    ["teacher_top1", "label", "top_k", "all", "random"],
    "Which Jacobian rows are matched.",
)
flags.DEFINE_integer("jacobian_k", None, "k of --jacobian_target=top_k.")
flags.DEFINE_bool(
    "jacobian_normalize", True, "L2-normalise Jacobian rows per example."
)

# Training.
flags.DEFINE_integer("teacher_epochs", 20, "Teacher training epochs.")
flags.DEFINE_integer("student_epochs", 25, "Student training epochs.")
flags.DEFINE_integer(
    "min_steps_per_epoch",
    20,
    "Training steps per epoch at least (small training sets are repeated), "
    "so that runs with few samples per class still take enough steps.",
)
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_float("learning_rate", 3e-3, "Adam learning rate.")
flags.DEFINE_enum(
    "lr_schedule", "cosine", ["constant", "cosine"], "Learning-rate schedule."
)
flags.DEFINE_enum(
    "strategy",
    "default",
    ["default", "mirrored", "one_device", "multi_worker", "tpu"],
    "tf.distribute strategy.",
)
flags.DEFINE_integer("seed", 0, "Seed of the teacher and of data splits.")
flags.DEFINE_list(
    "seeds", ["0", "1"], "Seeds of the student runs (subset and init)."
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
    "keras.callbacks.BackupAndRestore directory, one subdirectory per run: "
    "an interrupted run resumes from its last epoch.",
)
flags.DEFINE_integer("verbose", 0, "Keras fit verbosity (0, 1 or 2).")

FLAGS = flags.FLAGS
