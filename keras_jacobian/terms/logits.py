"""Logit matching: Keras' losses, Hinton's KD, squared logits."""

import warnings

import keras
import tensorflow as tf

from keras_jacobian import validation
from keras_jacobian.terms import keras_losses
from keras_jacobian.terms.base import OUTPUT
from keras_jacobian.terms.base import DistillationTerm

# The library's own losses. Their names are none of Keras' loss names, so
# that a program ported from keras.distillation cannot select them by
# accident: every Keras name keeps its Keras meaning.
KD = "kd"
SQUARED_LOGITS = "squared_logits"
OWN_LOSSES = (KD, SQUARED_LOGITS)
# Names of 0.1.0. "kl" is no Keras name and stays, deprecated; "mse" is
# Keras' mean squared error, and reads as 0.1.0's loss only in a saved
# configuration (where Keras' losses are stored as dicts, never names).
_FORMER = {"kl": KD, "mse": SQUARED_LOGITS}


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


def overrides_compute_loss(term, base):
    """Whether the class of `term` defines its own `compute_loss`."""
    return type(term).compute_loss is not base.compute_loss


def per_batch_loss(term, teacher_outputs, student_outputs):
    """A subclass's `compute_loss`, as Keras' `Distiller` runs it.

    `validate_outputs`, then `compute_loss`, whose scalar is given to
    every example (one value per batch, as for a Keras
    `DistillationLoss`).
    """
    term.validate_outputs(teacher_outputs, student_outputs)
    value = tf.cast(
        term.compute_loss(teacher_outputs, student_outputs), "float32"
    )
    if value.shape.rank != 0:
        raise ValueError(
            f"{type(term).__name__}.compute_loss must return a scalar. "
            f"Received shape {tuple(value.shape)}."
        )
    return tf.fill(tf.shape(teacher_outputs)[:1], value)


@keras.saving.register_keras_serializable(package="keras_jacobian")
class LogitsDistillation(DistillationTerm):
    """Matches the student's logits to the teacher's.

    The arguments, their order and defaults are those of
    `keras.distillation.LogitsDistillation`, and so is the meaning of
    every Keras loss: a Keras loss (a name such as `"kl_divergence"` or
    `"mean_squared_error"`, a function, or a `keras.losses.Loss`) is
    applied to both networks' logits divided by `temperature`, then
    averaged; a `keras.losses.KLDivergence()` instance receives the
    softmax of those logits and is scaled by `T^2`. Keras' default,
    `loss="kl_divergence"` (a name), therefore compares logits divided by
    `T` as if they were probabilities: no softmax, no `T^2`.

    Two losses of the library's own, with names Keras does not use:

    - `loss="kd"`: Hinton et al.'s knowledge distillation,
      `T^2 * KL(softmax(t / T) || softmax(s / T))` summed over classes
      (the same value as Keras' `KLDivergence()` instance).
    - `loss="squared_logits"`: `||t - s||^2` summed over classes, on raw
      logits (`temperature` unused): the "activation matching" of
      Srinivas & Fleuret (2018), whose first proposition links it to
      Jacobian matching.

    Every loss is computed per example and averaged over the batch by the
    `Distiller` (weighted by `sample_weight` when given); a
    `keras.losses.Loss` with `reduction="sum"` is summed over the (global)
    batch, as in Keras. A subclass that overrides `compute_loss` is run
    as Keras runs it: `validate_outputs`, then `compute_loss` on the
    batch, one value per batch. For outputs with
    spatial axes, `(batch, H, W, classes)` (segmentation), it is computed
    at every position and averaged over positions.

    Args:
        temperature: softening temperature `T > 0`, default 3.0 (as in
            Keras); unused by `"squared_logits"`.
        loss: a Keras loss (default `"kl_divergence"`, with Keras'
            meaning), `"kd"` or `"squared_logits"`. Nested structures
            (several outputs) are not supported.
        name: metric name prefix, default `"logits_distillation"`.

    Example:

    ```python
    kd = keras_jacobian.LogitsDistillation(temperature=4.0, loss="kd")
    distiller = keras_jacobian.Distiller(teacher, student, [kd])
    ```
    """

    reads_logits = True

    def __init__(self, temperature=3.0, loss="kl_divergence", name=None):
        super().__init__(name=name)
        self.temperature = validation.check_number(
            temperature, "temperature", strict=True
        )
        if isinstance(loss, str) and loss == "kl":
            warnings.warn(
                "LogitsDistillation's loss='kl' is now loss='kd' (Hinton's "
                "KD, with the softmax and T^2); the old name will be "
                "removed in 0.3.0.",
                DeprecationWarning,
                stacklevel=2,
            )
            loss = KD
        self.loss = loss
        self.loss_fn = None
        if loss not in OWN_LOSSES:
            self.loss_fn = keras_losses.loss_function(
                loss, "LogitsDistillation", OWN_LOSSES
            )
        # A summed Keras loss reads the global batch size.
        self.synchronizes = keras_losses.sums(self.loss_fn)
        # A subclass's `compute_loss` is run as Keras runs it: one value
        # per batch.
        self.per_batch = overrides_compute_loss(self, LogitsDistillation)

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
        if self.per_batch:
            return per_batch_loss(self, targets["logits"], ctx.outputs[OUTPUT])
        return self.values(targets["logits"], ctx.outputs[OUTPUT])

    def values(self, teacher_logits, student_logits):
        """The loss of each example, float32 `(batch,)`."""
        if self.loss == KD:
            values = kd_loss(teacher_logits, student_logits, self.temperature)
        elif self.loss == SQUARED_LOGITS:
            values = squared_logit_error(teacher_logits, student_logits)
        else:
            t = tf.cast(teacher_logits, "float32") / self.temperature
            s = tf.cast(student_logits, "float32") / self.temperature
            kl = isinstance(self.loss_fn, keras.losses.KLDivergence)
            if kl:
                t = tf.nn.softmax(t, axis=-1)
                s = tf.nn.softmax(s, axis=-1)
            values = keras_losses.per_example(self.loss_fn, t, s)
            values = keras_losses.reduce_example(self.loss_fn, values)
            if kl:
                values = values * self.temperature**2
        return mean_over_positions(values)

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        """The loss of a batch, a scalar (as Keras' `compute_loss`)."""
        return tf.reduce_mean(self.values(teacher_outputs, student_outputs))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "temperature": self.temperature,
                "loss": keras_losses.serialize(
                    self.loss, f"The term {self.name!r}"
                ),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        loss = config.get("loss")
        if isinstance(loss, str) and loss in _FORMER:
            # Saved by 0.1.0, whose "kl" and "mse" were the library's own
            # losses: a saved model keeps its meaning.
            config["loss"] = _FORMER[loss]
        else:
            config["loss"] = keras_losses.deserialize(loss)
        return cls(**config)
