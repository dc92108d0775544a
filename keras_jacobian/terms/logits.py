"""Activation (logit) matching: Hinton's knowledge distillation or MSE."""

import keras
import tensorflow as tf

from keras_jacobian import validation
from keras_jacobian.terms.base import OUTPUT
from keras_jacobian.terms.base import DistillationTerm

LOSSES = ("kl", "mse")
# keras.losses names of the same losses: here they keep their full meaning
# (the KL form with the softmax at temperature T and the T^2 factor).
LOSS_ALIASES = {"kl_divergence": "kl", "mean_squared_error": "mse"}


def kd_loss(teacher_logits, student_logits, temperature):
    """Hinton's KD loss per example.

    `T^2 * KL(softmax(t / T) || softmax(s / T))`, summed over classes.

    Args:
        teacher_logits: float tensor `(batch, classes)`.
        student_logits: float tensor `(batch, classes)`.
        temperature: softening temperature `T > 0`.

    Returns:
        Float32 tensor `(batch,)`.
    """
    t = tf.cast(teacher_logits, "float32") / temperature
    s = tf.cast(student_logits, "float32") / temperature
    log_p = tf.nn.log_softmax(t, axis=-1)
    log_q = tf.nn.log_softmax(s, axis=-1)
    kl = tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)
    return kl * (temperature**2)


def squared_logit_error(teacher_logits, student_logits):
    """`||t - s||^2` per example, summed over classes, float32 `(batch,)`."""
    diff = tf.cast(teacher_logits, "float32") - tf.cast(
        student_logits, "float32"
    )
    return tf.reduce_sum(tf.square(diff), axis=-1)


def mean_over_positions(values):
    """Per-position losses `(batch, *positions)` averaged to `(batch,)`.

    Outputs with spatial axes (per-pixel logits of a segmentation
    network) give one loss per position; their mean is the example's
    loss, so that its scale does not depend on the resolution (as for
    Keras' per-pixel cross-entropy).
    """
    if values.shape.rank == 1:
        return values
    return tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))


@keras.saving.register_keras_serializable(package="keras_jacobian")
class LogitsDistillation(DistillationTerm):
    """Matches the student's logits to the teacher's.

    With `loss="kl"` this is Hinton et al.'s knowledge distillation: both
    networks' logits are softened by a softmax at temperature `T`, the loss
    is `KL(teacher || student)`, and it is scaled by `T^2` so that its
    gradient keeps the same magnitude as `T` changes. With `loss="mse"` it
    is the squared error between raw logits, summed over classes: the
    "activation matching" of Srinivas & Fleuret (2018), whose first
    proposition links it to Jacobian matching.

    Both are averaged over the batch by the `Distiller`. For outputs with
    spatial axes, `(batch, H, W, classes)` (segmentation), the loss is
    computed at every position (pixel) and averaged over positions.

    Args:
        loss: `"kl"` (default) or `"mse"`; Keras' names
            `"kl_divergence"` and `"mean_squared_error"` mean the same
            (with the softmax and `T^2`, unlike Keras' string form).
        temperature: softening temperature for `"kl"`; ignored by `"mse"`.
        name: metric name prefix, default `"logits_distillation"`.

    Example:

    ```python
    distiller = keras_jacobian.Distiller(
        teacher, student, [keras_jacobian.LogitsDistillation(temperature=4)]
    )
    ```
    """

    reads_logits = True

    def __init__(self, loss="kl", temperature=4.0, name=None):
        super().__init__(name=name)
        loss = LOSS_ALIASES.get(loss, loss)
        if loss not in LOSSES:
            raise ValueError(
                f"`loss` must be one of {LOSSES} (or the Keras names "
                f"{tuple(LOSS_ALIASES)}). Received: loss={loss!r}"
            )
        self.loss = loss
        self.temperature = validation.check_number(
            temperature, "temperature", strict=True
        )

    def build(self, teacher_shapes, student_shapes):
        t, s = teacher_shapes[OUTPUT], student_shapes[OUTPUT]
        if t[-1] != s[-1]:
            raise ValueError(
                "LogitsDistillation compares teacher and student outputs "
                "class by class, so they must have the same size. Received: "
                f"teacher output {t}, student output {s}. For transfer "
                "between tasks, give the student a head that mimics the "
                "teacher (see `keras_jacobian.transfer`)."
            )

    def teacher_targets(self, ctx):
        return {"logits": ctx.outputs[OUTPUT]}

    def per_example_loss(self, targets, ctx):
        student = ctx.outputs[OUTPUT]
        if self.loss == "kl":
            values = kd_loss(targets["logits"], student, self.temperature)
        else:
            values = squared_logit_error(targets["logits"], student)
        return mean_over_positions(values)

    def get_config(self):
        config = super().get_config()
        config.update({"loss": self.loss, "temperature": self.temperature})
        return config
