"""Directional derivatives by differences of forward passes, and steps."""

import tensorflow as tf

from keras_jacobian.jacobians.directions import input_size

# Central-difference steps relative to the example's norm, per precision:
# the cube root of the unit round-off u. The truncation error of central
# differences is O(c^2) relative and the round-off error O(u / c), both
# about u^(2/3) at c = u^(1/3): ~1e-5 in float32, ~5e-3 in float16, ~2e-2
# in bfloat16, all well below the Monte Carlo spread of the estimate.
RELATIVE_STEPS = {
    "float64": 5e-6,
    "float32": 4e-3,
    "float16": 8e-2,
    "bfloat16": 1.6e-1,
}
# One-sided (forward) differences: error O(c) relative, round-off
# O(u / c), both about sqrt(u) at c = sqrt(u): ~2e-4 in float32, ~2e-2 in
# float16, ~6e-2 in bfloat16.
FORWARD_RELATIVE_STEPS = {
    "float64": 1.5e-8,
    "float32": 2.4e-4,
    "float16": 2.2e-2,
    "bfloat16": 6.2e-2,
}
# Unit round-off of each precision (half the machine epsilon).
UNIT_ROUNDOFF = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
}
# The smallest step, relative to the example's norm, that a precision
# resolves: the round-off error of a difference is about `u / c` of the
# derivative at a relative step `c`, so 10% at `c = 10 u`; at `c < u` the
# shifted inputs round back to `x` (a zero derivative) or by a whole
# unit (a derivative many times too large). Below every default step.
MIN_RELATIVE_STEP = {p: 10.0 * u for p, u in UNIT_ROUNDOFF.items()}
# The default step scales with the example's norm, floored at this
# fraction of the batch's root-mean-square norm, so that an all-zero
# example in a batch still gets a step in the data's own range.
BATCH_FLOOR = 1e-2
# Per-value scale of the step when the whole batch is zero (no scale to
# follow).
MIN_INPUT_RMS = 1e-3


def tile(inputs, num_projections):
    """`R` copies of the batch along its first axis, `(R * batch, ...)`."""
    multiples = [num_projections] + [1] * (inputs.shape.rank - 1)
    return tf.tile(inputs, multiples)


def wide_dtype(dtype):
    """float64 stays float64; every other float dtype becomes float32."""
    return "float64" if tf.as_dtype(dtype) == tf.float64 else "float32"


def fold(values, num_projections):
    """`(R * batch, ...)` to `(R, batch, K)` in float32 (or float64)."""
    values = tf.cast(values, wide_dtype(values.dtype))
    batch = tf.shape(values)[0] // num_projections
    return tf.reshape(values, [num_projections, batch, -1])


def finite_difference_step(
    inputs, step_size=None, precision="float32", scheme="central"
):
    """The length `eps` of each example's step `eps * v`, `(batch,)`.

    The default step is relative to the data: `c * max(||x||, f)`, with
    `c = RELATIVE_STEPS[precision]` (or `FORWARD_RELATIVE_STEPS`) and the
    floor `f` a fraction (`BATCH_FLOOR`) of the batch's root-mean-square
    norm, so inputs scaled by any factor get steps scaled by it (an
    all-zero batch gets `MIN_INPUT_RMS` per value). A `step_size` that
    the precision cannot resolve relative to an example
    (`eps < MIN_RELATIVE_STEP[precision] * ||x||`) is an error: a
    `ValueError` eagerly, an `InvalidArgumentError` in a compiled step.
    Under XLA, which drops assertions, such a step is raised to that
    minimum instead, so that the estimate stays a derivative.

    Args:
        inputs: the batch `x`.
        step_size: a positive float, the step's Euclidean length in input
            units; `None` for the default step.
        precision: the network's coarsest float dtype name.
        scheme: `"central"` (`RELATIVE_STEPS`) or `"forward"`
            (`FORWARD_RELATIVE_STEPS`), for the default step.

    Returns:
        A tensor `(batch,)` (float64 for float64 inputs, else float32),
        constant for autodiff.
    """
    batch = tf.shape(inputs)[0]
    wide = wide_dtype(inputs.dtype)
    flat = tf.stop_gradient(tf.reshape(tf.cast(inputs, wide), [batch, -1]))
    norms = _scaled_norms(flat)
    if step_size is not None:
        steps = tf.fill([batch], tf.constant(step_size, wide))
        return check_resolvable_steps(steps, norms, precision)
    size = input_size(inputs)
    root = size**0.5 if isinstance(size, int) else tf.sqrt(tf.cast(size, wide))
    # Squares of inputs near 1e19 overflow float32: scaled by the peak.
    peak = tf.reduce_max(norms)
    unit = tf.where(peak > 0, peak, tf.ones_like(peak))
    batch_rms = unit * tf.sqrt(tf.reduce_mean(tf.square(norms / unit)))
    floor = tf.where(
        batch_rms > 0,
        BATCH_FLOOR * batch_rms,
        tf.cast(MIN_INPUT_RMS * root, wide),
    )
    relative = FORWARD_RELATIVE_STEPS if scheme == "forward" else RELATIVE_STEPS
    return relative[precision] * tf.maximum(norms, floor)


def check_resolvable_steps(steps, norms, precision):
    """Refuses steps below what `precision` resolves for each example.

    Args:
        steps: `(batch,)` step lengths `eps`.
        norms: `(batch,)` norms `||x||` of the examples.
        precision: the network's coarsest float dtype name.

    Returns:
        `steps`, raised to `MIN_RELATIVE_STEP[precision] * ||x||` where
        below it (only reached under XLA, where the assertion is dropped).
    """
    minimum = MIN_RELATIVE_STEP[precision] * norms
    message = (
        f"`step_size` is too small for {precision}, the coarsest dtype "
        "the network computes in: the shifted inputs `x + eps v` round "
        "back to `x` (a zero derivative) or by a whole unit (a "
        "derivative many times too large). A step must be at least "
        f"{MIN_RELATIVE_STEP[precision]:.1e} times the example's norm "
        "||x||. Use step_size=None (a step relative to each example's "
        "norm) or a step_size of at least the minimum received here."
    )
    if tf.executing_eagerly():
        low = steps < minimum
        if bool(tf.reduce_any(low)):
            raise ValueError(
                f"{message} Received: step_size="
                f"{float(tf.reduce_max(steps)):g} for an example of norm "
                f"{float(tf.reduce_max(tf.boolean_mask(norms, low))):g} "
                f"(minimum {float(tf.reduce_max(minimum)):g})."
            )
        return steps
    check = tf.debugging.Assert(
        tf.reduce_all(steps >= minimum),
        [
            message,
            "Received (step_size, minimum):",
            tf.reduce_max(steps),
            tf.reduce_max(minimum),
        ],
    )
    with tf.control_dependencies([check]):
        return tf.maximum(steps, minimum)


def central_differences(forward, inputs, directions, steps):
    """Directional derivatives by central differences, one batch.

    `(F(x + eps v) - F(x - eps v)) / (2 eps)` for every example and
    direction, the `2 R` shifted copies of the batch run through `forward`
    as one batch. The error is `eps^2 / 6` times the third directional
    derivative (O(eps^2)); for a piecewise-linear network (ReLU, max
    pooling) it is exact when no kink lies within `eps` of `x` along `v`.
    No second-order autodiff: a loss on the result trains the network by
    ordinary backprop through the two forward passes.

    Args:
        forward: a function `inputs -> output tensor (batch, ...)`.
        inputs: the batch `x`, floating point.
        directions: `(R, batch) + x.shape[1:]`.
        steps: float32 `(batch,)`, the step lengths `eps`
            (`finite_difference_step`).

    Returns:
        A float32 tensor `(R, batch, K)`.
    """
    num_projections = directions.shape[0]
    tiled, shift, eps = shifts(inputs, directions, steps)
    outputs = forward(tf.concat([tiled + shift, tiled - shift], axis=0))
    outputs = tf.cast(outputs, wide_dtype(outputs.dtype))
    plus, minus = tf.split(outputs, 2, axis=0)
    eps = tf.cast(eps, plus.dtype)
    derivatives = (plus - minus) / broadcastable(2.0 * eps, plus.shape.rank)
    return fold(derivatives, num_projections)


def forward_differences(forward, inputs, outputs, directions, steps):
    """Directional derivatives by one-sided differences from `F(x)`.

    `(F(x + eps v) - F(x)) / eps`, reusing the outputs `F(x)` of the
    step's own forward pass: one extra batch of `R` shifted copies. The
    error is `eps / 2` times the second directional derivative (O(eps));
    exact for piecewise-linear networks when no kink lies within `eps`.

    Args:
        forward: a function `inputs -> output tensor (batch, ...)`.
        inputs: the batch `x`, floating point.
        outputs: `F(x)`, the same network's output on `inputs`.
        directions: `(R, batch) + x.shape[1:]`.
        steps: `(batch,)`, the step lengths `eps`.

    Returns:
        A float32 (or float64) tensor `(R, batch, K)`.
    """
    num_projections = directions.shape[0]
    tiled, shift, eps = shifts(inputs, directions, steps)
    shifted = forward(tiled + shift)
    shifted = tf.cast(shifted, wide_dtype(shifted.dtype))
    clean = tile(tf.cast(outputs, shifted.dtype), num_projections)
    eps = tf.cast(eps, shifted.dtype)
    derivatives = (shifted - clean) / broadcastable(eps, shifted.shape.rank)
    return fold(derivatives, num_projections)


def shifts(inputs, directions, steps):
    """`R` copies of the batch, their shifts `eps v` and the steps `eps`.

    The shift is computed in float32 (float64 for float64 inputs) and cast
    to the inputs' dtype; `eps` is returned tiled to `(R * batch,)`.
    """
    num_projections = directions.shape[0]
    tiled = tile(inputs, num_projections)
    wide = wide_dtype(inputs.dtype)
    eps = tf.cast(tile(steps, num_projections), wide)
    shift = tf.cast(
        tf.reshape(tf.cast(directions, wide), tf.shape(tiled))
        * broadcastable(eps, tiled.shape.rank),
        inputs.dtype,
    )
    return tiled, shift, eps


def broadcastable(values, rank):
    """Reshapes `(n,)` to `(n, 1, ..., 1)` of the given rank."""
    return tf.reshape(values, [-1] + [1] * (rank - 1))


def _scaled_norms(flat):
    """`||x||` per row of `flat`, without overflow of the squares."""
    peak = tf.reduce_max(tf.abs(flat), axis=-1, keepdims=True)
    unit = tf.where(peak > 0, peak, tf.ones_like(peak))
    return unit[:, 0] * tf.norm(flat / unit, axis=-1)
