"""The protocol every distillation term follows, and the step context.

A training step runs in two phases, so that the teacher's part can be
computed once and cached when the data does not change between epochs:

1. `teacher_targets(ctx)` reads the teacher's outputs (and, through
   `ctx.teacher_rows`, its input Jacobian rows) and returns a dict of
   per-example tensors: the targets the student is trained towards.
2. `per_example_loss(targets, ctx)` compares the student with those
   targets and returns one loss value per example, shape `(batch,)`.

The `Distiller` reduces that vector over the batch, applies the term's
weight and the scaling for `tf.distribute` replicas, in one place.
"""

import re

import tensorflow as tf

from keras_jacobian import jacobians

OUTPUT = "output"
"""Endpoint name of a network's (distillation) output, usually logits."""


def _snake_case(name):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class StepContext:
    """What a term may read during one step, for one side of the transfer.

    Attributes:
        inputs: the input batch this network saw (watched by `tape`).
        outputs: dict from endpoint name (`"output"` or a layer name) to
            the tensor that network produced for it.
        tape: a persistent `tf.GradientTape` that watched `inputs`, or
            `None` when no term asked for input gradients.
        labels: the batch's labels, or `None`.
        training: whether this is a training step.
        seed: a `keras.random.SeedGenerator` for terms that draw noise.
        forward: a function `forward(inputs) -> outputs dict` that runs the
            same network again on other inputs (used by noise terms only).
        input_shape: the network's input shape, without the batch axis.
    """

    def __init__(
        self,
        inputs,
        outputs,
        tape,
        labels,
        training,
        seed,
        forward,
        input_shape,
    ):
        self.inputs = inputs
        self.outputs = outputs
        self.tape = tape
        self.labels = labels
        self.training = training
        self.seed = seed
        self.forward = forward
        self.input_shape = input_shape

    def rows(self, endpoint, cotangents):
        """Jacobian rows `v^T d(endpoint)/dx`, shape `(batch, rows, ...)`."""
        if self.tape is None:
            raise RuntimeError(
                "A term asked for input gradients without declaring "
                "`needs_input_gradients = True`."
            )
        return jacobians.vjp_rows(
            self.tape, self.outputs[endpoint], self.inputs, cotangents
        )


class DistillationTerm:
    """Base class of the loss terms a `Distiller` combines.

    Subclasses set the class attributes below and implement
    `teacher_targets` and `per_example_loss`; they may override `build` to
    check shapes and create layers trained with the student (adapters).

    Class attributes:
        needs_input_gradients: the term reads Jacobian rows of the teacher
            or the student, so the step must watch the input.
        cacheable: the teacher targets depend on the example only (not on
            random draws), so they may be computed once and reused.

    Args:
        name: the term's name; its metric is logged as `f"{name}_loss"`.
            Defaults to the class name in snake case.
    """

    needs_input_gradients = False
    cacheable = True

    def __init__(self, name=None):
        if name is not None and not isinstance(name, str):
            raise ValueError(
                f"`name` must be a string or None. Received: name={name!r}"
            )
        self.name = name or _snake_case(type(self).__name__)

    @property
    def teacher_endpoints(self):
        """Teacher endpoints (`"output"` or layer names) the term reads."""
        return (OUTPUT,)

    @property
    def student_endpoints(self):
        """Student endpoints (`"output"` or layer names) the term reads."""
        return (OUTPUT,)

    @property
    def layers(self):
        """Keras layers owned by the term and trained with the student."""
        return []

    def build(self, teacher_shapes, student_shapes):
        """Checks the endpoint shapes and creates any layers.

        Args:
            teacher_shapes: dict endpoint -> shape (with batch axis) for the
                teacher, plus `"input"` for the teacher's input shape.
            student_shapes: the same for the student.
        """

    def check_models(self, teacher, student):
        """Checks the networks themselves (not only shapes); may raise.

        Args:
            teacher: the teacher's endpoint model.
            student: the student's endpoint model.
        """

    def teacher_targets(self, ctx):
        """Returns a dict of per-example target tensors from the teacher."""
        raise NotImplementedError

    def per_example_loss(self, targets, ctx):
        """Returns the loss of each example, a float32 tensor `(batch,)`."""
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def class_count(shape):
    """The size of the last axis of a logits shape, or None."""
    return None if shape is None else shape[-1]


def labels_to_indices(labels, num_classes):
    """Turns sparse or one-hot labels into int32 class indices `(batch,)`."""
    if labels is None:
        raise ValueError(
            "This term needs labels (target='label'), but the data has "
            "none. Pass `(x, y)` to `fit`, or pick target='teacher_top1'."
        )
    labels = tf.convert_to_tensor(labels)
    if (
        labels.shape.rank == 2
        and labels.shape[-1] == num_classes
        and (num_classes > 1)
    ):
        return tf.argmax(labels, axis=-1, output_type="int32")
    return tf.cast(tf.reshape(labels, [-1]), "int32")
