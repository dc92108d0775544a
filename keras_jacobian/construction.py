"""The `Distiller`'s construction from built networks: endpoint models,
term shapes and the checks that need a built model.

A `Distiller` runs `construct` in `__init__` when both networks are built,
else on its first batch (`Distiller.build`), as Keras' `Distiller` builds
unbuilt networks on first use.
"""

import keras
import tensorflow as tf

from keras_jacobian import batch_statistics
from keras_jacobian import endpoints
from keras_jacobian import jacobians
from keras_jacobian import kinks
from keras_jacobian import label_range
from keras_jacobian import probes
from keras_jacobian import randomness
from keras_jacobian import traced
from keras_jacobian import transforms
from keras_jacobian import validation
from keras_jacobian.terms.base import OUTPUT
from keras_jacobian.terms.conversion import KerasDistillationLoss

# Endpoint key of the task head's output in the student's endpoint model,
# so that the task loss reads the same forward pass as the terms.
TASK = "__task_output__"


INPUT_KEYS = ("student", "teacher", "teacher_targets")


def is_role_dict(x):
    """Whether `x` is a `{"student", "teacher", ...}` dict of inputs."""
    return isinstance(x, dict) and "student" in x


def split_inputs(distiller, x):
    """`(x_student, x_teacher, cached_targets)` of a batch, floats."""
    if None in (distiller.student_input_shape, distiller.teacher_input_shape):
        # Networks of several inputs: the batch's structure is theirs.
        if not is_role_dict(x):
            return x, x, None
        xs = x["student"]
        return xs, x.get("teacher", xs), x.get("teacher_targets")
    if isinstance(x, dict):
        unknown = set(x) - set(INPUT_KEYS)
        if unknown or "student" not in x:
            raise ValueError(
                "Distiller inputs must be a tensor, or a dict with key "
                "'student' and optional keys 'teacher' and "
                f"'teacher_targets'. Received keys: {sorted(x)}"
            )
        xs = x["student"]
        xt = x.get("teacher", xs)
        cached = x.get("teacher_targets")
    else:
        xs = xt = x
        cached = None
    teacher_shape = distiller.teacher_input_shape
    student_shape = distiller.student_input_shape
    if (
        cached is None
        and not _compatible(teacher_shape, student_shape)
        and xt is xs
    ):
        raise ValueError(
            "Teacher and student take different input shapes "
            f"(teacher {teacher_shape}, student {student_shape}), so each "
            "needs its own copy of the batch: pass x as "
            "{'student': x_s, 'teacher': x_t}, resizing in the input "
            "pipeline."
        )
    return _as_float(xs), _as_float(xt), cached


def _compatible(a, b):
    """Whether one batch can feed networks of input shapes `a` and `b`
    (`None` matches any size)."""
    return len(a) == len(b) and all(
        i is None or j is None or i == j for i, j in zip(a, b)
    )


def _as_float(x):
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, keras.config.floatx())
    return x


def is_built(model):
    """Whether the model's input shape is known (Functional, or built)."""
    return bool(getattr(model, "inputs", None)) or model.built


def _shapes_of(x):
    """The input shapes of `x` (arrays, tensors, a dict of them, or a
    `tf.data.Dataset`'s elements), or None when they cannot be read
    without consuming data (generators, `PyDataset`s)."""
    if isinstance(x, tf.data.Dataset):
        spec = x.element_spec
        x = spec[0] if isinstance(spec, tuple) else spec
    if isinstance(x, dict):
        shapes = {k: _shapes_of(v) for k, v in x.items()}
        return None if None in shapes.values() else shapes
    shape = getattr(x, "shape", None)
    if shape is None:
        return None
    try:
        return tuple(shape)
    except TypeError:  # a TensorShape of unknown rank
        return None


UNBUILT_FIX = (
    "Build the teacher and the student before creating the Distiller "
    "(call each once on a batch, or `model.build((None,) + shape)`), or "
    "pass arrays, tensors or a tf.data.Dataset to the first `fit`, "
    "`evaluate` or `predict`, on which the Distiller builds them."
)


class BuildOnFirstBatchMixin:
    """Builds unbuilt networks on the first batch, as Keras' `Distiller`.

    A teacher or student not yet built (a subclassed model, a
    `Sequential` without `Input`) is built on the shape of the first
    batch given to `fit`, `evaluate`, `predict` (and their `*_on_batch`
    forms) or to a call of the distiller; the construction checks
    (`construct`) run then, eagerly: they differentiate the networks,
    which cannot happen while Keras traces a step.
    """

    def build(self, input_shape):
        if self.built:
            return
        # Keras traces shapes (`compute_output_spec`) in a graph.
        if not tf.executing_eagerly():
            raise ValueError(
                "The Distiller's networks are not built, and this batch "
                "is symbolic, so they cannot be built and checked here. "
                + UNBUILT_FIX
            )
        build_models(self, input_shape)
        construct(self)
        self.built = True

    def _build_from(self, x):
        if self.built or x is None:
            return
        shapes = _shapes_of(x)
        if shapes is None:
            return
        with self.distribute_strategy.scope():
            self.build(shapes)

    def fit(self, x=None, *args, **kwargs):
        self._build_from(x)
        return super().fit(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        self._build_from(x)
        return super().evaluate(x, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        self._build_from(x)
        return super().predict(x, *args, **kwargs)

    def train_on_batch(self, x, *args, **kwargs):
        self._build_from(x)
        return super().train_on_batch(x, *args, **kwargs)

    def test_on_batch(self, x, *args, **kwargs):
        self._build_from(x)
        return super().test_on_batch(x, *args, **kwargs)

    def predict_on_batch(self, x):
        self._build_from(x)
        return super().predict_on_batch(x)

    def train_step(self, data):
        self._refuse_unbuilt()
        return super().train_step(data)

    def test_step(self, data):
        self._refuse_unbuilt()
        return super().test_step(data)

    def _refuse_unbuilt(self):
        if not self.built:
            raise ValueError(
                "The Distiller's networks are not built, and the first "
                "batch came from data whose shapes cannot be read before "
                "training (a generator or a PyDataset). " + UNBUILT_FIX
            )


def build_models(distiller, input_shape):
    """Builds unbuilt networks on the shape of the first batch.

    Args:
        distiller: the `Distiller`.
        input_shape: the shape of the batch (with batch axis), or a dict
            of them with keys `"student"` and optionally `"teacher"`.
    """
    if isinstance(input_shape, dict):
        student_shape = input_shape.get("student")
        teacher_shape = input_shape.get("teacher", student_shape)
    else:
        student_shape = teacher_shape = input_shape
    for role, model, shape in (
        ("teacher", distiller.teacher, teacher_shape),
        ("student", distiller.student, student_shape),
    ):
        if is_built(model):
            continue
        if shape is None:
            raise ValueError(
                f"The {role} is not built, and the first batch does not "
                f"say its input shape. Build the {role} first, e.g. "
                "`model.build((None,) + input_shape)`, or call it once."
            )
        shape = (None,) + tuple(shape)[1:]
        try:
            _build(model, shape)
        except Exception as error:
            raise ValueError(
                f"Could not build the {role} on the first batch, of "
                f"shape {shape}: {error} Build the {role} before "
                "creating the Distiller, e.g. by calling it once on a "
                "batch."
            ) from error


def _build(model, shape):
    if isinstance(model, keras.Sequential) or None in shape[1:]:
        model.build(shape)
        return
    # A subclassed model's `build(shape)` does not create the weights of
    # its layers: call it once, eagerly, as Keras users do.
    zeros = keras.ops.zeros((1,) + tuple(shape[1:]), keras.config.floatx())
    model(zeros, training=False)


def construct(distiller):
    """Everything the `Distiller` derives from its built networks."""
    teacher, student = distiller.teacher, distiller.student
    terms = distiller.distillation_losses
    check_differentiable = distiller.check_differentiable
    distillation_output = distiller.distillation_output
    # The check reads the weights' trainability before the freeze.
    frozen = teacher.trainable
    teacher.trainable = distiller._teacher_trainable
    try:
        validation.check_own_weights(teacher, student)
    finally:
        teacher.trainable = frozen
    for term in terms:
        term.validate_model_compatibility(teacher, student)
    teacher_shape, teacher_dtype = validation.input_spec(
        teacher, "teacher", several=True
    )
    student_shape, student_dtype = validation.input_spec(
        student, "student", several=True
    )
    for model, shape, role in (
        (teacher, teacher_shape, "teacher"),
        (student, student_shape, "student"),
    ):
        if shape is None:
            validation.check_several_inputs(model, role, terms)
    validation.check_input_kinds(teacher_shape, student_shape)
    distiller.teacher_input_shape = teacher_shape
    distiller.student_input_shape = student_shape
    distiller.needs_input_gradients = any(
        t.needs_input_gradients for t in terms
    )
    uses_input_jacobians = any(t.uses_input_jacobians for t in terms)
    noise = any(t.perturbs_inputs for t in terms)  # would change tokens
    if uses_input_jacobians or noise:
        validation.check_float_input(teacher_dtype, "teacher", teacher.name)
        validation.check_float_input(student_dtype, "student", student.name)
        validation.check_token_inputs(teacher, "teacher")
        validation.check_token_inputs(student, "student")
    if noise:
        traced.check_no_tokens(teacher, teacher_shape, teacher_dtype, False)
        traced.check_no_tokens(student, student_shape, student_dtype, True)
    teacher_endpoints = _ordered_union(t.teacher_endpoints for t in terms)
    student_endpoints = _ordered_union(t.student_endpoints for t in terms)
    # Keras' own terms see every output of a network with several, as
    # in Keras; the library's terms read one distillation output.
    several = all(isinstance(t, KerasDistillationLoss) for t in terms)
    distiller.teacher_endpoints = endpoints.endpoint_model(
        teacher, teacher_endpoints, "teacher", several_outputs=several
    )
    distiller.student_task = endpoints.task_model(student, distillation_output)
    distiller.student_endpoints = endpoints.endpoint_model(
        student,
        student_endpoints,
        "student",
        output_layer=distillation_output,
        extra_outputs=(
            None
            if distiller.student_task is None
            else {TASK: distiller.student_task.outputs[0]}
        ),
        several_outputs=several,
    )

    if any(t.reads_logits for t in terms):
        validation.check_logits_output(
            distiller.teacher_endpoints.output[OUTPUT], "teacher"
        )
        validation.check_logits_output(
            distiller.student_endpoints.output[OUTPUT], "student"
        )
    # A softmax inside a `Lambda` or custom layer, which layers hide
    # (traced on a single input: not for networks of several inputs).
    if any(t.reads_logits for t in terms) and teacher_shape is not None:
        traced.check_logits(
            endpoints_output(distiller.teacher_endpoints),
            teacher_shape,
            teacher_dtype,
            "teacher",
        )
    if any(t.reads_logits for t in terms) and student_shape is not None:
        traced.check_logits(
            endpoints_output(distiller.student_endpoints),
            student_shape,
            student_dtype,
            "student",
        )
    distiller.teacher_precision = jacobians.network_precision(teacher)
    distiller.student_precision = jacobians.network_precision(student)

    teacher_shapes = _shapes(
        distiller.teacher_endpoints, teacher_shape, teacher
    )
    student_shapes = _shapes(
        distiller.student_endpoints, student_shape, student
    )
    for term in terms:
        term.build(teacher_shapes, student_shapes)
        term.check_models(
            distiller.teacher_endpoints, distiller.student_endpoints
        )
    distiller.term_layers = [layer for t in terms for layer in t.layers]
    distiller._label_monitor = _label_monitor(terms, teacher_shapes)
    batch_statistics.install(student)
    distiller._teacher_random_state = randomness.RandomState()
    distiller._student_random_state = randomness.RandomState()
    estimators = [
        t.estimator
        for t in terms
        if getattr(t, "estimator", None) in jacobians.INPUT_ESTIMATORS
    ]
    if estimators:
        # A difference estimator, if any, names the refusal.
        estimator = sorted(
            estimators, key=jacobians.DIFFERENCE_ESTIMATORS.__contains__
        )[-1]
        distiller._teacher_random_state = randomness.replayed_states(
            distiller.teacher_endpoints,
            teacher_shape,
            teacher_dtype,
            "teacher",
            training=False,
            estimator=estimator,
        )
        distiller._student_random_state = randomness.replayed_states(
            distiller.student_endpoints,
            student_shape,
            student_dtype,
            "student",
            training=True,
            estimator=estimator,
        )
    # Every estimator needs an output differentiable in the input;
    # reverse-mode rows of the student are differentiated again.
    if uses_input_jacobians and check_differentiable:
        probes.probe_input_gradients(
            endpoints_output(distiller.teacher_endpoints),
            teacher_shape,
            "teacher",
            second_order=False,
        )
        probes.probe_input_gradients(
            endpoints_output(distiller.student_endpoints),
            student_shape,
            "student",
            second_order=distiller.needs_input_gradients,
        )
    if any(
        t.uses_input_jacobians
        and getattr(t, "estimator", None) not in jacobians.DIFFERENCE_ESTIMATORS
        for t in terms
    ):
        jvp = "jvp" in estimators
        if jvp:
            transforms.check_forward_mode(teacher, "teacher")
            transforms.check_forward_mode(student, "student")
        transforms.check_transforms(
            teacher, teacher_shape, teacher_dtype, False, "teacher", jvp
        )
        transforms.check_transforms(
            student, student_shape, student_dtype, True, "student", jvp
        )
    # After the probe: a network without input gradients is named as such.
    if estimators and estimator in jacobians.DIFFERENCE_ESTIMATORS:
        kinks.check_smooth(
            distiller.student_endpoints,
            student_shape,
            student_dtype,
            "student",
            estimator,
        )
        # After the kinks check (which refuses most large networks): the
        # step follows the dtypes the passes compute in, casts included.
        distiller.teacher_precision = traced.network_precision(
            endpoints_output(distiller.teacher_endpoints),
            teacher_shape,
            teacher_dtype,
            False,
            "teacher",
            estimator,
        )
        distiller.student_precision = traced.network_precision(
            endpoints_output(distiller.student_endpoints),
            student_shape,
            student_dtype,
            True,
            "student",
            estimator,
        )


def _label_monitor(terms, teacher_shapes):
    """A `LabelRangeMonitor` when a term reads labels, else `None`."""
    if not any(t.reads_labels for t in terms):
        return None
    classes = teacher_shapes[OUTPUT][-1]
    return label_range.LabelRangeMonitor(
        classes,
        f"target='label' needs class indices in [0, {classes}): the "
        f"distillation output has {classes} classes. Fix the labels (e.g. "
        "shift labels numbered from 1, drop 'unlabelled' markers such as "
        "-1), or pick target='teacher_top1', which needs no labels.",
    )


def _ordered_union(groups):
    seen = []
    for group in groups:
        for name in group:
            if name not in seen:
                seen.append(name)
    if OUTPUT not in seen:
        seen.insert(0, OUTPUT)
    return seen


class _SeveralInputs(dict):
    """Endpoint shapes of a network with several inputs (no `"input"`)."""

    def __init__(self, shapes, model):
        super().__init__(shapes)
        self.model = model

    def __missing__(self, key):
        if key != "input":
            raise KeyError(key)
        names = [i.name for i in self.model.inputs]
        raise ValueError(
            f"The model {self.model.name!r} has {len(names)} inputs "
            f"{names}; a term that perturbs or reads the input needs a "
            "single floating-point input. Wrap the network in a model of "
            "one input, or use output-only terms such as "
            "LogitsDistillation or FeatureDistillation."
        )


def _shapes(endpoint_model, input_shape, model):
    shapes = {
        name: tf.nest.map_structure(lambda t: tuple(t.shape), tensor)
        for name, tensor in endpoint_model.output.items()
    }
    if input_shape is None:
        return _SeveralInputs(shapes, model)
    shapes["input"] = (None,) + tuple(input_shape)
    return shapes


def endpoints_output(endpoint_model):
    """A model returning an endpoint model's distillation output only,
    named after the user's model (messages name it)."""
    name = endpoint_model.name.removesuffix("_endpoints")
    return keras.Model(
        endpoint_model.inputs, endpoint_model.output[OUTPUT], name=name
    )
