r"""Input Jacobians of keras.applications students in training mode.

A BatchNormalization network at initialisation, in training mode,
normalises each layer by the statistics of the batch: at 32x32 inputs the
last stages have 1x1 maps, so with a few examples each channel is
normalised over a few values, and the input Jacobian grows by orders of
magnitude. This prints, per family and batch size, the mean over examples
of the squared Frobenius norm of the input Jacobian of the logits, from a
plain `tf.GradientTape.batch_jacobian` (no library code), in training
and in inference mode, next to the tiny tanh teacher of
`benchmarks/model_zoo.py`:

  python benchmarks/training_mode_jacobians.py \
      --families=EfficientNetB0,MobileNetV2,ResNet50V2 --batches=2,8,32
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import model_zoo  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

flags.DEFINE_list("batches", ["2", "8", "32"], "Batch sizes.")
flags.DEFINE_integer("seed", 0, "Seed of the Gaussian inputs.")


def squared_norm(model, x, training):
    """Mean over the batch of ||d logits / d x||_F^2."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = model(x, training=training)
    jacobian = tape.batch_jacobian(out, x)
    flat = tf.reshape(jacobian, (x.shape[0], -1))
    return float(tf.reduce_mean(tf.reduce_sum(flat**2, axis=-1)))


def main(argv):
    del argv
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    teacher = model_zoo.teacher_model()
    print("| family | batch | training mode | inference mode | teacher |")
    print("|---|---:|---:|---:|---:|")
    for family in flags.FLAGS.families:
        student = model_zoo.student_model(family)
        rng = np.random.default_rng(flags.FLAGS.seed)
        for batch in map(int, flags.FLAGS.batches):
            x = rng.normal(size=(batch,) + model_zoo.INPUT_SHAPE)
            x = x.astype("float32")
            print(
                f"| {family} | {batch} "
                f"| {squared_norm(student, x, True):.3g} "
                f"| {squared_norm(student, x, False):.3g} "
                f"| {squared_norm(teacher, x, False):.3g} |",
                flush=True,
            )


if __name__ == "__main__":
    app.run(main)
