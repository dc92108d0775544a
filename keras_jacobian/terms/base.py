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

import copy
import re

import keras
import tensorflow as tf

from keras_jacobian import jacobians
from keras_jacobian import label_range

_SHARED = (keras.losses.Loss,)
if getattr(keras, "distillation", None) is not None:
    _SHARED += (keras.distillation.DistillationLoss,)

OUTPUT = "output"
"""Endpoint name of a network's (distillation) output, usually logits."""


def _leaves(value):
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    return [value]


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
        seed: a `keras.random.SeedGenerator` for terms that draw noise.
        forward: a function `forward(inputs) -> outputs dict` that runs the
            same network again on other inputs (used by noise terms only).
        input_shape: the network's input shape, without the batch axis.
        sample_weight: the batch's sample weights `(batch,)`, or `None`
            (read by terms whose scale is a mean over the batch).
        precision: the coarsest float dtype name the network computes in
            (`jacobians.network_precision`), or `None` if unknown.
        student_shapes: on the teacher's side of a training or evaluation
            step, a dict from the student's endpoint names to their
            shapes (ints where known, scalar int32 tensors otherwise), so
            that the teacher's maps can be resized to the student's when
            their sizes are known only as the step runs; else None.
        replay: None, or a function that resets the network's random
            state (seed generators) to the one it had before computing
            `outputs`, so that a pass on a batch of the same shape draws
            the same values (`randomness.RandomState.record`).
    """

    def __init__(
        self,
        inputs,
        outputs,
        tape,
        labels,
        seed,
        forward,
        input_shape,
        sample_weight=None,
        precision=None,
        replay=None,
    ):
        self.inputs = inputs
        self.outputs = outputs
        self.tape = tape
        self.labels = labels
        self.seed = seed
        self.forward = forward
        self.input_shape = input_shape
        self.sample_weight = sample_weight
        self.precision = precision
        self.student_shapes = None
        self.replay = replay

    def student_spatial_size(self, endpoint, known, where):
        """The spatial size of a student's endpoint, for resizing to it.

        Args:
            endpoint: the student's endpoint name.
            known: its spatial size from the model (None entries for
                axes unknown until the step runs).
            where: the term's description, for the message.

        Returns:
            `known` when fully known, else the size read from the
            student's output of this step (ints and scalar tensors).
        """
        if None not in tuple(known):
            return tuple(known)
        if self.student_shapes is None:
            raise ValueError(
                f"{where} resizes the teacher's maps to the size of the "
                f"student's {endpoint!r}, which is unknown until the "
                f"student runs (size {tuple(known)}: a model built on "
                "`keras.Input((None, None, C))`), so the teacher's "
                "targets cannot be computed without the student, e.g. by "
                "`cache_teacher`. Train without caching, or build the "
                "networks on fixed input shapes."
            )
        return tuple(self.student_shapes[endpoint][1:-1])

    def input_dims(self):
        """The input's shape without batch: ints where known, else tensors.

        Axes unknown in both `inputs.shape` and `input_shape` (models
        built on `keras.Input((None, None, C))`) are read when the step
        runs, as scalar int32 tensors.
        """
        fallback = (None,) + tuple(self.input_shape or ())
        if len(fallback) != self.inputs.shape.rank:
            fallback = None
        return jacobians.known_shape(self.inputs, fallback)[1:]

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
        synchronizes: the term's value reads a mean over the global batch
            (an all-reduce across replicas), so on several replicas the
            step computes it even at weight 0 (a collective cannot sit in
            a `tf.cond`).
        reads_labels: the term reads the batch's labels as classes of the
            distillation output (`JacobianMatching(target="label")`), so
            it cannot serve a student whose labels belong to another head
            (`distillation_output`).
        reads_logits: the term reads the distillation output as logits
            (it applies a softmax, or differentiates them), so networks
            whose output is already a softmax are refused.
        per_batch: the term's value is one number per batch (a Keras
            `DistillationLoss`), which `sample_weight` does not weight.

    Args:
        name: the term's name; its metric is logged as `f"{name}_loss"`.
            Defaults to the class name in snake case.
    """

    needs_input_gradients = False
    cacheable = True
    reads_labels = False
    synchronizes = False
    reads_logits = False
    per_batch = False
    # The term runs the networks on perturbed copies of the input.
    perturbs_inputs = False

    def __init__(self, name=None):
        if name is not None and not isinstance(name, str):
            raise ValueError(
                f"`name` must be a string or None. Received: name={name!r}"
            )
        self.name = name or _snake_case(type(self).__name__)

    @property
    def uses_input_jacobians(self):
        """The term differentiates the networks with respect to their
        input, by any method (reverse mode, forward mode, differences)."""
        return self.needs_input_gradients

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

    def validate_model_compatibility(self, teacher, student):
        """Checks the networks as given to the `Distiller` (Keras' name).

        Args:
            teacher: the teacher model.
            student: the student model.
        """

    def validate_outputs(self, teacher_outputs, student_outputs):
        """Raises a `ValueError` unless the two outputs have the same
        structure (as `keras.distillation.DistillationLoss` does)."""
        keras.tree.assert_same_structure(teacher_outputs, student_outputs)

    def teacher_targets(self, ctx):
        """Returns a dict of per-example target tensors from the teacher."""
        raise NotImplementedError

    def per_example_loss(self, targets, ctx):
        """Returns the loss of each example, a float32 tensor `(batch,)`."""
        raise NotImplementedError

    def copy(self):
        """A new term with this term's configuration, not yet built.

        A `Distiller` trains its own copy of each term, so that one term
        object can serve several distillers. The copy is a deep copy of the
        term as given: the losses and functions it holds keep every
        argument, also those their `get_config` leaves out (Keras'
        `Huber.get_config` has no `delta`).
        """
        # Keras objects deep-copy through their configuration, which may
        # lack arguments: the copy shares the user's losses, which hold
        # no state.
        memo = {}
        for value in vars(self).values():
            for leaf in _leaves(value):
                if isinstance(leaf, _SHARED):
                    memo[id(leaf)] = leaf
        try:
            return copy.deepcopy(self, memo)
        except Exception as error:
            raise ValueError(
                "A Distiller trains its own copy of each term, so that one "
                "term object can serve several distillers, but "
                f"copy.deepcopy failed for the term {self.name!r} of type "
                f"{type(self).__name__}: {error}. Make the term and what "
                "it holds deep-copyable (or define `copy()`)."
            ) from error

    def get_config(self):
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        try:
            config = self.get_config()
        except ValueError:
            # A loss that cannot be saved is still shown as given.
            config = {
                k: v for k, v in vars(self).items() if not k.startswith("_")
            }
        args = ", ".join(f"{k}={v!r}" for k, v in config.items())
        return f"{type(self).__name__}({args})"


class TermList(list):
    """A `Distiller`'s terms, fixed at construction.

    Each term gets its weight variable, its metric and its place in the
    traced step when the `Distiller` is built, so a term added later would
    never be computed: changing the sequence is an error that says so.
    """

    def _refuse(self, *args, **kwargs):
        raise TypeError(
            "`distillation_losses` is fixed when the Distiller is "
            "constructed (each term gets its weight, its metric and its "
            "place in the training step then), so it cannot be changed. "
            f"Received a change of {[t.name for t in self]}. Construct a "
            "new Distiller with the terms you want (the networks can be "
            "reused), or set a term's weight to 0 to switch it off."
        )

    append = extend = insert = remove = pop = clear = _refuse
    sort = reverse = __setitem__ = __delitem__ = __iadd__ = _refuse


def labels_to_indices(labels, num_classes, batch_size=None):
    """Turns sparse or one-hot labels into int32 class indices `(batch,)`.

    Labels must be class indices in `[0, num_classes)`, of shape `(batch,)`
    or `(batch, 1)` (integers, or floats with integer values), or one-hot
    rows of shape `(batch, num_classes)` with a positive entry. A wrong
    shape is a `ValueError` when the shape is known (at trace time); the
    value checks (`check_labels`) are a `ValueError` when run eagerly and
    an `InvalidArgumentError` with the same message inside a compiled
    step.

    Args:
        labels: the batch's labels.
        num_classes: the number of classes of the output they index.
        batch_size: the number of examples (an int or a scalar tensor), to
            check that there is one label per example.

    Returns:
        An int32 tensor `(batch,)`.
    """
    if labels is None:
        raise ValueError(
            "This term needs labels (target='label'), but the data has "
            "none. Pass `(x, y)` to `fit`, or pick target='teacher_top1'."
        )
    labels = tf.convert_to_tensor(labels)
    shape = labels.shape
    expected = (
        "target='label' reads one label per example: class indices of "
        "shape (batch,) or (batch, 1), or one-hot rows of shape "
        f"(batch, {num_classes})."
    )
    one_hot = shape.rank == 2 and shape[-1] == num_classes and num_classes > 1
    if one_hot:
        indices = tf.argmax(labels, axis=-1, output_type="int32")
    else:
        if shape.rank is not None and not (
            shape.rank == 1 or (shape.rank == 2 and shape[-1] in (1, None))
        ):
            raise ValueError(
                f"{expected} Received labels of shape {tuple(shape)}."
            )
        labels = tf.reshape(labels, [-1])
        indices = tf.cast(labels, "int32")
    if isinstance(batch_size, int) and indices.shape[0] not in (
        None,
        batch_size,
    ):
        raise ValueError(
            f"{expected} The number of labels differs from the batch. "
            f"Received {indices.shape[0]} labels for {batch_size} examples."
        )
    return check_labels(
        labels, indices, num_classes, batch_size, one_hot, expected
    )


def check_labels(labels, indices, num_classes, batch_size, one_hot, expected):
    """Every run-time check of class labels, in one place.

    Eagerly each failed check is a `ValueError` naming the values
    received; in a graph (`fit`, `tf.function`) it is a
    `tf.debugging.Assert`, an `InvalidArgumentError` with the same
    message. XLA (`jit_compile=True`) drops assertions: there the labels
    are not checked.

    Args:
        labels: the labels as given: one-hot rows `(batch, classes)`, or
            flattened indices `(batch,)`.
        indices: their int32 class indices `(batch,)`.
        num_classes: the number of classes of the output.
        batch_size: the number of examples, or `None`.
        one_hot: whether `labels` are one-hot rows.
        expected: the sentence saying which labels are expected.

    Returns:
        `indices`, after the checks.
    """
    fix = label_range.FIX
    # (condition, message, prefix, values shown on failure) per check; a
    # condition of one value per example shows the failing values only.
    checks = []
    if one_hot:
        ok = label_range.one_hot_rows(labels)
        checks.append(
            (
                ok,
                f"{expected} {label_range.NOT_ONE_HOT}",
                "Received rows that are not one-hot, of the examples:",
                tf.range(tf.shape(ok)[0]),
            )
        )
    else:
        if labels.dtype.is_floating:
            checks.append(
                (
                    tf.equal(labels, tf.round(labels)),
                    label_range.FRACTION,
                    "Received labels:",
                    labels,
                )
            )
        in_range = (indices >= 0) & (indices < num_classes)
        checks.append(
            (
                in_range,
                f"target='label' needs class indices in [0, {num_classes}): "
                f"the distillation output has {num_classes} classes. Fix "
                "the labels (e.g. shift labels numbered from 1, drop "
                "'unlabelled' markers such as -1), " + fix,
                "Received labels:",
                indices,
            )
        )
    if batch_size is not None:
        count = tf.shape(indices)[0]
        checks.append(
            (
                tf.equal(count, batch_size),
                f"{expected} The number of labels differs from the batch.",
                "Received (labels, examples):",
                tf.stack([count, tf.cast(batch_size, "int32")]),
            )
        )
    if tf.executing_eagerly():
        for ok, message, prefix, values in checks:
            if not bool(tf.reduce_all(ok)):
                if ok.shape.rank == 1:
                    values = tf.boolean_mask(values, ~ok)
                shown = sorted(set(values.numpy().tolist()))[:10]
                raise ValueError(f"{message} {prefix} {shown}")
        return indices
    asserts = []
    for ok, message, prefix, values in checks:
        shown = values
        if ok.shape.rank == 1:
            shown = tf.boolean_mask(values, ~ok)
        asserts.append(
            tf.debugging.Assert(
                tf.reduce_all(ok), [message, prefix, shown], summarize=10
            )
        )
    with tf.control_dependencies(asserts):
        return tf.identity(indices)
