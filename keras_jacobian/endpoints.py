"""Intermediate outputs of Functional and Sequential models, by layer name."""

import keras

from keras_jacobian import validation
from keras_jacobian.terms.base import OUTPUT


def layer_names(model):
    """The names of a model's layers, in order."""
    return [layer.name for layer in model.layers]


def _has_symbolic_outputs(model):
    try:
        return bool(model.inputs) and bool(model.outputs)
    except (AttributeError, ValueError):
        return False


def _symbolic_outputs(model, role):
    if not _has_symbolic_outputs(model):
        raise ValueError(
            f"The {role} model {model.name!r} ({type(model).__name__}) has "
            "no symbolic inputs and outputs, so its intermediate layers "
            "cannot be read by name. Expected a Functional model or a "
            "Sequential model built with `keras.Input`. Wrap a subclassed "
            "model as `keras.Model(inputs, outputs)` with explicit "
            "intermediate tensors, or rebuild it functionally. Available "
            f"layer names: {layer_names(model)}"
        )
    # A network of several inputs keeps their structure (a dict of named
    # inputs, as in Keras' Distiller docstring).
    inputs = model.input if len(model.inputs) > 1 else model.inputs
    return inputs, model.outputs


def layer_output(model, name, role):
    """The symbolic output tensor of the layer called `name` in `model`."""
    names = layer_names(model)
    if name not in names:
        raise ValueError(
            f"The {role} model {model.name!r} has no layer named {name!r}. "
            f"Available layer names: {names}"
        )
    _symbolic_outputs(model, role)
    layer = model.get_layer(name)
    try:
        return layer.output
    except (AttributeError, ValueError) as error:
        raise ValueError(
            f"The layer {name!r} of the {role} model {model.name!r} is "
            "used more than once or was never called on the model's "
            f"input, so it has no single output tensor ({error}). Pick "
            f"another layer. Available layer names: {names}"
        ) from error


def endpoint_model(
    model,
    endpoints,
    role,
    output_layer=None,
    extra_outputs=None,
    several_outputs=False,
):
    """A model mapping `model`'s input to a dict of named endpoints.

    Args:
        model: a Functional or Sequential Keras model.
        endpoints: iterable of endpoint names: layer names, or `"output"`
            for the model's output (its only output, or `output_layer`).
        role: `"teacher"` or `"student"`, for error messages.
        output_layer: name of the layer whose output is `"output"` when
            the model has several outputs.
        extra_outputs: optional dict of further named symbolic tensors of
            `model` to return (e.g. a task head's output).
        several_outputs: whether `"output"` may be the structure of a
            model with several outputs (for Keras' own terms).

    Returns:
        A `keras.Model` sharing `model`'s layers and weights, whose call
        returns `{endpoint: tensor}`. For a subclassed model (no symbolic
        outputs) only `"output"` can be read: the result then calls the
        whole model once.
    """
    if (
        set(endpoints) <= {OUTPUT}
        and output_layer is None
        and not extra_outputs
        and not _has_symbolic_outputs(model)
    ):
        return _output_model(model, role)
    inputs, outputs = _symbolic_outputs(model, role)
    tensors = {}
    for name in endpoints:
        if name == OUTPUT:
            tensors[name] = output_tensor(
                model, role, output_layer, several_outputs
            )
        else:
            tensors[name] = layer_output(model, name, role)
    tensors.update(extra_outputs or {})
    return keras.Model(inputs, tensors, name=f"{model.name}_endpoints")


def output_tensor(model, role, output_layer=None, several_outputs=False):
    """The model's distillation output: its only output or a named one
    (or, with `several_outputs`, the structure of its outputs)."""
    _, outputs = _symbolic_outputs(model, role)
    if output_layer is not None:
        return layer_output(model, output_layer, role)
    if len(outputs) != 1 and several_outputs:
        return model.output
    if len(outputs) != 1:
        raise ValueError(
            f"The {role} model {model.name!r} has {len(outputs)} outputs; "
            "expected one (the logits). For a student with a task head and "
            "a head that mimics the teacher, pass the mimicking head's "
            "layer name as `distillation_output`. Several outputs are "
            "distilled only by Keras' own term objects "
            "(`keras.distillation.LogitsDistillation(loss=[...])`)."
        )
    return outputs[0]


def _output_model(model, role):
    """`{"output": model(x)}` for a built model without symbolic outputs."""
    shape, dtype = validation.input_spec(model, role)
    inputs = keras.Input(shape, dtype=dtype)
    output = model(inputs)
    if not isinstance(output, keras.KerasTensor):
        raise ValueError(
            f"The {role} model {model.name!r} returns "
            f"{type(output).__name__}; expected one tensor (the logits)."
        )
    return keras.Model(inputs, {OUTPUT: output}, name=f"{model.name}_endpoints")


def task_model(student, distillation_output):
    """The student's task head as a model, for `distillation_output`."""
    if distillation_output is None:
        return None
    outputs = student.outputs
    mimic = layer_output(student, distillation_output, "student")
    task = [o for o in outputs if o is not mimic]
    if len(outputs) != 2 or len(task) != 1:
        raise ValueError(
            "With `distillation_output`, the student must have exactly "
            "two outputs: the task head and the head that mimics the "
            f"teacher. Received {len(outputs)} outputs for "
            f"distillation_output={distillation_output!r}."
        )
    inputs = student.input if len(student.inputs) > 1 else student.inputs
    return keras.Model(inputs, task[0], name="student_task")
