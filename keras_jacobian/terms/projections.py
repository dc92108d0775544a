"""Jacobian matching along random input directions (forward mode or
finite differences): the `JacobianMatching` estimators `"jvp"`,
`"finite_difference"` and `"forward_difference"`.

The teacher's directional derivatives `J_T v` and the directions `v`
are its targets; the student's `J_S v` along the same `v` are compared
with them. See `keras_jacobian.jacobians.directional_distance`.
"""

import keras
import tensorflow as tf

from keras_jacobian import jacobians
from keras_jacobian.terms import whole
from keras_jacobian.terms.base import OUTPUT


def precision_of(inputs, outputs, network=None):
    """The coarsest float dtype the step's difference passes see.

    Args:
        inputs: the batch.
        outputs: the network's output.
        network: the dtype name the network computes in
            (`jacobians.network_precision`); when `None` (unknown), the
            global dtype policy's compute dtype stands for it.
    """
    if network is None:
        network = keras.config.dtype_policy().compute_dtype
    return jacobians.compute_precision(inputs.dtype, outputs.dtype, network)


def derivatives(term, ctx, directions):
    """`J v` of the context's network, float32 `(R, batch, classes)`."""
    return jacobians.directional_derivatives(
        term.estimator,
        lambda inputs: ctx.forward(inputs)[OUTPUT],
        ctx.inputs,
        directions,
        step_size=term.step_size,
        precision=precision_of(ctx.inputs, ctx.outputs[OUTPUT], ctx.precision),
        outputs=ctx.outputs[OUTPUT],
        replay=ctx.replay,
    )


def teacher_targets(term, ctx):
    """Draws the directions and returns them with the teacher's `J_T v`."""
    directions = jacobians.input_directions(
        ctx.inputs, term.num_projections, ctx.seed
    )
    teacher = tf.stop_gradient(derivatives(term, ctx, directions))
    # Batch-major, like every term's targets.
    return {
        "directions": _swap(directions),
        "derivatives": _swap(teacher),
    }


def per_example_loss(term, targets, ctx):
    """The estimate of `||J_T - J_S||_F^2`, relative to the batch mean
    of `||J_T||_F^2` under `normalize="teacher"`."""
    directions = _check_input_shape(_swap(targets["directions"]), ctx.inputs)
    student = derivatives(term, ctx, directions)
    teacher = _swap(targets["derivatives"])
    size = jacobians.input_size(ctx.inputs)
    loss = jacobians.directional_distance(teacher, student, size)
    if term.normalize == whole.TEACHER:
        # Estimates of the teacher's mean squared row norm.
        rows = teacher.shape[-1]
        if rows is None or not isinstance(size, int):
            # Sizes known only as the step runs.
            rows = tf.shape(teacher)[-1] if rows is None else rows
            per_row = tf.cast(size, "float64") / tf.cast(rows, "float64")
        else:
            per_row = size / rows
        norms = jacobians.directional_distance(
            teacher, tf.zeros_like(teacher), per_row
        )
        loss = whole.relative(loss, norms, ctx.sample_weight)
    return loss


def _check_input_shape(directions, inputs):
    """The directions, checked to fit the student's input batch.

    The teacher's directions are drawn on the teacher's input; a student
    input of another size (a dict batch at two resolutions, of sizes
    unknown at construction) is an error, raised when the step runs.
    """
    message = (
        "Input-direction estimators ('jvp', 'finite_difference', "
        "'forward_difference') move both networks along the same input "
        "directions, so teacher and student must see inputs of the same "
        "shape. Use estimator='exact' or 'vjp' for networks at different "
        "resolutions. Received (teacher, student) input shapes:"
    )
    teacher, student = directions.shape[2:], inputs.shape[1:]
    if teacher.is_fully_defined() and student.is_fully_defined():
        if teacher != student:
            raise ValueError(f"{message} {teacher}, {student}.")
        return directions
    check = tf.debugging.assert_equal(
        tf.shape(directions)[2:],
        tf.shape(inputs)[1:],
        message=message,
    )
    with tf.control_dependencies([check]):
        return tf.identity(directions)


def _swap(values):
    """Swaps the first two axes (projections and batch)."""
    perm = [1, 0] + list(range(2, values.shape.rank))
    return tf.transpose(values, perm)
