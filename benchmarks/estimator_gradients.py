r"""Do the whole-Jacobian estimators give the right weight gradient?

An estimator can get the loss right and its gradient wrong. For each
estimator of `JacobianMatching(target="all", normalize=False)`, one
direction, this compares the gradient with respect to the student's
weights with that of `"jvp"` (forward mode: the exact `J v`,
differentiated by reverse-over-forward), along the same input
directions (`"vjp"` draws output projections instead, and is exact
autodiff like `"jvp"`), on one batch of 10 digits (the study's teacher, a VGG-4
student at initialisation, ReLU and max pooling) and on the same batch
replaced by Gaussian noise (no flat regions, so no ties in max pooling).
Command (under a minute on 2 cores):

  python benchmarks/estimator_gradients.py

It prints, per case and estimator: the loss relative to jvp's, and the
cosine and relative distance between the gradients.
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
from keras_jacobian.experiments import models  # noqa: E402
from keras_jacobian.experiments.data import datasets  # noqa: E402

flags.DEFINE_string(
    "teacher", "/tmp/whole/teacher_digits.keras", "Saved digits teacher."
)
FLAGS = flags.FLAGS
ESTIMATORS = ("forward_difference", "finite_difference", "jvp")


def weight_gradient(teacher, student, x, estimator, seed=3):
    """The term's value and its gradient (flat) for fixed directions."""
    term = kj.JacobianMatching(
        "all", estimator=estimator, normalize=False, num_projections=1
    )
    distiller = kj.Distiller(
        teacher, student, [term], seed=seed, supervised_loss_weight=1.0
    )
    tctx = distiller._context(
        distiller._teacher_forward, x, None, distiller.teacher_input_shape
    )
    with tf.GradientTape() as tape:
        sctx = distiller._context(
            lambda z: distiller._student_forward(z, True),
            x,
            None,
            distiller.student_input_shape,
        )
        loss = tf.reduce_mean(
            term.per_example_loss(term.teacher_targets(tctx), sctx)
        )
    variables = student.trainable_variables
    grads = tape.gradient(loss, variables)
    flat = [
        np.zeros(v.shape).ravel() if g is None else g.numpy().ravel()
        for g, v in zip(grads, variables)
    ]
    return float(loss), np.concatenate(flat)


def main(argv):
    del argv
    data = datasets.load_dataset("digits", validation_fraction=0.2)
    teacher = keras.saving.load_model(FLAGS.teacher)
    images, _ = data.split("train")
    digits = ((images[:10] - data.mean) / data.std).astype("float32")
    noise = np.random.default_rng(0).normal(size=digits.shape)
    keras.utils.set_random_seed(0)
    student = models.vgg4(data.input_shape, 10, width=16, batch_norm=False)
    print(
        "| inputs | estimator | loss / jvp's | gradient cosine | "
        "relative gradient error |"
    )
    print("|---|---|---:|---:|---:|")
    for name, x in (("digits", digits), ("Gaussian", noise.astype("float32"))):
        x = tf.constant(x)
        ref_loss, ref = weight_gradient(teacher, student, x, "jvp")
        for estimator in ESTIMATORS:
            loss, grad = weight_gradient(teacher, student, x, estimator)
            cosine = grad @ ref / np.linalg.norm(grad) / np.linalg.norm(ref)
            error = np.linalg.norm(grad - ref) / np.linalg.norm(ref)
            print(
                f"| {name} | {estimator} | {loss / ref_loss:.4f} | "
                f"{cosine:+.3f} | {error:.3g} |"
            )


if __name__ == "__main__":
    app.run(main)
