"""Where input Jacobians are computed.

Every Jacobian in the library is a set of vector-Jacobian products
`v^T dF/dx`, one per row, taken from a `tf.GradientTape` that watched the
input `x` while the network ran. One row costs one backward pass; several
rows are vectorised with `GradientTape.batch_jacobian` (no Python loop over
classes). When the tape that produced the rows sits inside another tape that
records the student's weights, the rows stay differentiable (double
backprop): this is how a Jacobian term trains the student.

The whole Jacobian is also estimated along random input directions `v`
(`input_directions`): `J v` for every class at once, by forward mode
(`jvp`) or by differences of forward passes (`central_differences`,
`forward_differences`), with `directional_distance` turning them into
an unbiased estimate of `||J_T - J_S||_F^2`.
"""

import tensorflow as tf

from keras_jacobian import forward_mode
from keras_jacobian import steps

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
        _check_connected(grads)
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
        _check_connected(rows)
        chunks.append(rows)
    rows = chunks[0] if len(chunks) == 1 else tf.concat(chunks, axis=1)
    return _unscale(rows, scale)


def _unscale(rows, scale):
    if scale is None:
        return rows
    return tf.cast(rows, "float32") / scale


def _check_connected(grads):
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
    import keras

    v = keras.random.normal(shape, seed=seed, dtype="float32")
    v = normalize_rows(v)
    return tf.cast(v, dtype)


def match_spatial_size(rows, target_shape):
    """Maps the teacher's Jacobian rows `(batch, rows, H, W, C)` to
    `target_shape`, the student's input grid.

    Used when teacher and student see the same images at different
    resolutions. A row is a derivative with respect to input pixels, so
    by the chain rule a student pixel that stands for several teacher
    pixels gets the SUM of their derivatives, not their mean: the rows
    are resized by area averaging and multiplied by the area ratio
    `(H * W) / (h * w)`.

    The result is the exact input-Jacobian row of `teacher(B(x_s))`, where
    `B` takes an image on the student's grid to the teacher's grid, each
    teacher pixel being the mean of the student pixels it overlaps,
    weighted by overlap: for integer factors `B` is nearest-neighbour
    upsampling (a larger teacher) or average pooling (a smaller teacher),
    so a student that is exactly the teacher behind such a resampling has
    the teacher's rows. For non-integer ratios `B` is the area-weighted
    resampling just described, an approximation of other resizes
    (bilinear, antialiased); the scale keeps the rows' magnitude right.
    The normalised forms of the terms do not depend on the scale.

    Only the teacher's rows, which are constants for the student's
    update, are resized, so no derivative of a resize is ever needed;
    the result is a constant (`stop_gradient`).

    Sizes unknown until the step runs (models built on
    `keras.Input((None, None, C))`) are read from the tensors: the rows
    are then resized only when the sizes differ (`tf.cond`).

    Args:
        rows: the teacher's rows `(batch, rows, H, W, C)`.
        target_shape: the student's `(h, w, c)`; each entry an int or a
            scalar int32 tensor (see `known_shape`).
    """
    target_shape = tuple(target_shape)
    static = all(isinstance(d, int) for d in target_shape)
    if static and rows.shape[2:] == target_shape:
        return rows
    height, width, channels = target_shape
    if (
        rows.shape[-1] is not None
        and isinstance(channels, int)
        and rows.shape[-1] != channels
    ):
        raise ValueError(
            "Teacher and student inputs must have the same number of "
            f"channels to compare their Jacobians. Received: teacher "
            f"{tuple(rows.shape[2:])}, student {_describe(target_shape)}."
        )
    source = known_shape(rows)

    def resize():
        images = tf.reshape(rows, [-1] + source[2:])
        # ResizeArea has no gradient: under tf.cond (graph mode) a
        # stop_gradient on its input does not stop tf.gradients from
        # asking for one.
        images = tf.stop_gradient(
            tf.image.resize(images, tf.stack([height, width]), method="area")
        )
        ratio = tf.cast(source[2] * source[3], "float32") / tf.cast(
            height * width, "float32"
        )
        images = tf.cast(images, "float32") * ratio
        return tf.reshape(
            images, tf.stack([source[0], source[1], height, width, channels])
        )

    if static and None not in rows.shape[2:]:
        return resize()
    same = tf.reduce_all(
        tf.equal(tf.shape(rows)[2:4], tf.stack([height, width]))
    )
    return tf.cond(same, lambda: tf.cast(rows, "float32"), resize)


def known_shape(x, fallback=None):
    """The shape of `x`, each axis an int where known, else a tensor.

    Args:
        x: a tensor.
        fallback: a shape of the same rank whose known entries fill axes
            that `x.shape` leaves unknown (e.g. a model's input shape).

    Returns:
        A list: Python ints for static axes, scalar int32 tensors (from
        `tf.shape(x)`) for the others.
    """
    dynamic = tf.shape(x)
    fallback = fallback or [None] * x.shape.rank
    return [
        d if d is not None else (f if f is not None else dynamic[i])
        for i, (d, f) in enumerate(zip(x.shape, fallback))
    ]


def _describe(shape):
    return tuple(d if isinstance(d, int) else None for d in shape)


# Input-space projections: `J v` for random input directions `v`.
#
# For `v` uniform on the unit sphere of the `D` input values of an example,
# `E[v v^T] = I / D`, so `D * ||A v||^2` is an unbiased estimate of
# `||A||_F^2` for any matrix `A` with `D` columns, e.g. `J_T - J_S`. One
# directional derivative `J v` gives every class at once: one forward-mode
# pass, or two forward passes with central differences, instead of one
# backward pass per class.

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
    import keras

    if not isinstance(size, int):
        # `D` known only as the step runs (images of varying size): one
        # block, as for any static `D >= R`.
        check = tf.debugging.assert_greater_equal(
            size,
            count,
            message="Expected at least as many input values per example "
            f"as directions ({count}).",
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


def _tile(inputs, num_projections):
    multiples = [num_projections] + [1] * (inputs.shape.rank - 1)
    return tf.tile(inputs, multiples)


def _wide(dtype):
    """float64 stays float64; every other float dtype becomes float32."""
    return "float64" if tf.as_dtype(dtype) == tf.float64 else "float32"


def _fold(values, num_projections):
    """`(R * batch, ...)` to `(R, batch, K)` in float32 (or float64)."""
    values = tf.cast(values, _wide(values.dtype))
    batch = tf.shape(values)[0] // num_projections
    return tf.reshape(values, [num_projections, batch, -1])


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
    primals = _tile(inputs, num_projections)
    tangents = tf.reshape(tf.cast(directions, inputs.dtype), tf.shape(primals))
    with forward_mode.exact_shapes():  # relaxed rules break XLA
        with tf.autodiff.ForwardAccumulator(primals, tangents) as acc:
            outputs = forward(primals)
    derivatives = acc.jvp(outputs)
    _check_connected(derivatives)
    return _fold(derivatives, num_projections)


def compute_precision(*dtypes):
    """The coarsest float dtype name among `dtypes` (None entries skipped)."""
    order = ["float64", "float32", "float16", "bfloat16"]
    names = [tf.as_dtype(d).name for d in dtypes if d is not None]
    names = [n for n in names if n in order] or ["float32"]
    return max(names, key=order.index)


def network_precision(model):
    """The coarsest float dtype a Keras model computes in.

    Reads the `compute_dtype` of every layer, nested models and the
    sublayers of custom layers included, and of the model's inputs: a
    model built under `mixed_bfloat16` keeps computing in bfloat16 under
    any later global policy, and its difference steps must follow.

    Returns:
        A dtype name, e.g. `"bfloat16"`; `"float32"` when none is float.
    """
    dtypes = [getattr(layer, "compute_dtype", None) for layer in _layers(model)]
    try:
        dtypes += [t.dtype for t in model.inputs or []]
    except (AttributeError, ValueError):
        pass
    return compute_precision(*dtypes)


def _layers(model):
    """The model and every layer inside it, recursively."""
    flatten = getattr(model, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=True, recursive=True))
    found = [model]
    for layer in getattr(model, "layers", []):
        found.extend(_layers(layer))
    return found


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
    wide = _wide(inputs.dtype)
    flat = tf.reshape(tf.cast(inputs, wide), [batch, -1])
    norms = tf.stop_gradient(tf.norm(flat, axis=-1))
    if step_size is not None:
        steps = tf.fill([batch], tf.constant(step_size, wide))
        return check_resolvable_steps(steps, norms, precision)
    size = input_size(inputs)
    root = size**0.5 if isinstance(size, int) else tf.sqrt(tf.cast(size, wide))
    batch_rms = tf.sqrt(tf.reduce_mean(tf.square(norms)))
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
    tiled, shift, eps = _shifts(inputs, directions, steps)
    outputs = forward(tf.concat([tiled + shift, tiled - shift], axis=0))
    plus, minus = tf.split(tf.cast(outputs, _wide(outputs.dtype)), 2, axis=0)
    eps = tf.cast(eps, plus.dtype)
    derivatives = (plus - minus) / _broadcastable(2.0 * eps, plus.shape.rank)
    return _fold(derivatives, num_projections)


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
    tiled, shift, eps = _shifts(inputs, directions, steps)
    shifted = forward(tiled + shift)
    shifted = tf.cast(shifted, _wide(shifted.dtype))
    clean = _tile(tf.cast(outputs, shifted.dtype), num_projections)
    eps = tf.cast(eps, shifted.dtype)
    derivatives = (shifted - clean) / _broadcastable(eps, shifted.shape.rank)
    return _fold(derivatives, num_projections)


def _shifts(inputs, directions, steps):
    """`R` copies of the batch, their shifts `eps v` and the steps `eps`.

    The shift is computed in float32 (float64 for float64 inputs) and cast
    to the inputs' dtype; `eps` is returned tiled to `(R * batch,)`.
    """
    num_projections = directions.shape[0]
    tiled = _tile(inputs, num_projections)
    wide = _wide(inputs.dtype)
    eps = tf.cast(_tile(steps, num_projections), wide)
    shift = tf.cast(
        tf.reshape(tf.cast(directions, wide), tf.shape(tiled))
        * _broadcastable(eps, tiled.shape.rank),
        inputs.dtype,
    )
    return tiled, shift, eps


def _broadcastable(values, rank):
    """Reshapes `(n,)` to `(n, 1, ..., 1)` of the given rank."""
    return tf.reshape(values, [-1] + [1] * (rank - 1))


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
        replay: None for a network without random draws; else a function
            that resets the network's random state to the one it had
            before the pass that gave `outputs`
            (`randomness.RandomState.record`).
            Every pass then starts from that state and runs on a batch of
            the shape of `inputs` (one pass per direction and sign), so
            that it draws the same values: each `J v` is the derivative
            of the network at the draws of that pass.

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
            _, shift, eps = _shifts(inputs, directions[r : r + 1], steps)
            plus = replayed(inputs + shift)
            minus = replayed(inputs - shift)
            wide = _wide(plus.dtype)
            plus = tf.cast(plus, wide)
            eps = tf.cast(eps, wide)
            derivative = (plus - tf.cast(minus, wide)) / _broadcastable(
                2.0 * eps, plus.shape.rank
            )
            parts.append(_fold(derivative, 1))
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
