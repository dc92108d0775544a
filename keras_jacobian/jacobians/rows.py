"""Rows of input Jacobians by reverse mode.

Every row is a vector-Jacobian product `v^T dF/dx`, taken from a
`tf.GradientTape` that watched the input `x` while the network ran. One
row costs one backward pass; several rows are vectorised with
`GradientTape.batch_jacobian` (no Python loop over classes). When the tape
that produced the rows sits inside another tape that records the student's
weights, the rows stay differentiable (double backprop): this is how a
Jacobian term trains the student.
"""

import keras
import tensorflow as tf

# Below this squared norm a row counts as zero when normalised: the
# normalised row is then zero too, and its gradient finite.
NORM_EPSILON = 1e-12
# Rows vectorised together: `batch_jacobian` holds every row's backward
# pass at once (100 rows of a VGG-9 at batch 64 took over 17 GB), so
# more rows are computed in sequential chunks of this size.
MAX_VECTORIZED_ROWS = 10

# float16 gradients below ~6e-8 flush to zero and lose precision below
# ~6e-5; the inner (input) gradient is not loss-scaled by the optimizer, so
# its cotangents are scaled by this power of two, and the float32 rows
# divided by it. Intermediate input gradients must stay below
# 65504 / FLOAT16_COTANGENT_SCALE (256) in magnitude.
FLOAT16_COTANGENT_SCALE = 256.0


def vjp_rows(tape, outputs, inputs, cotangents):
    """Computes rows `v_r^T dF(x)/dx` for each example and each `v_r`.

    Args:
        tape: a `tf.GradientTape` that watched `inputs` while `outputs` were
            computed. It must be persistent when more than one row, or more
            than one call, is needed.
        outputs: tensor of shape `(batch, ...)`, the network's output `F(x)`.
        inputs: tensor of shape `(batch, ...)`, the watched input `x`.
        cotangents: tensor of shape `(batch, rows) + outputs.shape[1:]`, the
            vectors `v_r`, one set per example.

    Returns:
        A float tensor of shape `(batch, rows) + inputs.shape[1:]`. When
        `outputs` is float16 (mixed precision), the cotangents are scaled
        by `FLOAT16_COTANGENT_SCALE` so that the backward pass does not
        underflow, and the rows are unscaled in float32 (float32 rows).

    Raises:
        ValueError: when `outputs` does not depend on `inputs` through
            differentiable operations.
    """
    num_rows = cotangents.shape[1]
    scale = None
    if outputs.dtype == tf.float16:
        scale = FLOAT16_COTANGENT_SCALE
        cotangents = tf.cast(cotangents, "float32") * scale
    cotangents = tf.cast(cotangents, outputs.dtype)
    if num_rows == 1:
        grads = tape.gradient(
            outputs, inputs, output_gradients=cotangents[:, 0]
        )
        check_connected(grads)
        return _unscale(grads[:, None], scale)
    batch = tf.shape(outputs)[0]
    chunks = []
    for start in range(0, num_rows, MAX_VECTORIZED_ROWS):
        stop = min(start + MAX_VECTORIZED_ROWS, num_rows)
        flat_v = tf.reshape(
            cotangents[:, start:stop], [batch, stop - start, -1]
        )
        if chunks:
            # The chunk's backward pass starts from `flat_v`: waiting for
            # the previous chunk keeps one chunk in memory at a time.
            with tf.control_dependencies([chunks[-1]]):
                flat_v = tf.identity(flat_v)
        with tape:
            flat = tf.reshape(outputs, [batch, 1, -1])
            projected = tf.reduce_sum(flat * flat_v, axis=-1)
        # `batch_jacobian` divides by the batch size: a replica left
        # without examples by an uneven last batch gets its empty rows.
        rows = tf.cond(
            batch > 0,
            lambda: tape.batch_jacobian(projected, inputs),
            lambda: tf.zeros(
                tf.concat([[0, stop - start], tf.shape(inputs)[1:]], 0),
                inputs.dtype,
            ),
        )
        check_connected(rows)
        chunks.append(rows)
    rows = chunks[0] if len(chunks) == 1 else tf.concat(chunks, axis=1)
    return _unscale(rows, scale)


def _unscale(rows, scale):
    if scale is None:
        return rows
    return tf.cast(rows, "float32") / scale


def check_connected(grads):
    if grads is None:
        raise ValueError(
            "The network's output has no gradient with respect to its "
            "input, so it has no input Jacobian. Expected a model whose "
            "output is a differentiable function of a floating-point "
            "input. Look for a `stop_gradient`, an integer cast, an "
            "`argmax`, or a layer without a registered gradient between "
            "the input and the output."
        )


def flatten_rows(rows):
    """Reshapes `(batch, rows, ...)` to `(batch, rows, D)` in float32."""
    shape = tf.shape(rows)
    return tf.reshape(tf.cast(rows, "float32"), [shape[0], shape[1], -1])


def normalize_rows(rows):
    """L2-normalises each flattened row; a zero row stays zero, not NaN."""
    squared = tf.reduce_sum(tf.square(rows), axis=-1, keepdims=True)
    return rows * tf.math.rsqrt(tf.maximum(squared, NORM_EPSILON))


def unit_vectors(shape, seed, dtype="float32"):
    """Draws vectors uniformly on the unit sphere along the last axis.

    Args:
        shape: output shape; the last axis is the sphere's dimension.
        seed: a `keras.random.SeedGenerator` or an integer seed.
        dtype: float dtype of the result.

    Returns:
        A tensor of `shape` whose last-axis slices have unit norm, so that
        `E[v v^T] = I / shape[-1]`.
    """
    v = keras.random.normal(shape, seed=seed, dtype="float32")
    v = normalize_rows(v)
    return tf.cast(v, dtype)
