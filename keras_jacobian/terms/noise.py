"""Distillation under Gaussian input noise: Jacobian matching without
double backprop."""

import keras
import tensorflow as tf

from keras_jacobian import steps
from keras_jacobian import validation
from keras_jacobian.terms.base import OUTPUT
from keras_jacobian.terms.base import DistillationTerm
from keras_jacobian.terms.logits import mean_over_positions
from keras_jacobian.terms.logits import squared_logit_error


@keras.saving.register_keras_serializable(package="keras_jacobian")
class NoiseDistillation(DistillationTerm):
    """Squared-error logit matching on inputs with Gaussian noise.

    For each example, draws `num_samples` noise vectors
    `xi ~ N(0, stddev^2 I)`, shared by teacher and student, and returns the
    mean over draws of `||T(x + xi) - S(x + xi)||^2`. By Srinivas & Fleuret
    (2018), proposition 1, its expectation is, to first order,
    `||T(x) - S(x)||^2 + stddev^2 * ||J_T(x) - J_S(x)||_F^2`: logit matching
    plus unnormalised Jacobian matching over all classes, without any
    second derivative. The cost is one extra forward and backward pass of
    each network on `num_samples` noisy copies of the batch.

    For outputs with spatial axes `(batch, H, W, classes)` the squared
    error is averaged over positions (pixels), as in `LogitsDistillation`;
    the expansion then holds divided by the number of positions, with
    the Frobenius norm over every output value.

    Not cacheable: the noise is drawn anew every step.

    Args:
        stddev: standard deviation `sigma` of the input noise, > 0.
        num_samples: noise draws per example, >= 1.
        name: metric name prefix, default `"noise_distillation"`.
    """

    cacheable = False
    reads_logits = True
    perturbs_inputs = True

    def __init__(self, stddev, num_samples=1, name=None):
        super().__init__(name=name)
        stddev = validation.check_number(stddev, "stddev", strict=True)
        num_samples = validation.check_count(num_samples, "num_samples")
        self.stddev = float(stddev)
        self.num_samples = num_samples

    def build(self, teacher_shapes, student_shapes):
        t, s = teacher_shapes["input"], student_shapes["input"]
        if tuple(t[1:]) != tuple(s[1:]):
            raise ValueError(
                "NoiseDistillation adds the same noise to one input seen "
                "by both networks, so their input shapes must agree. "
                f"Received: teacher {t}, student {s}."
            )
        if teacher_shapes[OUTPUT][-1] != student_shapes[OUTPUT][-1]:
            raise ValueError(
                "NoiseDistillation compares outputs class by class. "
                f"Received: teacher {teacher_shapes[OUTPUT]}, student "
                f"{student_shapes[OUTPUT]}."
            )

    def teacher_targets(self, ctx):
        x = ctx.inputs
        multiples = [self.num_samples] + [1] * (x.shape.rank - 1)
        copies = tf.tile(x, multiples)
        shape = tf.shape(x)
        # Sample-major, as `copies`: (num_samples, batch, ...) flattened.
        noise = steps.draw_for_replica(
            lambda n: keras.random.normal(
                tf.concat([[self.num_samples, n], shape[1:]], 0),
                stddev=self.stddev,
                seed=ctx.seed,
            ),
            shape[0],
            axis=1,
        )
        noise = tf.reshape(noise, tf.shape(copies))
        noisy = copies + tf.cast(noise, x.dtype)
        logits = ctx.forward(noisy)[OUTPUT]
        return {"noisy_inputs": noisy, "noisy_logits": logits}

    def per_example_loss(self, targets, ctx):
        student = ctx.forward(targets["noisy_inputs"])[OUTPUT]
        errors = mean_over_positions(
            squared_logit_error(targets["noisy_logits"], student)
        )
        errors = tf.reshape(errors, [self.num_samples, -1])
        return tf.reduce_mean(errors, axis=0)

    def get_config(self):
        config = super().get_config()
        config.update({"stddev": self.stddev, "num_samples": self.num_samples})
        return config
