"""Attention transfer and the input Jacobians of attention maps."""

import keras
import tensorflow as tf

from keras_jacobian import attention_maps
from keras_jacobian import jacobians
from keras_jacobian import validation
from keras_jacobian.terms.base import DistillationTerm


def check_layer_pairs(layer_pairs, where):
    """Returns `layer_pairs` as a list of `(teacher, student)` name pairs."""
    if (
        isinstance(layer_pairs, (list, tuple))
        and len(layer_pairs) == 2
        and all(isinstance(name, str) for name in layer_pairs)
    ):
        layer_pairs = [layer_pairs]
    pairs = []
    valid = isinstance(layer_pairs, (list, tuple)) and len(layer_pairs) > 0
    for pair in layer_pairs if valid else []:
        if (
            not isinstance(pair, (list, tuple))
            or len(pair) != 2
            or not all(isinstance(n, str) and n for n in pair)
        ):
            valid = False
            break
        pairs.append((pair[0], pair[1]))
    if not valid:
        raise ValueError(
            f"{where}: `layer_pairs` must be a non-empty list of "
            "(teacher layer name, student layer name) pairs, e.g. "
            "[('block1_conv', 'conv1'), ('block2_conv', 'conv2')]. "
            f"Received: layer_pairs={layer_pairs!r}"
        )
    return pairs


def _check_p(p):
    p = validation.check_number(p, "p", strict=True)
    return int(p) if p.is_integer() else p


class _AttentionTerm(DistillationTerm):
    """Shared parts of the attention terms: layer pairs and map sizes."""

    def __init__(self, layer_pairs, p=2, name=None):
        super().__init__(name=name)
        self.layer_pairs = check_layer_pairs(layer_pairs, type(self).__name__)
        self.p = _check_p(p)
        self._student_sizes = None

    @property
    def teacher_endpoints(self):
        return tuple(t for t, _ in self.layer_pairs)

    @property
    def student_endpoints(self):
        return tuple(s for _, s in self.layer_pairs)

    def build(self, teacher_shapes, student_shapes):
        sizes = []
        for t_name, s_name in self.layer_pairs:
            t = tuple(teacher_shapes[t_name])
            s = tuple(student_shapes[s_name])
            where = f"{type(self).__name__} pair ({t_name!r}, {s_name!r})"
            attention_maps.check_feature_rank(t, f"{where}, teacher")
            attention_maps.check_feature_rank(s, f"{where}, student")
            if len(t) != len(s) or len(t) > 4:
                raise ValueError(
                    f"{where}: teacher and student feature maps must have "
                    "the same number of spatial axes (1 or 2). Received: "
                    f"teacher {t}, student {s}."
                )
            sizes.append(s[1:-1])
        self._student_sizes = sizes

    def _teacher_map(self, ctx, i):
        """The teacher's spatial map of pair `i`, at the student's size."""
        t_name, s_name = self.layer_pairs[i]
        features = ctx.outputs[t_name]
        maps = attention_maps.spatial_attention_map(features, self.p)
        size = ctx.student_spatial_size(
            s_name,
            self._student_sizes[i],
            f"{type(self).__name__} pair ({t_name!r}, {s_name!r})",
        )
        return attention_maps.resize_maps(maps, size)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"layer_pairs": [list(p) for p in self.layer_pairs], "p": self.p}
        )
        return config


@keras.saving.register_keras_serializable(package="keras_jacobian")
class AttentionTransfer(_AttentionTerm):
    """Matches normalised attention maps of teacher and student layers.

    Attention transfer (Zagoruyko & Komodakis, 2017), used by Srinivas &
    Fleuret (2018) in their transfer experiments. For each pair of layers
    the attention map `Q = mean_c |A_c|^p` of each network is flattened and
    L2-normalised per example; the per-example loss is the squared distance
    `||Q_T / ||Q_T|| - Q_S / ||Q_S|| ||^2`, summed over the pairs. Each
    term lies in [0, 2] for `p` even.

    Maps of different spatial sizes: the teacher's map, a constant for the
    student, is resized to the student's map size by area weights (average
    pooling for integer factors) before normalisation.

    Args:
        layer_pairs: list of `(teacher layer name, student layer name)`
            pairs; the layers output feature maps `(batch, H, W, C)`.
        p: the power of the attention map, > 0 (default 2).
        name: metric name prefix, default `"attention_transfer"`.

    Example:

    ```python
    term = keras_jacobian.AttentionTransfer(
        [("t_conv1", "s_conv1"), ("t_conv2", "s_conv2")]
    )
    distiller = keras_jacobian.Distiller(teacher, student, [term])
    ```
    """

    def teacher_targets(self, ctx):
        return {
            f"map_{i}": tf.stop_gradient(
                attention_maps.normalize_maps(self._teacher_map(ctx, i))
            )
            for i in range(len(self.layer_pairs))
        }

    def per_example_loss(self, targets, ctx):
        total = 0.0
        for i, (_, s_name) in enumerate(self.layer_pairs):
            student = attention_maps.attention_map(ctx.outputs[s_name], self.p)
            diff = targets[f"map_{i}"] - student
            total = total + tf.reduce_sum(tf.square(diff), axis=-1)
        return total


@keras.saving.register_keras_serializable(package="keras_jacobian")
class AttentionJacobianMatching(_AttentionTerm):
    """Matches input gradients of the attention maps' largest entries.

    The Jacobian counterpart of attention transfer used by Srinivas &
    Fleuret (2018) for transfer learning. For each pair of layers and each
    example:

    1. The teacher's spatial attention map `Q_T = mean_c |A_c|^p` (not
       normalised) is resized to the size of the student's map (area
       weights; nothing changes when the sizes agree) and its largest
       entry located, per example.
    2. The teacher's row is the input gradient of that entry of the
       resized map (for equal sizes, of the teacher's own largest entry);
       the student's row is the input gradient of the student's map
       `Q_S` at the same position. Positions therefore correspond on the
       student's grid, i.e. the same region of the image.
    3. With `normalize=True` both rows are flattened and L2-normalised and
       the loss is their squared distance (`2 - 2 cos`), as in
       `JacobianMatching`; with `normalize=False` the raw rows are
       compared. The losses are summed over the pairs.

    When the networks see different resolutions the teacher's row is
    resized to the student's input size and scaled by the area ratio (as
    in `JacobianMatching`, see `jacobians.match_spatial_size`): a student
    that is the teacher behind a nearest-neighbour upsampling has the
    teacher's raw rows.

    Each row is one vector-Jacobian product, taken from the tape that
    watched the input while the network ran (the map is recomputed inside
    that tape from the recorded feature map): no extra forward pass. The
    student's row is differentiated again by the `Distiller` (double
    backprop), so the term trains the layers below the student's layer.
    The paper notes that deep layers are harder to match; shallow ones
    transfer better.

    Args:
        layer_pairs: list of `(teacher layer name, student layer name)`
            pairs; the layers output feature maps `(batch, H, W, C)`.
        p: the power of the attention map, > 0 (default 2).
        normalize: L2-normalise each row per example before comparing.
        name: metric name prefix, default `"attention_jacobian_matching"`.

    Example:

    ```python
    term = keras_jacobian.AttentionJacobianMatching([("t_conv1", "s_conv1")])
    distiller = keras_jacobian.Distiller(teacher, student, [term])
    ```
    """

    needs_input_gradients = True

    def __init__(self, layer_pairs, p=2, normalize=True, name=None):
        super().__init__(layer_pairs, p=p, name=name)
        self.normalize = bool(normalize)

    def _rows(self, ctx, flat_maps, positions):
        """Input gradients of `flat_maps[b, positions[b]]`, `(b, 1, ...)`."""
        cotangents = tf.one_hot(
            positions, tf.shape(flat_maps)[-1], dtype="float32"
        )
        return jacobians.vjp_rows(
            ctx.tape, flat_maps, ctx.inputs, cotangents[:, None]
        )

    def teacher_targets(self, ctx):
        targets = {}
        for i in range(len(self.layer_pairs)):
            with ctx.tape:
                flat = attention_maps.flatten_maps(self._teacher_map(ctx, i))
            positions = tf.argmax(
                tf.stop_gradient(flat), axis=-1, output_type="int32"
            )
            rows = self._rows(ctx, flat, positions)
            targets[f"rows_{i}"] = tf.stop_gradient(rows)
            targets[f"positions_{i}"] = positions
        return targets

    def per_example_loss(self, targets, ctx):
        total = 0.0
        for i, (_, s_name) in enumerate(self.layer_pairs):
            with ctx.tape:
                maps = attention_maps.spatial_attention_map(
                    ctx.outputs[s_name], self.p
                )
                flat = attention_maps.flatten_maps(maps)
            student = self._rows(ctx, flat, targets[f"positions_{i}"])
            teacher = jacobians.match_spatial_size(
                targets[f"rows_{i}"], ctx.input_dims()
            )
            t = jacobians.flatten_rows(teacher)
            s = jacobians.flatten_rows(student)
            if self.normalize:
                t = jacobians.normalize_rows(t)
                s = jacobians.normalize_rows(s)
            total = total + tf.reduce_sum(tf.square(t - s), axis=[1, 2])
        return total

    def get_config(self):
        config = super().get_config()
        config["normalize"] = self.normalize
        return config
