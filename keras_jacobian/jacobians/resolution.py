"""Teacher rows resampled to the student's input grid."""

import tensorflow as tf


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
