"""Checks run once at construction, so that bad input fails early."""

import keras
import numpy as np
import tensorflow as tf


def input_spec(model, role):
    """The shape (without batch) and dtype of a single-input model."""
    try:
        inputs = model.inputs
    except AttributeError:
        inputs = None
    if inputs:
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
    shape = getattr(model, "_build_shapes_dict", None) or {}
    shapes = list(shape.values())
    if len(shapes) != 1:
        raise ValueError(
            f"Could not read the input shape of the {role} model "
            f"{model.name!r}. Expected a Functional or Sequential model "
            "built on `keras.Input(shape)`."
        )
    return tuple(shapes[0][1:]), "float32"


def check_float_input(dtype, role):
    """Raises unless the input dtype has an input Jacobian."""
    if not keras.backend.is_float_dtype(dtype):
        raise ValueError(
            f"The {role} model takes {dtype} inputs, which have no input "
            "Jacobian: Jacobian terms need floating-point inputs (images, "
            "features). For token inputs, split the network after its "
            "embedding and distil the part that maps embedded (float) "
            "sequences to logits, or use output-only terms such as "
            "LogitsDistillation."
        )


def probe_input_gradients(model, input_shape, role, second_order):
    """Checks that a model has an input gradient, twice if needed.

    Runs the model once, eagerly, on a batch of two random inputs (on
    every replica when called inside `strategy.scope()`).

    Args:
        model: a callable Keras model with a single output tensor.
        input_shape: input shape without the batch axis.
        role: `"teacher"`, `"student"` or `"model"`, for messages.
        second_order: also check that the input gradient is itself
            differentiable with respect to the model's kernels (double
            backprop), as a Jacobian term that trains the model needs.
    """
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2,) + tuple(input_shape)).astype("float32")
    in_replica_context(
        lambda: _probe(model, tf.constant(x), role, second_order)
    )


def in_replica_context(fn):
    """Runs `fn()` where a model's variables can be differentiated.

    Under `strategy.scope()` a model's variables are distributed, and a
    `tf.GradientTape` cannot watch them in the cross-replica context
    ("DistributedVariable.handle is not available outside the replica
    context"). There `fn` runs on every replica with `strategy.run`;
    elsewhere it simply runs. Exceptions raised by `fn` propagate.
    """
    if tf.distribute.has_strategy() and (
        tf.distribute.in_cross_replica_context()
    ):
        tf.distribute.get_strategy().run(fn)
        return
    fn()


def _probe(model, x, role, second_order):
    kernels = [v for v in model.trainable_variables if "kernel" in v.path]
    try:
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                inner.watch(x)
                out = model(x, training=False)
                out = out if not isinstance(out, (list, tuple)) else out[0]
                scalar = tf.reduce_sum(tf.cast(out, "float32") ** 2)
            grad = inner.gradient(scalar, x)
            if grad is None:
                raise ValueError(
                    f"The {role} model {model.name!r} has no gradient with "
                    "respect to its input, so Jacobian terms cannot use "
                    "it. Look for a `stop_gradient`, a cast to an integer "
                    "type or an op without a gradient between input and "
                    "output."
                )
            penalty = tf.reduce_sum(tf.cast(grad, "float32") ** 2)
        if not second_order or not kernels:
            return
        first = outer.gradient(penalty, kernels)
    except LookupError as error:
        raise ValueError(
            f"The {role} model {model.name!r} is not differentiable twice: "
            f"{error}. Jacobian terms backpropagate through the input "
            "gradient. A common cause is image resizing inside the model "
            "(`Resizing`, `tf.image.resize`): resize in the input pipeline "
            "instead."
        ) from error
    dead = [v.path for v, g in zip(kernels, first) if g is None]
    if dead:
        resizing = [
            layer.name
            for layer in _all_layers(model)
            if "resiz" in type(layer).__name__.lower()
        ]
        hint = (
            f" The model resizes images inside it ({resizing}): bilinear "
            "resizing has no second derivative in TensorFlow. Resize in the "
            "input pipeline instead."
            if resizing
            else " Look for an op without a second derivative between the "
            "input and these weights."
        )
        raise ValueError(
            f"The {role} model {model.name!r} is not differentiable twice: "
            "the gradient of its input Jacobian does not reach the kernels "
            f"{dead}, so a Jacobian term would not train them.{hint}"
        )


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


def _all_layers(model):
    found = []
    for layer in getattr(model, "layers", []):
        found.append(layer)
        found.extend(_all_layers(layer))
    return found
