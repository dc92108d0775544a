"""Accepts Keras' own distillation losses, with their Keras meaning."""

import keras
import tensorflow as tf

from keras_jacobian.terms.base import OUTPUT
from keras_jacobian.terms.base import DistillationTerm


def _keras_distillation_module():
    return getattr(keras, "distillation", None)


# Keras' base class, for `from keras_jacobian import DistillationLoss`:
# its subclasses are terms here (`KerasDistillationLoss`).
DistillationLoss = getattr(
    _keras_distillation_module(), "DistillationLoss", None
)


def _single(loss):
    return not isinstance(loss, (list, tuple, dict))


def convert_term(term):
    """Returns a `DistillationTerm` for `term`, or raises a clear error.

    `keras.distillation.LogitsDistillation` and `FeatureDistillation` with
    a single loss become the library's terms of the same name and the
    same arguments (so the same values, computed per example). Any other
    `keras.distillation.DistillationLoss` (a subclass of your own, or a
    nested structure of losses) runs as it is in `KerasDistillationLoss`.
    """
    if isinstance(term, DistillationTerm):
        return term
    module = _keras_distillation_module()
    if module is None or not isinstance(term, module.DistillationLoss):
        raise ValueError(
            "Each distillation loss must be a keras_jacobian term "
            "(LogitsDistillation, JacobianMatching, NoiseDistillation, ...) "
            "or a keras.distillation.DistillationLoss. Received: "
            f"{term!r}"
        )
    if type(term) is module.LogitsDistillation and _single(term.loss):
        from keras_jacobian.terms.logits import LogitsDistillation

        return LogitsDistillation(temperature=term.temperature, loss=term.loss)
    if type(term) is module.FeatureDistillation and _single(term.loss):
        from keras_jacobian.terms.features import FeatureDistillation

        return FeatureDistillation.from_keras(term)
    return KerasDistillationLoss(term)


@keras.saving.register_keras_serializable(package="keras_jacobian")
class KerasDistillationLoss(DistillationTerm):
    """Runs a `keras.distillation.DistillationLoss` as a term.

    The loss reads the outputs of the layers named by its
    `teacher_layer_name` and `student_layer_name` attributes (the
    networks' outputs when absent or `None`), from the step's single
    forward pass; `validate_model_compatibility(teacher, student)` runs
    at construction and `validate_outputs` before each `compute_loss`,
    as in Keras. Its value is one number per batch: `sample_weight` does
    not weight it (Keras ignores sample weights altogether).

    Args:
        loss: the `keras.distillation.DistillationLoss`.
        name: metric name prefix, default the loss's class name in snake
            case.
    """

    per_batch = True

    def __init__(self, loss, name=None):
        from keras_jacobian.terms.base import _snake_case

        super().__init__(name=name or _snake_case(type(loss).__name__))
        self.keras_loss = loss

    def _layer(self, role):
        return getattr(self.keras_loss, f"{role}_layer_name", None) or OUTPUT

    @property
    def teacher_endpoints(self):
        return (self._layer("teacher"),)

    @property
    def student_endpoints(self):
        return (self._layer("student"),)

    def validate_model_compatibility(self, teacher, student):
        self.keras_loss.validate_model_compatibility(teacher, student)

    def teacher_targets(self, ctx):
        return {"features": ctx.outputs[self._layer("teacher")]}

    def per_example_loss(self, targets, ctx):
        teacher = targets["features"]
        student = ctx.outputs[self._layer("student")]
        self.keras_loss.validate_outputs(teacher, student)
        value = self.keras_loss.compute_loss(teacher, student)
        value = tf.cast(value, "float32")
        if value.shape.rank != 0:
            raise ValueError(
                f"{type(self.keras_loss).__name__}.compute_loss must return "
                f"a scalar. Received shape {tuple(value.shape)}."
            )
        return tf.fill(tf.shape(tf.nest.flatten(teacher)[0])[:1], value)

    def copy(self):
        # Keras' losses hold no state: the copy may share the object.
        return KerasDistillationLoss(self.keras_loss, name=self.name)

    def get_config(self):
        config = super().get_config()
        config["loss"] = keras.saving.serialize_keras_object(self.keras_loss)
        # Read back now: an error when saving, not when loading.
        try:
            keras.saving.deserialize_keras_object(config["loss"])
        except Exception as error:
            raise ValueError(
                f"The term {self.name!r} cannot be saved: its "
                f"{type(self.keras_loss).__name__} does not load back from "
                f"its configuration ({type(error).__name__}: {error}). "
                "Keras' own terms cannot load a nested structure of losses, "
                "for instance. Save the student alone "
                "(`distiller.student.save(...)`), or save weights only "
                "(`distiller.save_weights(...)`). Received: "
                f"{self.keras_loss!r}"
            ) from error
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return cls(**config)
