"""The whole-Jacobian objectives of `JacobianMatching`, one per setting.

For `target="all"` the term compares the whole Jacobians `J_T`, `J_S`
(`K` classes by `D` input values) of teacher and student. Each setting of
`normalize` defines one per-example quantity, and every estimator is an
unbiased estimate of it (the exact one computes it):

- `normalize=False`: `||J_T - J_S||_F^2`, summed over classes and input
  values.
- `normalize="teacher"`: the error relative to the teacher's Jacobians,
  `||J_T(x) - J_S(x)||_F^2 / s`, with the scale `s` the mean of
  `||J_T||_F^2` over the (global) batch. The scale is the teacher's
  alone, a constant for the student: it makes the weight of the term
  independent of the data's units and the teacher's sharpness. The exact
  estimator computes `s` exactly; the others estimate it from the
  teacher's own projections of the step (no extra pass), which is a
  ratio estimate: the numerator stays unbiased and `s` is estimated from
  `B R` projections of `B` examples, so the loss is biased by a relative
  `O(1 / (B R))` (measured in the tests), small next to its spread.
- `normalize=True`: each class row of both networks unit-normalised,
  `mean_c ||t_c / ||t_c|| - s_c / ||s_c|| ||^2`. The student's row norms
  are not linear in the Jacobian, so no projection estimates it without
  bias: only `estimator="exact"` computes it.

A batch whose teacher Jacobians are all zero (scale below
`jacobians.NORM_EPSILON`) has no relative error: its term is zero under
`normalize="teacher"`, never a division by zero.
"""

import numpy as np
import tensorflow as tf

from keras_jacobian import jacobians

TEACHER = "teacher"
NORMALIZATIONS = (True, False, TEACHER)


def check_normalize(normalize):
    """Maps the user's `normalize` to one of `NORMALIZATIONS`."""
    if isinstance(normalize, str):
        if normalize != TEACHER:
            raise ValueError(
                "`normalize` must be True, False or 'teacher'. Received: "
                f"normalize={normalize!r}"
            )
        return TEACHER
    if isinstance(normalize, (bool, np.bool_)):
        return bool(normalize)
    raise ValueError(
        "`normalize` must be True, False or 'teacher'. Received: "
        f"normalize={normalize!r}"
    )


def global_mean(values, sample_weight=None):
    """Weighted mean of per-example values over the global batch, `()`.

    Under `tf.distribute` the sums are summed over replicas, so that every
    replica divides by the value one device would use. Examples of weight
    zero do not count.
    """
    values = tf.cast(values, "float32")
    if sample_weight is None:
        weights = tf.ones_like(values)
    else:
        weights = tf.cast(tf.reshape(sample_weight, [-1]), "float32")
    total = tf.reduce_sum(weights * values)
    count = tf.reduce_sum(weights)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        total, count = context.all_reduce("SUM", [total, count])
    return tf.math.divide_no_nan(total, count)


def relative(squared_error, teacher_squared_norms, sample_weight=None):
    """`squared_error / s`, `s` the global-batch mean of the teacher's
    squared norms (weighted by `sample_weight`); zero where `s` is (near)
    zero.

    Args:
        squared_error: per-example `||J_T - J_S||^2` (or its estimate).
        teacher_squared_norms: per-example `||J_T||^2` (or estimates).
        sample_weight: the batch's sample weights, or `None`.
    """
    scale = global_mean(teacher_squared_norms, sample_weight)
    scale = tf.cast(tf.stop_gradient(scale), squared_error.dtype)
    small = scale <= jacobians.NORM_EPSILON
    safe = tf.where(small, tf.ones_like(scale), scale)
    # A NaN scale stays NaN (it is no zero Jacobian): `small` is false.
    return tf.where(small, tf.zeros_like(squared_error), squared_error / safe)
