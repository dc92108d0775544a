"""Runtime probes of the networks, run once at construction.

Unlike the argument checks of `validation`, these run a model: eagerly,
on a small random batch, to find out whether its output has an input
gradient (twice differentiable when a Jacobian term trains it) and which
input size fits a fully convolutional model.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_jacobian.validation import TOKEN_FIX


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
    from keras_jacobian import randomness

    shape = probe_shape(model, input_shape, role)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2,) + shape).astype("float32")
    # A network random in inference mode (Monte Carlo dropout) advances
    # its seed states: the check leaves them as they were.
    with randomness.preserved_states(model):
        in_replica_context(
            lambda: _probe(model, tf.constant(x), role, second_order)
        )


# Sizes tried for the unknown spatial axes of a probe input, smallest
# first. 32 = 2^5: the common image backbones (VGG, ResNet, MobileNet,
# EfficientNet) downsample by 32 in five stride-2 stages and still have a
# 1x1 map at 32x32, while a smaller input makes some of them pool empty
# maps. Networks with large "valid" kernels need more: the first size at
# which every layer's output is non-empty is used.
PROBE_SIZES = (32, 64, 128, 256)


def probe_shape(model, input_shape, role):
    """A concrete input shape (without batch) for probing `model`.

    Axes of `input_shape` that are None (a fully convolutional model built
    on `keras.Input((None, None, C))`) get the smallest size of
    `PROBE_SIZES` for which Keras' shape inference of the model succeeds
    (it refuses layers whose output would be empty); known axes are kept.

    Raises:
        ValueError: when no size of `PROBE_SIZES` fits the model.
    """
    input_shape = tuple(input_shape)
    if None not in input_shape:
        return input_shape
    last_error = None
    for size in PROBE_SIZES:
        shape = tuple(size if d is None else d for d in input_shape)
        try:
            spec = model.compute_output_spec(keras.KerasTensor((2,) + shape))
        except (ValueError, TypeError) as error:
            last_error = error
            continue
        shapes = [tuple(t.shape) for t in tf.nest.flatten(spec)]
        if all(d is None or d > 0 for s in shapes for d in s):
            return shape
    raise ValueError(
        f"The {role} model {model.name!r} takes inputs of unknown size "
        f"{(None,) + input_shape}, and none of the sizes {PROBE_SIZES} "
        "given to the unknown axes fits it, so its input gradients cannot "
        f"be checked at construction (last error: {last_error}). Build the "
        "model on a fixed `keras.Input(shape)`, or pass "
        "`check_differentiable=False`."
    )


def in_replica_context(fn):
    """Runs `fn()` where a model's variables can be differentiated.

    Under `strategy.scope()` a model's variables are distributed, and a
    `tf.GradientTape` cannot watch them in the cross-replica context
    ("DistributedVariable.handle is not available outside the replica
    context"). There `fn` runs on every replica with `strategy.run`;
    elsewhere it simply runs. Exceptions raised by `fn` propagate.

    `strategy.run` called eagerly logs a warning that advises a
    `tf.function`; for a check run once that advice does not apply (and
    a `tf.function` per model would warn of retracing instead), so that
    one message is dropped.
    """
    if tf.distribute.has_strategy() and (
        tf.distribute.in_cross_replica_context()
    ):
        logger = tf.get_logger()
        logger.addFilter(_drop_eager_run_warning)
        try:
            tf.distribute.get_strategy().run(fn)
        finally:
            logger.removeFilter(_drop_eager_run_warning)
        return
    fn()


def _drop_eager_run_warning(record):
    """A `logging` filter: False for `strategy.run`'s eager-overhead note."""
    return "eagerly has significant overhead" not in record.getMessage()


def _input_gradient(tape, scalar, x, model, role):
    try:
        return tape.gradient(scalar, x)
    except (ValueError, TypeError, tf.errors.OpError) as error:
        quantized = sorted(
            {
                layer.quantization_mode
                for layer in _all_layers(model)
                if getattr(layer, "quantization_mode", None)
            }
        )
        hint = (
            f" Its layers are quantized ({quantized}); Keras' float8 "
            "layers fail this way. Distil with the unquantized model and "
            "quantize afterwards."
            if quantized
            else ""
        )
        raise ValueError(
            f"TensorFlow cannot differentiate the {role} {model.name!r} "
            f"with respect to its input ({type(error).__name__}"
            f": {error}), and Jacobian terms need that gradient.{hint}"
        ) from error


def _probe(model, x, role, second_order):
    kernels = [v for v in model.trainable_variables if "kernel" in v.path]
    try:
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                inner.watch(x)
                out = model(x, training=False)
                out = out if not isinstance(out, (list, tuple)) else out[0]
                scalar = tf.reduce_sum(tf.cast(out, "float32") ** 2)
            grad = _input_gradient(inner, scalar, x, model, role)
            if grad is None:
                raise ValueError(
                    f"The {role} model {model.name!r} has no gradient with "
                    "respect to its input, so Jacobian terms cannot use "
                    "it: input Jacobians need a floating-point input the "
                    "output is differentiable in. Look for an embedding "
                    "(token ids), a `stop_gradient`, a cast to an integer "
                    "type or an op without a gradient between input and "
                    f"output. {TOKEN_FIX}"
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
