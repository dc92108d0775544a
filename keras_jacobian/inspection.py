"""Attention maps and input saliency of a distiller's networks, for display.

Used by the TensorBoard callbacks and by `plotting.save_transfer_grid`.
Everything here runs the networks in inference mode on a fixed batch and
returns NumPy-convertible tensors; nothing is trained.
"""

import tensorflow as tf

from keras_jacobian import attention_maps
from keras_jacobian import endpoints
from keras_jacobian import jacobians
from keras_jacobian import validation
from keras_jacobian.terms.attention import check_layer_pairs
from keras_jacobian.terms.base import OUTPUT
from keras_jacobian.terms.cotangents import select_cotangents

SALIENCY_TARGETS = ("teacher_top1", "label")


def take(x, count):
    """The first `count` examples of a tensor or of a dict of tensors."""
    if isinstance(x, dict):
        return {k: take(v, count) for k, v in x.items()}
    return x[:count]


def split_inputs(distiller, x):
    """The student's and the teacher's float inputs for batch `x`."""
    xs, xt, _ = distiller._split_inputs(x)
    return xs, xt


def layer_pairs_of(distiller):
    """The layer pairs of the distiller's attention terms, in order."""
    pairs = []
    for term in distiller.distillation_losses:
        for pair in getattr(term, "layer_pairs", []):
            if pair not in pairs:
                pairs.append(pair)
    return pairs


class AttentionReader:
    """Reads the spatial attention maps of layer pairs of a distiller.

    Args:
        distiller: a `Distiller`.
        layer_pairs: `(teacher layer, student layer)` name pairs.
        p: the power of the attention map.
    """

    def __init__(self, distiller, layer_pairs, p=2):
        self.layer_pairs = check_layer_pairs(layer_pairs, "AttentionReader")
        self.p = validation.check_number(p, "p", strict=True)
        self.teacher = endpoints.endpoint_model(
            distiller.teacher, [t for t, _ in self.layer_pairs], "teacher"
        )
        self.student = endpoints.endpoint_model(
            distiller.student, [s for _, s in self.layer_pairs], "student"
        )
        for model, index in ((self.teacher, 0), (self.student, 1)):
            for pair in self.layer_pairs:
                shape = model.output[pair[index]].shape
                attention_maps.check_feature_rank(
                    shape, f"Layer {pair[index]!r}"
                )

    def __call__(self, xs, xt):
        """Returns a list of `(teacher map, student map)`, each `(b, H, W)`.

        Each map is at its network's own resolution.
        """
        t_out = self.teacher(xt, training=False)
        s_out = self.student(xs, training=False)
        return [
            (
                attention_maps.spatial_attention_map(t_out[t], self.p),
                attention_maps.spatial_attention_map(s_out[s], self.p),
            )
            for t, s in self.layer_pairs
        ]


def input_saliency(distiller, xs, xt, target="teacher_top1", labels=None):
    """Input-gradient rows of teacher and student for one class each.

    The class is the teacher's top-1 prediction (or the label), the same
    for both networks, selected by the code `JacobianMatching` uses
    (`select_cotangents`) and computed by the same `jacobians.vjp_rows`,
    float16 scaling included: the rows are the term's rows.

    Args:
        distiller: a `Distiller` (its distillation outputs are compared).
        xs: the student's input batch.
        xt: the teacher's input batch.
        target: `"teacher_top1"` or `"label"`.
        labels: labels for `target="label"`.

    Returns:
        `(teacher_rows, student_rows, cosine)`: the gradients, shaped as
        each network's input, and the per-example cosine similarity of
        the two rows (the teacher's resized to the student's input size).
    """
    if target not in SALIENCY_TARGETS:
        raise ValueError(
            f"`target` must be one of {SALIENCY_TARGETS}. Received: "
            f"target={target!r}"
        )
    if target == "label" and distiller.distillation_output is not None:
        raise ValueError(
            "target='label' picks the labelled class of the distillation "
            "output, but this distiller's labels belong to the student's "
            "task head (`distillation_output`). Use target='teacher_top1'."
        )
    xs = tf.convert_to_tensor(xs, "float32")
    xt = tf.convert_to_tensor(xt, "float32")
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(xt)
        t_logits = distiller.teacher_endpoints(xt, training=False)[OUTPUT]
    cotangents = select_cotangents(target, t_logits, labels, None, 1, None)
    t_rows = jacobians.vjp_rows(tape, t_logits, xt, cotangents)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(xs)
        s_logits = distiller.student_endpoints(xs, training=False)[OUTPUT]
    s_rows = jacobians.vjp_rows(tape, s_logits, xs, cotangents)
    resized = jacobians.match_spatial_size(
        t_rows, jacobians.known_shape(s_rows)[2:]
    )
    t = jacobians.normalize_rows(jacobians.flatten_rows(resized))[:, 0]
    s = jacobians.normalize_rows(jacobians.flatten_rows(s_rows))[:, 0]
    cosine = tf.reduce_sum(t * s, axis=-1)
    return t_rows[:, 0], s_rows[:, 0], cosine


def saliency_map(rows):
    """`max_c |row|` per pixel: `(batch, H, W, C)` to `(batch, H, W)`."""
    return tf.reduce_max(tf.abs(tf.cast(rows, "float32")), axis=-1)
