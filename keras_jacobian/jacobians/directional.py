"""`J(x) v` along input directions: forward mode or differences."""

import tensorflow as tf

from keras_jacobian import _compat
from keras_jacobian.jacobians.differences import broadcastable
from keras_jacobian.jacobians.differences import central_differences
from keras_jacobian.jacobians.differences import finite_difference_step
from keras_jacobian.jacobians.differences import fold
from keras_jacobian.jacobians.differences import forward_differences
from keras_jacobian.jacobians.differences import shifts
from keras_jacobian.jacobians.differences import tile
from keras_jacobian.jacobians.differences import wide_dtype
from keras_jacobian.jacobians.precision import compute_precision
from keras_jacobian.jacobians.rows import check_connected


def jvp(forward, inputs, directions):
    """Directional derivatives `J(x) v` by forward-mode autodiff.

    Runs `forward` once on `R` copies of the batch under a
    `tf.autodiff.ForwardAccumulator`. Inside an outer `tf.GradientTape`
    the result is differentiable with respect to the network's weights
    (reverse-over-forward), so a loss on it trains the network.

    Args:
        forward: a function `inputs -> output tensor (batch, ...)`.
        inputs: the batch `x`, floating point.
        directions: `(R, batch) + x.shape[1:]`, e.g. from
            `input_directions`.

    Returns:
        A float32 tensor `(R, batch, K)`: the flattened `J v_r` of each
        example, `K` the output size.

    Raises:
        ValueError: when the output does not depend on the input through
            operations with forward-mode derivatives.
    """
    num_projections = directions.shape[0]
    primals = tile(inputs, num_projections)
    tangents = tf.reshape(tf.cast(directions, inputs.dtype), tf.shape(primals))
    with _compat.exact_forward_shapes():  # relaxed rules break XLA
        with tf.autodiff.ForwardAccumulator(primals, tangents) as acc:
            outputs = forward(primals)
    derivatives = acc.jvp(outputs)
    check_connected(derivatives)
    return fold(derivatives, num_projections)


def directional_derivatives(
    estimator,
    forward,
    inputs,
    directions,
    step_size=None,
    precision=None,
    outputs=None,
    replay=None,
):
    """`J(x) v` for each direction, by forward mode or differences.

    Args:
        estimator: `"jvp"` (forward mode), `"finite_difference"`
            (central differences) or `"forward_difference"` (one-sided,
            from `outputs`).
        forward: a function `inputs -> output tensor`.
        inputs: the batch `x`.
        directions: `(R, batch) + x.shape[1:]`.
        step_size: see `finite_difference_step`.
        precision: the network's coarsest float dtype name (sets the
            default step); defaults to the input's dtype.
        outputs: `forward(inputs)`, reused by `"forward_difference"`
            (computed when None).
        replay: None when one pass on tiled copies of the batch sees the
            draws of the pass that gave `outputs` (a network without
            random draws); else a function that resets the network's
            random state to the one it had before that pass
            (`randomness.RandomState.record`), possibly doing nothing
            (draws with a fixed integer seed).
            Every pass then starts from that state and runs on a batch of
            the shape and row layout of `inputs` (one pass per direction
            and sign), so that it draws the same values: each `J v` is
            the derivative of the network at the draws of that pass.

    Returns:
        A float32 tensor `(R, batch, K)`.
    """
    if replay is None:
        return _directional(
            estimator,
            forward,
            inputs,
            directions,
            step_size,
            precision,
            outputs,
        )

    def replayed(values):
        replay()
        return forward(values)

    if estimator == "forward_difference" and outputs is None:
        outputs = replayed(inputs)
    if estimator == "finite_difference":
        precision = precision or compute_precision(inputs.dtype)
        steps = finite_difference_step(inputs, step_size, precision)
    parts = []
    for r in range(directions.shape[0]):
        if estimator == "finite_difference":
            # Central differences one sign at a time: batches of B.
            _, shift, eps = shifts(inputs, directions[r : r + 1], steps)
            plus = replayed(inputs + shift)
            minus = replayed(inputs - shift)
            wide = wide_dtype(plus.dtype)
            plus = tf.cast(plus, wide)
            eps = tf.cast(eps, wide)
            derivative = (plus - tf.cast(minus, wide)) / broadcastable(
                2.0 * eps, plus.shape.rank
            )
            parts.append(fold(derivative, 1))
        else:
            parts.append(
                _directional(
                    estimator,
                    replayed,
                    inputs,
                    directions[r : r + 1],
                    step_size,
                    precision,
                    outputs,
                )
            )
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)


def _directional(
    estimator, forward, inputs, directions, step_size, precision, outputs
):
    if estimator == "jvp":
        return jvp(forward, inputs, directions)
    precision = precision or compute_precision(inputs.dtype)
    if estimator == "forward_difference":
        steps = finite_difference_step(inputs, step_size, precision, "forward")
        if outputs is None:
            outputs = forward(inputs)
        return forward_differences(forward, inputs, outputs, directions, steps)
    steps = finite_difference_step(inputs, step_size, precision)
    return central_differences(forward, inputs, directions, steps)
