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

    Runs the model once, eagerly, on a batch of two random inputs.

    Args:
        model: a callable Keras model with a single output tensor.
        input_shape: input shape without the batch axis.
        role: `"teacher"`, `"student"` or `"model"`, for messages.
        second_order: also check that the input gradient is itself
            differentiable with respect to the model's kernels (double
            backprop), as a Jacobian term that trains the model needs.
    """
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2,) + tuple(input_shape)), "float32")
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


def _all_layers(model):
    found = []
    for layer in getattr(model, "layers", []):
        found.append(layer)
        found.extend(_all_layers(layer))
    return found


# Layers whose output is random in training mode: two forward passes
# then differ by more than the input shift, and differences of them are
# not derivatives.
STOCHASTIC_LAYERS = (
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianDropout",
    "GaussianNoise",
    "AlphaDropout",
)


def check_no_stochastic_layers(model, role, estimator):
    """Refuses difference estimators on a network with random layers.

    Args:
        model: the Keras model run in training mode.
        role: its name in the message (`"student"`, `"model"`).
        estimator: the estimator's name.

    Raises:
        ValueError: when `model` holds a layer of `STOCHASTIC_LAYERS` with
            a positive rate (or standard deviation).
    """
    found = []
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        stack.extend(getattr(layer, "layers", []))
        if type(layer).__name__ not in STOCHASTIC_LAYERS:
            continue
        config = layer.get_config()
        if config.get("rate", config.get("stddev", 1.0)):
            found.append(layer.name)
    if found:
        raise ValueError(
            f"estimator={estimator!r} differences forward passes, but the "
            f"{role} has layers that draw new random values in each "
            f"training pass: {sorted(found)}. Two passes would then differ "
            "by more than the input shift. Use estimator='jvp' (one pass, "
            "exact derivative) or 'exact', or remove the random layers."
        )
