"""The `Distiller`'s loss weights: Keras' convex mix, or independent.

Keras' `Distiller` mixes its losses as

    student_loss_weight * student_loss
    + (1 - student_loss_weight) * sum_i distillation_loss_weights[i] * term_i

with `student_loss_weight` in `[0, 1]` (default 0.5); so does ours with
the same arguments. `supervised_loss_weight` (a name Keras does not use)
weights the student's loss independently of the terms:

    supervised_loss_weight * student_loss
    + sum_i distillation_loss_weights[i] * term_i

The weights are `keras.Variable`s (callbacks change them between steps);
the attributes below read back the numbers given while the variables
hold them, so that `distiller.student_loss_weight == 0.7` as in Keras.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_jacobian import validation

DEFAULT_STUDENT_LOSS_WEIGHT = 0.5


def convex(student_loss_weight, supervised_loss_weight):
    """Whether the weights form Keras' convex mix; checks the pair."""
    if student_loss_weight is not None and supervised_loss_weight is not None:
        raise ValueError(
            "Pass either `student_loss_weight` (Keras' convex mix: "
            "w * student + (1 - w) * terms) or `supervised_loss_weight` "
            "(an independent weight: s * student + terms), not both. "
            f"Received: student_loss_weight={student_loss_weight!r}, "
            f"supervised_loss_weight={supervised_loss_weight!r}"
        )
    return supervised_loss_weight is None


def supervised_weight(student_loss_weight, supervised_loss_weight):
    """The weight of the student's loss, checked."""
    if supervised_loss_weight is not None:
        return validation.check_number(
            supervised_loss_weight, "supervised_loss_weight"
        )
    if student_loss_weight is None:
        return DEFAULT_STUDENT_LOSS_WEIGHT
    w = validation.check_number(student_loss_weight, "student_loss_weight")
    if w > 1.0:
        raise ValueError(
            "`student_loss_weight` must be between 0.0 and 1.0, as in "
            "keras.distillation (the terms get 1 - student_loss_weight). "
            "For an independent weight of the student's loss, pass "
            "`supervised_loss_weight` instead. Received: "
            f"student_loss_weight={student_loss_weight!r}"
        )
    return w


def terms_scale(distiller):
    """The factor of the terms' sum: `1 - w` (Keras' mix), else 1."""
    if distiller._convex:
        return 1.0 - distiller.student_loss_weight_variable
    return 1.0


def runs(distiller, i):
    """Whether term `i` runs in this step: its weight is not 0.

    A weight assigned to `distiller.term_weights[i]` directly bypasses the
    setters' checks; a negative or non-finite one stops the step here
    (outside XLA, which drops the assertion) instead of skipping the term.
    """
    weight = distiller.term_weights[i]
    name = distiller.distillation_losses[i].name
    check = tf.debugging.Assert(
        tf.math.is_finite(weight) & (weight >= 0.0),
        [
            f"Expected the weight of term {i} ({name}) to "
            "be a finite number >= 0. Set it with "
            "`distiller.distillation_loss_weights[i] = w` (checked). "
            "Received:",
            weight,
        ],
    )
    with tf.control_dependencies([check]):
        return terms_scale(distiller) * weight > 0.0


def combine(distiller, student_loss, term_values):
    """The total loss and the logged values, from the step's losses.

    `term_values` holds each term's batch mean. The total adds the
    regularisation losses of the model to the weighted mix; logged as
    `regularization_loss` when there are any.

    Returns:
        `(logged, total)`: a list of `(metric, value)` pairs and the total.
    """
    weight = distiller.student_loss_weight_variable
    scale = terms_scale(distiller)
    distillation = tf.zeros((), "float32")
    for w, value in zip(distiller.term_weights, term_values):
        distillation = distillation + w * value
    total = weight * student_loss
    for w, value in zip(distiller.term_weights, term_values):
        total = total + (scale * w) * value
    logged = [
        (distiller.student_loss_tracker, student_loss),
        (distiller.distillation_loss_tracker, distillation),
    ]
    logged += list(zip(distiller.term_trackers, term_values))
    extras = distiller.losses
    if extras:
        object.__setattr__(distiller, "_logs_regularization", True)
        regularization = tf.add_n(
            [tf.cast(tf.reduce_sum(e), "float32") for e in extras]
        )
        total = total + regularization
        logged.append((distiller.regularization_loss_tracker, regularization))
    logged.append((distiller.total_loss_tracker, total))
    return logged, total


def logged_metrics(distiller):
    """The `Distiller`'s metrics; `regularization_loss` only for a model
    with regularisation losses (known once built, or once traced)."""
    metrics = keras.Model.metrics.fget(distiller)
    if getattr(distiller, "_logs_regularization", False) or (
        distiller.built and distiller.losses
    ):
        object.__setattr__(distiller, "_logs_regularization", True)
        return metrics
    return [
        m for m in metrics if m is not distiller.regularization_loss_tracker
    ]


def _read(variable, given):
    value = keras.ops.convert_to_numpy(variable)
    if np.float32(given) == value:
        return given
    return float(value)


def _student(distiller):
    return _read(
        distiller.student_loss_weight_variable, distiller._given_weights[0]
    )


def _get_student_loss_weight(distiller):
    return _student(distiller) if distiller._convex else None


def _set_student_weight(distiller, value, convex):
    """Sets the student's weight under one of the two weightings."""
    if distiller._convex != convex:
        given, kept = (
            ("student_loss_weight", "supervised_loss_weight")
            if convex
            else ("supervised_loss_weight", "student_loss_weight")
        )
        how = (
            "mixes its losses as Keras does"
            if distiller._convex
            else "weights the student's loss independently"
        )
        raise ValueError(
            f"This Distiller {how} (`{kept}`); set `{kept}`. Received: "
            f"{given}={value!r}"
        )
    value = (
        supervised_weight(value, None)
        if convex
        else supervised_weight(None, value)
    )
    distiller.student_loss_weight_variable.assign(value)
    distiller._given_weights = (value, distiller._given_weights[1])


def _set_student_loss_weight(distiller, value):
    _set_student_weight(distiller, value, convex=True)


def _get_supervised_loss_weight(distiller):
    return None if distiller._convex else _student(distiller)


def _set_supervised_loss_weight(distiller, value):
    _set_student_weight(distiller, value, convex=False)


class WeightList(list):
    """The terms' weights; item assignment sets the distiller's variable.

    Keras' `distillation_loss_weights` is a plain list, changed in place
    (`distiller.distillation_loss_weights[0] = 0.1`); here each item is
    backed by a `keras.Variable`, so assignments write through. The
    number of weights is the number of terms and cannot change.
    """

    def __init__(self, distiller, values):
        super().__init__(values)
        self._distiller = distiller

    def __setitem__(self, index, value):
        values = list(self)
        values[index] = value
        _set_distillation_loss_weights(self._distiller, values)
        super().__setitem__(index, value)

    def _fixed_length(self, *args, **kwargs):
        raise TypeError(
            "`distillation_loss_weights` holds one weight per term; its "
            "length cannot change. Set an item "
            "(`distiller.distillation_loss_weights[0] = 0.5`) or assign "
            "a whole list with one weight per term."
        )

    append = extend = insert = pop = remove = clear = _fixed_length
    sort = reverse = __delitem__ = __iadd__ = __imul__ = _fixed_length


def _get_distillation_loss_weights(distiller):
    given = distiller._given_weights[1]
    return WeightList(
        distiller,
        [_read(v, w) for v, w in zip(distiller.term_weights, given)],
    )


def _set_distillation_loss_weights(distiller, values):
    values = validation.check_term_weights(
        distiller.distillation_losses, values
    )
    for variable, value in zip(distiller.term_weights, values):
        variable.assign(value)
    distiller._given_weights = (distiller._given_weights[0], list(values))


student_loss_weight = property(
    _get_student_loss_weight,
    _set_student_loss_weight,
    doc="Keras' convex mix `w` in `[0, 1]`, or `None` when the student's "
    "loss is weighted independently (`supervised_loss_weight`).",
)
supervised_loss_weight = property(
    _get_supervised_loss_weight,
    _set_supervised_loss_weight,
    doc="The independent weight of the student's loss, or `None` in "
    "Keras' convex mix (`student_loss_weight`).",
)
distillation_loss_weights = property(
    _get_distillation_loss_weights,
    _set_distillation_loss_weights,
    doc="The terms' weights `d_i`, a list of floats.",
)
