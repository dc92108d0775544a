"""Matching intermediate feature maps, with an optional learnable adapter."""

import keras
import tensorflow as tf

from keras_jacobian import attention_maps
from keras_jacobian.terms.base import OUTPUT
from keras_jacobian.terms.base import DistillationTerm

ADAPTERS = (None, "conv", "dense", "auto")
LOSSES = ("mse", "mae")
_KERAS_LOSS_NAMES = {
    "mse": "mse",
    "mean_squared_error": "mse",
    "meansquarederror": "mse",
    "mae": "mae",
    "mean_absolute_error": "mae",
    "meanabsoluteerror": "mae",
}


def _check_layer_name(value, argument):
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"`{argument}` must be a layer name (a non-empty string), or "
            f"'{OUTPUT}' for the model's output. Received: "
            f"{argument}={value!r}"
        )


@keras.saving.register_keras_serializable(package="keras_jacobian")
class FeatureDistillation(DistillationTerm):
    """Matches a student feature map to a teacher feature map.

    The features are the outputs of the layers named `teacher_layer` and
    `student_layer` (`"output"` names a network's distillation output),
    read from the same forward pass as every other term (FitNets, Romero
    et al. 2015; "activation matching" of intermediate layers in Srinivas
    & Fleuret 2018). The per-example loss is the mean over feature values
    of the squared (`"mse"`) or absolute (`"mae"`) difference between the
    teacher's features and `adapter(student features)`.

    When the networks have different widths, a learnable adapter maps the
    student's channels to the teacher's: a 1x1 `Conv2D` for feature maps
    `(batch, H, W, C)` (`adapter="conv"`), a `Dense` layer for feature
    vectors `(batch, C)` (`adapter="dense"`), or the one that fits the rank
    (`"auto"`). The adapter is created in `build`, listed by `layers`, and
    trained with the student by the `Distiller` (it is part of
    `distiller.trainable_variables` and saved with the distiller). It is
    discarded with the distiller: the student alone does not use it.

    When the feature maps differ in spatial size (e.g. the networks see
    different resolutions), the teacher's map, a constant for the student,
    is resized to the student's by area weights.

    Args:
        teacher_layer: name of the teacher's layer, or `"output"`.
        student_layer: name of the student's layer, or `"output"`.
        adapter: `None` (channel counts must agree), `"conv"`, `"dense"`
            or `"auto"`.
        loss: `"mse"` or `"mae"`.
        name: metric name prefix, default `"feature_distillation"`.

    Example:

    ```python
    term = keras_jacobian.FeatureDistillation(
        teacher_layer="block2_conv", student_layer="conv2", adapter="conv"
    )
    distiller = keras_jacobian.Distiller(teacher, student, [term])
    ```
    """

    def __init__(
        self,
        teacher_layer,
        student_layer,
        adapter=None,
        loss="mse",
        name=None,
    ):
        super().__init__(name=name)
        _check_layer_name(teacher_layer, "teacher_layer")
        _check_layer_name(student_layer, "student_layer")
        if adapter not in ADAPTERS:
            raise ValueError(
                f"`adapter` must be one of {ADAPTERS}. Received: "
                f"adapter={adapter!r}"
            )
        if loss not in LOSSES:
            raise ValueError(
                f"`loss` must be one of {LOSSES}. Received: loss={loss!r}"
            )
        self.teacher_layer = teacher_layer
        self.student_layer = student_layer
        self.adapter = adapter
        self.loss = loss
        self.adapter_layer = None
        self._spatial_size = None

    @classmethod
    def from_keras(cls, term):
        """Converts a `keras.distillation.FeatureDistillation`.

        Its layer names carry over (`None`, the final output, becomes
        `"output"`); its loss must be a single mean squared or mean
        absolute error, whose value this term reproduces.
        """
        loss = term.loss
        if isinstance(loss, (list, tuple, dict)):
            raise ValueError(
                "Only a single loss can be converted from "
                "keras.distillation.FeatureDistillation. Received: "
                f"loss={loss!r}. Use one keras_jacobian.FeatureDistillation "
                "per pair of layers."
            )
        key = getattr(loss, "name", None) or getattr(loss, "__name__", "")
        if isinstance(loss, str):
            key = loss
        key = str(key).lower()
        if key not in _KERAS_LOSS_NAMES:
            raise ValueError(
                "keras.distillation.FeatureDistillation is accepted with a "
                f"mean squared or mean absolute error. Received: loss={loss!r}"
                ". For other comparisons write a DistillationTerm."
            )
        return cls(
            teacher_layer=term.teacher_layer_name or OUTPUT,
            student_layer=term.student_layer_name or OUTPUT,
            loss=_KERAS_LOSS_NAMES[key],
        )

    @property
    def teacher_endpoints(self):
        return (self.teacher_layer,)

    @property
    def student_endpoints(self):
        return (self.student_layer,)

    @property
    def layers(self):
        return [] if self.adapter_layer is None else [self.adapter_layer]

    def build(self, teacher_shapes, student_shapes):
        t = tuple(teacher_shapes[self.teacher_layer])
        s = tuple(student_shapes[self.student_layer])
        where = (
            f"FeatureDistillation(teacher_layer={self.teacher_layer!r}, "
            f"student_layer={self.student_layer!r})"
        )
        if len(t) != len(s):
            raise ValueError(
                f"{where} compares features of the same rank. Received: "
                f"teacher {t}, student {s}. Pick layers of the same kind "
                "(two feature maps, or two feature vectors)."
            )
        self._spatial_size = None
        if len(t) > 2 and t[1:-1] != s[1:-1]:
            if len(t) != 4:
                raise ValueError(
                    f"{where}: feature maps of different spatial sizes can "
                    f"only be resized in 2-D. Received: teacher {t}, "
                    f"student {s}."
                )
            self._spatial_size = s[1:-1]
        kind = self.adapter
        if kind == "auto":
            kind = "conv" if len(s) == 4 else "dense"
        if kind is None:
            self.adapter_layer = None
            if t[-1] != s[-1]:
                raise ValueError(
                    f"{where}: the teacher's features have {t[-1]} "
                    f"channels and the student's {s[-1]}. Received: "
                    f"teacher {t}, student {s}. Pass adapter='auto' (a "
                    "learnable 1x1 convolution or dense layer mapping the "
                    "student's channels to the teacher's), or pick layers "
                    "of equal width."
                )
            return
        if kind == "conv" and len(s) != 4:
            raise ValueError(
                f"{where}: adapter='conv' needs 4-D feature maps "
                f"(batch, height, width, channels). Received: student {s}. "
                "Use adapter='dense' or 'auto'."
            )
        if kind == "dense" and len(s) != 2:
            raise ValueError(
                f"{where}: adapter='dense' needs 2-D features "
                f"(batch, channels). Received: student {s}. Use "
                "adapter='conv' or 'auto'."
            )
        if kind == "conv":
            layer = keras.layers.Conv2D(t[-1], 1, name=f"{self.name}_adapter")
        else:
            layer = keras.layers.Dense(t[-1], name=f"{self.name}_adapter")
        layer.build(s)
        self.adapter_layer = layer

    def teacher_targets(self, ctx):
        features = tf.cast(ctx.outputs[self.teacher_layer], "float32")
        if self._spatial_size is not None:
            features = attention_maps.resize_features(
                features, self._spatial_size
            )
        return {"features": features}

    def per_example_loss(self, targets, ctx):
        student = ctx.outputs[self.student_layer]
        if self.adapter_layer is not None:
            student = self.adapter_layer(student)
        diff = targets["features"] - tf.cast(student, "float32")
        diff = tf.reshape(diff, [tf.shape(diff)[0], -1])
        if self.loss == "mse":
            return tf.reduce_mean(tf.square(diff), axis=-1)
        return tf.reduce_mean(tf.abs(diff), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "teacher_layer": self.teacher_layer,
                "student_layer": self.student_layer,
                "adapter": self.adapter,
                "loss": self.loss,
            }
        )
        return config
