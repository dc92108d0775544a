"""Matching intermediate feature maps, with an optional learnable adapter."""

import warnings

import keras
import tensorflow as tf

from keras_jacobian import attention_maps
from keras_jacobian.terms import keras_losses
from keras_jacobian.terms.base import OUTPUT
from keras_jacobian.terms.base import DistillationTerm
from keras_jacobian.terms.logits import overrides_compute_loss
from keras_jacobian.terms.logits import per_batch_loss

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


def _renamed(kwargs, old, new, value):
    """Reads the 0.1.0 argument `old` (renamed `new`), with a warning."""
    if old not in kwargs:
        return value
    if value is not None:
        raise ValueError(
            f"Pass `{new}` only (`{old}` is its former name). Received "
            f"both: {new}={value!r}, {old}={kwargs[old]!r}."
        )
    warnings.warn(
        f"FeatureDistillation's `{old}` is now `{new}`, as in "
        "keras.distillation.FeatureDistillation; the old name will be "
        "removed in 0.3.0.",
        DeprecationWarning,
        stacklevel=3,
    )
    return kwargs.pop(old)


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

    The features are the outputs of the layers named `teacher_layer_name`
    and `student_layer_name` (`"output"` or `None` names a network's
    distillation output, as in `keras.distillation.FeatureDistillation`),
    read from the same forward pass as every other term (FitNets, Romero
    et al. 2015; "activation matching" of intermediate layers in Srinivas
    & Fleuret 2018). The per-example loss is the mean over feature values
    of the squared (`"mse"`) or absolute (`"mae"`) difference between the
    teacher's features and `adapter(student features)`. The arguments,
    their order and defaults are those of
    `keras.distillation.FeatureDistillation` (`loss` first), followed by
    the library's `adapter`.

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
        loss: `"mse"` (default) or `"mae"`, or any Keras loss (a name, a
            function or a `keras.losses.Loss`), reduced over the feature
            values as in `keras.distillation.FeatureDistillation` (a mean,
            or a sum for `reduction="sum"`). A subclass that overrides
            `compute_loss` is run as Keras runs it, on the teacher's
            features and the (adapted) student's, one value per batch.
        teacher_layer_name: name of the teacher's layer, or `"output"`
            (or `None`) for its output.
        student_layer_name: name of the student's layer, or `"output"`
            (or `None`) for its output.
        adapter: `None` (channel counts must agree), `"conv"`, `"dense"`
            or `"auto"`.
        name: metric name prefix, default `"feature_distillation"`.

    Example:

    ```python
    term = keras_jacobian.FeatureDistillation(
        teacher_layer_name="block2_conv",
        student_layer_name="conv2",
        adapter="conv",
    )
    distiller = keras_jacobian.Distiller(teacher, student, [term])
    ```
    """

    def __init__(
        self,
        loss="mse",
        teacher_layer_name=None,
        student_layer_name=None,
        adapter=None,
        name=None,
        **kwargs,
    ):
        super().__init__(name=name)
        teacher_layer_name = _renamed(
            kwargs, "teacher_layer", "teacher_layer_name", teacher_layer_name
        )
        student_layer_name = _renamed(
            kwargs, "student_layer", "student_layer_name", student_layer_name
        )
        if kwargs:
            raise ValueError(
                "Unexpected arguments to FeatureDistillation: "
                f"{sorted(kwargs)}."
            )
        if teacher_layer_name is None:
            teacher_layer_name = OUTPUT
        if student_layer_name is None:
            student_layer_name = OUTPUT
        _check_layer_name(teacher_layer_name, "teacher_layer_name")
        _check_layer_name(student_layer_name, "student_layer_name")
        if adapter not in ADAPTERS:
            raise ValueError(
                f"`adapter` must be one of {ADAPTERS}. Received: "
                f"adapter={adapter!r}"
            )
        self.loss_fn = None
        if loss not in LOSSES:
            self.loss_fn = keras_losses.loss_function(
                loss, "FeatureDistillation"
            )
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.adapter = adapter
        self.loss = loss
        self.adapter_layer = None
        self._spatial_size = None
        # A summed Keras loss reads the global batch size.
        self.synchronizes = keras_losses.sums(self.loss_fn)
        # A subclass's `compute_loss` is run as Keras runs it: one value
        # per batch.
        self.per_batch = overrides_compute_loss(self, FeatureDistillation)

    @classmethod
    def from_keras(cls, term):
        """Converts a `keras.distillation.FeatureDistillation` with a
        single loss, keeping its layer names and its loss's meaning."""
        loss = term.loss
        key = loss if isinstance(loss, str) else getattr(loss, "__name__", "")
        return cls(
            loss=_KERAS_LOSS_NAMES.get(str(key).lower(), loss),
            teacher_layer_name=term.teacher_layer_name,
            student_layer_name=term.student_layer_name,
        )

    @property
    def teacher_endpoints(self):
        return (self.teacher_layer_name,)

    @property
    def student_endpoints(self):
        return (self.student_layer_name,)

    @property
    def layers(self):
        return [] if self.adapter_layer is None else [self.adapter_layer]

    def build(self, teacher_shapes, student_shapes):
        t = tuple(teacher_shapes[self.teacher_layer_name])
        s = tuple(student_shapes[self.student_layer_name])
        where = (
            "FeatureDistillation("
            f"teacher_layer_name={self.teacher_layer_name!r}, "
            f"student_layer_name={self.student_layer_name!r})"
        )
        if len(t) != len(s):
            raise ValueError(
                f"{where} compares features of the same rank. Received: "
                f"teacher {t}, student {s}. Pick layers of the same kind "
                "(two feature maps, or two feature vectors)."
            )
        self._spatial_size = None
        unknown = None in t[1:-1] + s[1:-1]
        if len(t) == 4 and unknown:
            # Sizes known only as the step runs: resized then (to the
            # identity when they agree).
            self._spatial_size = s[1:-1]
        elif len(t) > 2 and t[1:-1] != s[1:-1]:
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
        features = tf.cast(ctx.outputs[self.teacher_layer_name], "float32")
        if self._spatial_size is not None:
            size = ctx.student_spatial_size(
                self.student_layer_name,
                self._spatial_size,
                f"FeatureDistillation({self.teacher_layer_name!r}, "
                f"{self.student_layer_name!r})",
            )
            features = attention_maps.resize_features(features, size)
        return {"features": features}

    def per_example_loss(self, targets, ctx):
        student = ctx.outputs[self.student_layer_name]
        if self.adapter_layer is not None:
            student = self.adapter_layer(student)
        if self.per_batch:
            return per_batch_loss(self, targets["features"], student)
        if self.loss_fn is not None:
            return self._keras_loss(targets["features"], student)
        diff = targets["features"] - tf.cast(student, "float32")
        diff = tf.reshape(diff, [tf.shape(diff)[0], -1])
        if self.loss == "mse":
            return tf.reduce_mean(tf.square(diff), axis=-1)
        return tf.reduce_mean(tf.abs(diff), axis=-1)

    def _keras_loss(self, teacher_features, student_features):
        values = keras_losses.per_example(
            self.loss_fn, teacher_features, tf.cast(student_features, "float32")
        )
        return keras_losses.reduce_example(self.loss_fn, values)

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        """The loss of a batch of features, a scalar (as Keras'
        `compute_loss`; without the adapter)."""
        if self.loss_fn is not None:
            values = self._keras_loss(
                tf.cast(teacher_outputs, "float32"), student_outputs
            )
        else:
            diff = tf.cast(teacher_outputs, "float32") - tf.cast(
                student_outputs, "float32"
            )
            diff = tf.reshape(diff, [tf.shape(diff)[0], -1])
            reduce = tf.square if self.loss == "mse" else tf.abs
            values = tf.reduce_mean(reduce(diff), axis=-1)
        return tf.reduce_mean(values)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "teacher_layer_name": self.teacher_layer_name,
                "student_layer_name": self.student_layer_name,
                "adapter": self.adapter,
                "loss": (
                    self.loss
                    if self.loss in LOSSES
                    else keras_losses.serialize(
                        self.loss, f"The term {self.name!r}"
                    )
                ),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["loss"] = keras_losses.deserialize(config.get("loss", "mse"))
        return cls(**config)
