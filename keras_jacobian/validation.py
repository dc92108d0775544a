"""Checks run once at construction, so that bad input fails early."""

import math
import numbers

import keras
import numpy as np
import tensorflow as tf

from keras_jacobian import _compat


def input_spec(model, role, several=False):
    """The shape (without batch) and dtype of a single-input model.

    With `several=True`, a model with several inputs gives `(None, None)`.
    """
    try:
        inputs = model.inputs
    except AttributeError:
        inputs = None
    if inputs:
        if len(inputs) != 1 and several:
            return None, None
        if len(inputs) != 1:
            raise ValueError(
                f"The {role} model {model.name!r} has {len(inputs)} inputs; "
                "expected one image-like input."
            )
        return tuple(inputs[0].shape[1:]), inputs[0].dtype
    if not model.built:
        raise ValueError(
            f"The {role} model {model.name!r} is not built, so its input "
            "shape is unknown. Build it first, e.g. with "
            "`model.build((None,) + input_shape)` or by calling it once."
        )
    shape = (model.get_build_config() or {}).get("input_shape")
    if not isinstance(shape, (tuple, list)) or not all(
        d is None or isinstance(d, int) for d in shape
    ):
        raise ValueError(
            f"Could not read the input shape of the {role} model "
            f"{model.name!r}. Expected a Functional or Sequential model "
            "built on `keras.Input(shape)`."
        )
    return tuple(shape[1:]), "float32"


TOKEN_FIX = (
    "For token inputs, split the network after its embedding and match "
    "Jacobians at the embedding output (a model that maps embedded, "
    "floating-point sequences to logits), or use output-only terms such "
    "as LogitsDistillation or FeatureDistillation."
)


def check_float_input(dtype, role, name):
    """Raises unless the input dtype has an input Jacobian."""
    if not keras.backend.is_float_dtype(dtype):
        raise ValueError(
            f"The {role} {name!r} takes {dtype} inputs, which have no input "
            "Jacobian: Jacobian terms need floating-point inputs. For "
            "images stored as integers (uint8 pixels), build the model on "
            "a float input (`keras.Input(shape)`, float32 by default); "
            f"Keras casts the integer batches to it. {TOKEN_FIX}"
        )


def check_token_inputs(model, role):
    """Raises when the model's input feeds an `Embedding` directly.

    An embedding looks its input up as integer token ids, whatever the
    input's dtype, so the output has no input Jacobian: reverse and
    forward mode give no gradient, and differences of forward passes
    give zero or jumps of whole embedding rows.

    Args:
        model: a Keras model (Functional or Sequential; others pass).
        role: `"teacher"`, `"student"` or `"model"`, for messages.
    """
    found = _embeddings_on_inputs(model)
    if found:
        raise ValueError(
            f"The {role} model {model.name!r} feeds its input to the "
            f"embedding layer(s) {found}, which read it as token ids: it "
            "has no input Jacobian, and Jacobian terms (every estimator) "
            "need a floating-point input that the network is "
            f"differentiable in. {TOKEN_FIX}"
        )


def _embeddings_on_inputs(model):
    """Names of `Embedding` layers called on `model`'s own inputs."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        return []
    input_ids = {id(t) for t in inputs}
    found = []
    for layer in getattr(model, "layers", []):
        for tensors in _compat.call_inputs(layer):
            if not any(id(t) in input_ids for t in tensors):
                continue
            if isinstance(layer, keras.layers.Embedding):
                found.append(layer.name)
            elif isinstance(layer, keras.Model):
                found.extend(_embeddings_on_inputs(layer))
    return found


def check_logits_output(tensor, role):
    """Raises when a model's output tensor is a softmax (probabilities).

    Terms that read logits (knowledge distillation, Jacobian matching,
    noise matching) would otherwise soften probabilities again or match
    the Jacobians of probabilities, without any error.

    Args:
        tensor: the symbolic output (a `KerasTensor`); anything else
            passes (subclassed models are not inspected).
        role: `"teacher"`, `"student"` or `"model"`, for messages.
    """
    layer = _final_softmax(tensor)
    if layer is None:
        return
    hint = (
        " This looks like a keras.applications model: build it with "
        "`classifier_activation=None` to get logits."
        if layer.name == "predictions"
        else ""
    )
    raise ValueError(
        softmax_message(
            role, f"layer {layer.name!r}, {type(layer).__name__}", hint
        )
    )


def softmax_message(role, found, hint=""):
    """The message refusing a softmax output; `found` names where it is."""
    return (
        f"The {role} model's output ends in a softmax ({found}), but "
        "logits are expected: the terms apply their own softmax (with a "
        "temperature) and differentiate the logits. Remove the final "
        "activation (e.g. `Dense(classes)` instead of "
        "`Dense(classes, activation='softmax')`, no `Softmax` layer or "
        "softmax in a `Lambda` or custom layer) and apply "
        "`keras.ops.softmax` outside the model where probabilities are "
        f"needed.{hint}"
    )


def _final_softmax(tensor):
    """The layer or op that makes `tensor` a softmax, or None."""
    produced = _compat.producing_operation(tensor)
    if produced is None:
        return None
    operation, index = produced
    if isinstance(operation, keras.Model):
        try:
            outputs = operation.outputs
        except (AttributeError, ValueError):
            return None
        return _final_softmax(outputs[index]) if outputs else None
    if type(operation).__name__ == "Softmax":
        return operation
    activation = getattr(operation, "activation", None)
    if activation is keras.activations.softmax:
        return operation
    return None


# Counts (projections, samples, classes) become int32 tensor shapes.
INT32_MAX = 2**31 - 1


def check_count(value, name, minimum=1):
    """Checks a count argument and returns it as a Python `int`.

    Accepts Python and NumPy integers from `minimum` to `INT32_MAX`
    (TensorFlow builds int32 shapes from them; larger counts fail
    there, deep in a traced step); refuses booleans, floats and others.

    Raises:
        ValueError: saying what was expected and what was received.
    """
    if (
        isinstance(value, bool)
        or isinstance(value, np.bool_)
        or not isinstance(value, numbers.Integral)
        or not minimum <= int(value) <= INT32_MAX
    ):
        kind = (
            " (a bool is not a count)"
            if isinstance(value, (bool, np.bool_))
            else ""
        )
        raise ValueError(
            f"`{name}` must be an integer from {minimum} to {INT32_MAX} "
            f"(an int32 tensor shape){kind}. Received: {name}={value!r}"
        )
    return int(value)


def check_strategy_scope(model, role, owner):
    """Raises unless `model`'s variables belong to the current strategy.

    A model trained by `owner` (a `Distiller` or a
    `JacobianRegularizedModel`) must have been built under the same
    `tf.distribute` strategy as `owner`: otherwise Keras fails later, in
    `compile` or `fit`, with a message about `colocate_vars_with` or
    `MirroredVariable` indices.

    Args:
        model: the Keras model whose weights `owner` trains.
        role: `"student"` or `"model"`, for messages.
        owner: the class name of the model being built, for messages.
    """
    strategy = tf.distribute.get_strategy()
    foreign = [
        v.path
        for v in model.variables
        if not strategy.extended.variable_created_in_scope(v.value)
    ]
    if not foreign:
        return
    if tf.distribute.has_strategy():
        where = (
            f"`{owner}` is built inside the scope of "
            f"{type(strategy).__name__}, but the {role}'s weights were "
            "created outside it"
        )
    else:
        where = (
            f"`{owner}` is built outside any `strategy.scope()`, but the "
            f"{role}'s weights were created inside one"
        )
    shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
    raise ValueError(
        f"The {role} model {model.name!r} and the `{owner}` must be "
        f"built under the same tf.distribute strategy: {where} "
        f"(e.g. {shown}). Build (or load) the {role} and create the "
        f"`{owner}` inside the same `with strategy.scope():` block, then "
        "call `compile` there too."
    )


def check_number(value, name, minimum=0.0, strict=False, context=""):
    """Checks a weight, temperature or scale and returns it as a float.

    Accepts Python and NumPy real scalars and 0-d arrays or tensors
    (`0.5`, `np.float32(0.5)`, `np.int64(2)`, `np.array(0.5)`); refuses
    booleans, arrays of any other shape, NaN, infinities (which would
    turn the student's weights into NaN) and values below `minimum` (or
    equal to it when `strict`).

    Args:
        value: the value to check.
        name: the argument's name, for the message.
        minimum: the smallest value allowed.
        strict: whether `minimum` itself is refused.
        context: text appended to the message, e.g. where the value came
            from.

    Returns:
        The value as a Python `float`.

    Raises:
        ValueError: saying what was expected and what was received.
    """
    if strict and minimum == 0:
        expected = f"`{name}` must be a positive finite number"
    else:
        bound = f"{'>' if strict else '>='} {minimum:g}"
        expected = f"`{name}` must be a finite number {bound}"
    number = None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    elif not isinstance(value, (bool, str, bytes)) and value is not None:
        try:
            array = np.asarray(value)
        except (TypeError, ValueError):
            array = None
        if array is not None and array.dtype.kind in "iuf":
            if array.shape != ():
                raise ValueError(
                    f"{expected}: one number (a Python or NumPy scalar, or "
                    "a 0-d array), not an array. Received an array of "
                    f"shape {array.shape}: {name}={value!r}{context}."
                )
            number = float(array)
    if number is None:
        raise ValueError(f"{expected}. Received: {name}={value!r}{context}.")
    if not math.isfinite(number):
        raise ValueError(
            f"{expected}. Received: {name}={value!r}{context}. NaN and "
            "infinite values make the loss and then the student's weights "
            "NaN."
        )
    if number < minimum or (strict and number == minimum):
        raise ValueError(f"{expected}. Received: {name}={value!r}{context}.")
    return number


def check_own_weights(teacher, student):
    """Raises when the student shares weights that would then not train.

    The `Distiller` freezes the teacher (`trainable = False`), which
    freezes every layer the student shares with it: a student that is the
    teacher, or reuses its trainable layers, would train nothing (or only
    part of itself) without any error.

    Args:
        teacher: the teacher model, before it is frozen.
        student: the student model.
    """
    fix = (
        " The student needs its own weights: start it from the teacher "
        "with `student = keras.models.clone_model(teacher)` and "
        "`student.set_weights(teacher.get_weights())`, or build it anew."
    )
    if student is teacher:
        raise ValueError(
            "The student is the teacher model itself. The Distiller "
            "freezes the teacher, so nothing would train." + fix
        )
    teacher_ids = {id(v) for v in teacher.weights}
    trainable_ids = {id(v) for v in student.trainable_variables}
    shared = [v for v in student.weights if id(v) in teacher_ids]
    if not shared:
        return
    shared_trainable = [v.path for v in shared if id(v) in trainable_ids]
    own_trainable = trainable_ids - teacher_ids
    if shared_trainable or not own_trainable:
        paths = shared_trainable or [v.path for v in shared]
        raise ValueError(
            f"The student shares {len(paths)} weights with the teacher "
            f"(e.g. {paths[:3]}). The Distiller freezes the teacher, which "
            "freezes these weights in the student too, so they would not "
            "train." + fix
        )


def check_label_terms(terms, distillation_output):
    """Refuses terms that read labels as teacher classes under LwF.

    With `distillation_output` the labels belong to the student's task
    head, while a term such as `JacobianMatching(target="label")` would
    use them as classes of the teacher's (source) outputs.
    """
    if distillation_output is None:
        return
    readers = [t for t in terms if t.reads_labels]
    if readers:
        raise ValueError(
            f"{readers[0]!r} reads the labels as classes of the "
            "distillation output, but with "
            f"distillation_output={distillation_output!r} the labels are "
            "those of the student's task head, not classes of the "
            "teacher (its source task). Use target='teacher_top1' (or "
            "'top_k', 'all', 'random'), which picks rows from the "
            "teacher's own outputs."
        )


def check_term_weights(terms, weights):
    """One finite weight >= 0 per term (default 1.0), as Python floats."""
    if weights is None:
        return [1.0] * len(terms)
    if getattr(weights, "ndim", None) == 1:
        weights = list(weights)  # a 1-D NumPy array of weights
    if not isinstance(weights, (list, tuple)):
        weights = [weights]
    if len(weights) != len(terms):
        raise ValueError(
            "`distillation_loss_weights` must have one weight per term. "
            f"Received {len(weights)} weights for {len(terms)} terms "
            f"({[t.name for t in terms]})."
        )
    return [
        check_number(w, f"distillation_loss_weights[{i}]")
        for i, w in enumerate(weights)
    ]


def check_several_inputs(model, role, terms):
    """Refuses a network of several inputs for terms that read inputs."""
    kinds = ("needs_input_gradients", "uses_input_jacobians", "perturbs_inputs")
    readers = [t.name for t in terms if any(getattr(t, k) for k in kinds)]
    if readers:
        names = [i.name for i in model.inputs]
        raise ValueError(
            f"The {role} model {model.name!r} has {len(names)} inputs "
            f"{names}; the terms {readers} perturb or read the input (noise, "
            "input Jacobians or input gradients), which needs a single "
            "floating-point input. Wrap the network in a model of one input "
            "(e.g. the embedded sequence, with the other inputs fixed inside "
            "it), or use output-only terms such as LogitsDistillation or "
            "FeatureDistillation."
        )


def check_input_kinds(teacher_shape, student_shape):
    """Teacher and student inputs: the same rank and number of channels."""
    if teacher_shape == student_shape or None in (teacher_shape, student_shape):
        return
    if len(teacher_shape) != len(student_shape) or (
        teacher_shape[-1] != student_shape[-1]
    ):
        raise ValueError(
            "Teacher and student must take inputs of the same kind: the "
            "same rank and number of channels. Received: teacher input "
            f"{teacher_shape}, student input {student_shape}."
        )


def check_estimator(target, estimator, step_size):
    """Resolves `estimator=None` and checks it with `target`, `step_size`.

    The rules shared by `JacobianMatching` and `JacobianRegularizedModel`:
    `None` means `"vjp"` for `target="random"` (its alias) and `"exact"`
    otherwise; `step_size` belongs to the difference estimators and is a
    positive finite number.

    Returns:
        The estimator's name.
    """
    from keras_jacobian import jacobians

    if estimator is None:
        return "vjp" if target == "random" else "exact"
    if estimator not in jacobians.ESTIMATORS:
        raise ValueError(
            f"`estimator` must be one of {jacobians.ESTIMATORS} or None. "
            f"Received: estimator={estimator!r}"
        )
    if target == "random" and estimator != "vjp":
        raise ValueError(
            "target='random' is the alias of target='all', "
            f"estimator='vjp'. Received: estimator={estimator!r} with "
            "target='random'. Use target='all' with the estimator."
        )
    if step_size is not None:
        if estimator not in jacobians.DIFFERENCE_ESTIMATORS:
            raise ValueError(
                "`step_size` is only used with estimator="
                "'finite_difference' or 'forward_difference'. Received: "
                f"step_size={step_size!r} with estimator={estimator!r}."
            )
        check_number(step_size, "step_size", strict=True)
    return estimator


# Smallest positive normal number of each precision: a shift whose values
# fall below it is flushed to zero or loses its digits.
SMALLEST_NORMAL = {
    "float64": 2.0**-1022,
    "float32": 2.0**-126,
    "float16": 2.0**-14,
    "bfloat16": 2.0**-126,
}


def check_step_size(step_size, precision, input_shape, role):
    """Refuses a `step_size` that `precision` cannot represent as a shift.

    The step `eps * v` spreads `eps` over the `D` input values
    (`|v_i| ~ 1 / sqrt(D)`): below the precision's smallest normal
    number per value, the shift is lost whatever the data. Whether the
    step is resolved relative to the data is checked at run time
    (`jacobians.check_resolvable_steps`).

    Args:
        step_size: the step length, or `None` (the default step).
        precision: the network's coarsest float dtype name.
        input_shape: the input shape without the batch axis (`None`
            entries or `None` skip the check).
        role: `"teacher"`, `"student"` or `"model"`, for messages.
    """
    if step_size is None or input_shape is None:
        return
    if any(d is None for d in input_shape):
        return
    size = int(np.prod(input_shape))
    per_value = step_size / math.sqrt(size)
    if per_value < SMALLEST_NORMAL[precision]:
        smallest = SMALLEST_NORMAL[precision] * math.sqrt(size)
        raise ValueError(
            f"`step_size` is too small for the {role}, which computes in "
            f"{precision}: spread over its {size} input values, the step "
            f"shifts each by about {per_value:.2g}, below the smallest "
            f"normal {precision} number ({SMALLEST_NORMAL[precision]:.2g})"
            ", so the shifted inputs equal the inputs. Use step_size=None "
            "(a step relative to each example's norm) or a step_size well "
            f"above {smallest:.2g}. Received: step_size={step_size!r}"
        )
