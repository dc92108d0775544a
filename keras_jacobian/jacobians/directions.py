"""Random input directions and the estimate built on them.

For `v` uniform on the unit sphere of the `D` input values of an example,
`E[v v^T] = I / D`, so `D * ||A v||^2` is an unbiased estimate of
`||A||_F^2` for any matrix `A` with `D` columns, e.g. `J_T - J_S`. One
directional derivative `J v` gives every class at once: one forward-mode
pass, or two forward passes with central differences, instead of one
backward pass per class.
"""

import keras
import tensorflow as tf

from keras_jacobian import steps
from keras_jacobian.jacobians.rows import normalize_rows

ESTIMATORS = (
    "exact",
    "vjp",
    "jvp",
    "finite_difference",
    "forward_difference",
)
# Estimators that differentiate along input directions, without any
# reverse-mode input gradient.
INPUT_ESTIMATORS = ("jvp", "finite_difference", "forward_difference")
# Of those, the ones that difference forward passes (no autodiff of `J v`).
DIFFERENCE_ESTIMATORS = ("finite_difference", "forward_difference")


def input_directions(inputs, num_projections, seed):
    """Draws unit input directions `v`, one set per example.

    Each `v` is uniform on the unit sphere of the example's `D` input
    values, so `E[v v^T] = I / D` and every estimate built on one `v` is
    unbiased. The `R` directions of an example are orthogonal to each
    other (the Q factor of a Gaussian `D x R` block, in blocks of `D`
    when `R > D`): the estimate of `||A||_F^2` then never counts one
    direction twice, which lowers its variance below that of `R`
    independent directions (to zero at `R = D`) without changing its
    mean.

    Under `tf.distribute`, every replica draws the directions of the
    whole global batch (the seed generator's state is the same on every
    replica) and keeps its own slice, so that N replicas use the
    directions one device would use for the same global batch.

    Args:
        inputs: the batch `(batch, ...)`.
        num_projections: directions per example, `R`.
        seed: a `keras.random.SeedGenerator` or an integer seed.

    Returns:
        A float32 tensor `(R, batch) + inputs.shape[1:]`.
    """
    shape = tf.shape(inputs)
    size = input_size(inputs)
    v = steps.draw_for_replica(
        lambda n: orthogonal_directions(n, size, num_projections, seed),
        shape[0],
        axis=1,
    )
    return tf.reshape(v, tf.concat([[num_projections, shape[0]], shape[1:]], 0))


def orthogonal_directions(batch, size, count, seed):
    """`count` orthonormal directions in `R^size` per example.

    Returns a float32 tensor `(count, batch, size)`; each direction is
    uniform on the unit sphere (the Q factor of a Gaussian matrix is
    distributed invariantly under rotations), directions of one example
    are orthogonal in blocks of `size`.
    """
    if not isinstance(size, int):
        # `D` known only as the step runs (images of varying size): one
        # block, as for any static `D >= R`.
        check = tf.debugging.assert_greater_equal(
            size,
            count,
            message="Expected at least as many values per example (input "
            "values, or output values for output projections) as random "
            f"directions, num_projections={count}. Use fewer projections.",
        )
        with tf.control_dependencies([check]):
            size = tf.identity(size)
    blocks = []
    remaining = count
    while remaining > 0:
        width = min(remaining, size) if isinstance(size, int) else remaining
        gaussian = keras.random.normal(
            tf.stack([batch, size, width]), seed=seed, dtype="float32"
        )
        if width == 1:
            block = normalize_rows(tf.transpose(gaussian, [2, 0, 1]))
        else:
            q, _ = tf.linalg.qr(gaussian)
            block = tf.transpose(q, [2, 0, 1])
        blocks.append(block)
        remaining -= width
    return blocks[0] if len(blocks) == 1 else tf.concat(blocks, axis=0)


def input_size(inputs):
    """`D`, the number of input values of one example.

    A Python int when the shape is static; a scalar int32 tensor when an
    axis is known only when the step runs (e.g. images of varying size).
    """
    shape = inputs.shape[1:]
    if shape.is_fully_defined():
        return int(shape.num_elements())
    return tf.reduce_prod(tf.shape(inputs)[1:])


def directional_distance(teacher, student, input_size):
    """`D * mean_r ||J_T v_r - J_S v_r||^2` per example, `(batch,)`.

    Directional derivatives `(R, batch, K)` along directions `v_r` uniform
    on the unit sphere of the `D = input_size` input values: an unbiased
    estimate of `||J_T - J_S||_F^2` (`E[v v^T] = I / D`).
    """
    dtype = "float64" if teacher.dtype == student.dtype == tf.float64 else None
    teacher = tf.cast(teacher, dtype or "float32")
    student = tf.cast(student, dtype or "float32")
    squared = tf.reduce_sum(tf.square(teacher - student), axis=-1)
    return tf.cast(input_size, squared.dtype) * tf.reduce_mean(squared, axis=0)
