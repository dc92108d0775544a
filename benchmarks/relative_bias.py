r"""The bias of `normalize="teacher"` against the batch size and classes.

Under `normalize="teacher"` the estimators divide an estimate of
`||J_T - J_S||_F^2` by the teacher's own estimate of its mean squared row
norm over the batch: a ratio of two random quantities, whose mean is not
the ratio of the means. This measures the mean over `--draws` batches of
the library's value (`Distiller.evaluate`, the term's log) divided by the
exact value from plain-tape Jacobians (NumPy), for small dense tanh nets
(`D` inputs, `K` classes), per estimator and batch size:

  python benchmarks/relative_bias.py --draws=500

It prints one Markdown row per case.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __name__ == "__main__":
    sys.path.insert(
        0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import keras_jacobian as kj  # noqa: E402

flags.DEFINE_integer("draws", 500, "Batches averaged per case.")
flags.DEFINE_list(
    "cases",
    [
        "1:6:jvp:1",
        "1:6:jvp:4",
        "1:6:jvp:16",
        "2:6:vjp:1",
        "2:6:vjp:4",
        "10:64:vjp:1",
        "10:64:vjp:4",
        "10:64:vjp:16",
        "10:64:jvp:4",
        "10:64:jvp:16",
    ],
    "Cases K:D:estimator:batch.",
)
FLAGS = flags.FLAGS


def dense(width, classes, inputs, seed, name):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(width, activation="tanh"),
            keras.layers.Dense(classes),
        ],
        name=name,
    )


def jacobians(model, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = model(x, training=False)
    return tape.batch_jacobian(y, x).numpy()


def exact(teacher, student, x):
    jt, js = jacobians(teacher, x), jacobians(student, x)
    scale = np.mean(np.sum(jt**2, axis=(1, 2))) / jt.shape[1]
    return float(np.mean(np.sum((jt - js) ** 2, axis=(1, 2))) / scale)


def library(teacher, student, x, estimator, draws):
    term = kj.JacobianMatching("all", estimator=estimator, num_projections=1)
    distiller = kj.Distiller(teacher, student, [term], seed=0)
    distiller.compile()
    logs = distiller.evaluate(
        np.concatenate([x] * draws),
        batch_size=len(x),
        verbose=0,
        return_dict=True,
    )
    return logs["jacobian_matching_loss"]


def main(argv):
    del argv
    print("| K | D | estimator | batch | mean / exact |")
    print("|---:|---:|---|---:|---:|")
    rng = np.random.default_rng(0)
    for case in FLAGS.cases:
        classes, inputs, estimator, batch = case.split(":")
        classes, inputs, batch = int(classes), int(inputs), int(batch)
        teacher = dense(8, classes, inputs, 1, "t")
        student = dense(4, classes, inputs, 2, "s")
        x = rng.normal(size=(batch, inputs)).astype("float32")
        ratio = library(teacher, student, x, estimator, FLAGS.draws) / exact(
            teacher, student, x
        )
        print(
            f"| {classes} | {inputs} | {estimator} | {batch} | {ratio:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
