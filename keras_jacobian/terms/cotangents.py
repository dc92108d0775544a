"""The output-space vectors `v` whose Jacobian rows `v^T J` are matched."""

import tensorflow as tf

from keras_jacobian import jacobians
from keras_jacobian import steps
from keras_jacobian.terms.base import labels_to_indices


def select_cotangents(target, logits, labels, k, num_projections, seed):
    """The output-space vectors `v_r` whose rows `v_r^T J` are matched.

    Outputs with spatial axes, `(batch, *positions, classes)` (per-pixel
    logits of a segmentation network), are treated as one vector of
    `positions * classes` values: a vector `v_r` has the output's shape,
    and a class-indexed row picks one class at every position, so that
    its row is the sum over positions of the input gradients of the
    picked logits (one backward pass, as for one class of a classifier).

    Args:
        target: one of `TARGETS`.
        logits: the teacher's logits `(batch, classes)` or
            `(batch, *positions, classes)`; they pick the classes for
            `"teacher_top1"` (the top class at each position) and
            `"top_k"` (row `j`: the `j`-th class at each position).
        labels: labels for `"label"` (sparse or one-hot, one per example,
            or per position for outputs with spatial axes), else unused.
        k: number of classes for `"top_k"`.
        num_projections: number of random vectors for `"random"`.
        seed: a `keras.random.SeedGenerator` for `"random"`.

    Returns:
        A float32 tensor `(batch, rows) + logits.shape[1:]`: one-hot rows
        for the class-indexed targets (for `"all"`, one row per output
        value), unit vectors over every output value for `"random"`,
        orthonormal per example (`jacobians.orthogonal_directions`).
    """
    num_classes = logits.shape[-1]
    batch = tf.shape(logits)[0]
    dense = logits.shape.rank > 2
    if target == "teacher_top1":
        indices = tf.argmax(logits, axis=-1, output_type="int32")[:, None]
    elif target == "label":
        if dense:
            indices = dense_labels_to_indices(labels, logits)[:, None]
        else:
            examples = logits.shape[0]
            if examples is None:
                examples = batch
            indices = labels_to_indices(labels, num_classes, examples)
            indices = indices[:, None]
    elif target == "top_k":
        indices = tf.math.top_k(tf.cast(logits, "float32"), k=k).indices
        if dense:
            # (batch, *positions, k) to (batch, k, *positions).
            rank = indices.shape.rank
            indices = tf.transpose(
                indices, [0, rank - 1] + list(range(1, rank - 1))
            )
    elif target == "all":
        size = output_size(logits)
        if not isinstance(size, int):
            raise ValueError(
                "target='all' with estimator='exact' takes one row per "
                "output value, so it needs an output of known size. "
                f"Received an output of shape {tuple(logits.shape)}. Use "
                "estimator='vjp' (or 'jvp'), an unbiased estimate of the "
                "same Frobenius norm."
            )
        eye = tf.reshape(
            tf.eye(size, dtype="float32"), (1, size) + tuple(logits.shape[1:])
        )
        return tf.tile(eye, [batch] + [1] * logits.shape.rank)
    else:
        size = output_size(logits)
        # Orthonormal per example: `R = K` vectors give the exact
        # Frobenius norm, and fewer a lower variance than independent
        # unit vectors, with the same mean (each is uniform on the
        # sphere).
        vectors = steps.draw_for_replica(
            lambda n: jacobians.orthogonal_directions(
                n, size, num_projections, seed
            ),
            batch,
            axis=1,
        )
        vectors = tf.transpose(vectors, [1, 0, 2])
        if not dense:
            return vectors
        shape = tf.concat([[batch, num_projections], tf.shape(logits)[1:]], 0)
        return tf.reshape(vectors, shape)
    return tf.one_hot(indices, num_classes, dtype="float32")


def output_size(outputs):
    """Values per example: a Python int when known, else a tensor."""
    shape = outputs.shape[1:]
    if shape.is_fully_defined():
        return int(shape.num_elements())
    return tf.reduce_prod(tf.shape(outputs)[1:])


def dense_labels_to_indices(labels, logits):
    """Per-position labels as int32 class indices `(batch, *positions)`.

    Labels are class indices of shape `(batch, *positions)` or
    `(batch, *positions, 1)`, or one-hot `(batch, *positions, classes)`;
    the range and count checks are those of `labels_to_indices`.
    """
    num_classes = logits.shape[-1]
    if labels is None:
        return labels_to_indices(labels, num_classes)
    labels = tf.convert_to_tensor(labels)
    rank = logits.shape.rank
    if labels.shape.rank == rank and labels.shape[-1] == num_classes != 1:
        flat = tf.reshape(labels, [-1, num_classes])
    elif labels.shape.rank == rank - 1 or (
        labels.shape.rank == rank and labels.shape[-1] == 1
    ):
        flat = tf.reshape(labels, [-1])
    else:
        raise ValueError(
            "target='label' with per-position outputs "
            f"{tuple(logits.shape)} reads one label per position: class "
            f"indices of shape {tuple(logits.shape[:-1])} (or with a "
            f"trailing axis of 1), or one-hot labels of shape "
            f"{tuple(logits.shape)}. Received labels of shape "
            f"{tuple(labels.shape)}."
        )
    count = tf.reduce_prod(tf.shape(logits)[:-1])
    indices = labels_to_indices(flat, num_classes, count)
    return tf.reshape(indices, tf.shape(logits)[:-1])


def softmax_cotangents(cotangents, logits, temperature):
    """Maps class vectors `v` to `u = (dp/dz)^T v` for `p = softmax(z/T)`.

    A row of the Jacobian of the probabilities, `v^T dp/dx`, equals the
    vector-Jacobian product of the logits with `u`, so probability rows
    are computed from the logits' tape without recording the softmax.
    """
    p = tf.nn.softmax(tf.cast(logits, "float32") / temperature, axis=-1)
    p = p[:, None, :]
    vp = tf.reduce_sum(cotangents * p, axis=-1, keepdims=True)
    return p * (cotangents - vp) / temperature
