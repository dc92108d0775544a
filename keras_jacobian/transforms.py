"""Image transforms whose TensorFlow gradient is not their transpose.

`RandomTranslation`, `RandomRotation`, `RandomZoom` and `RandomShear` move
pixels with TensorFlow's `ImageProjectiveTransformV3`. For a fixed draw
the transform is linear in the image, but the registered gradient applies
the inverse transform to the incoming gradient, which is the transpose of
the transform in general only for translations with
`fill_mode="constant"` and bilinear interpolation. Measured on a 6x6
image, tape Jacobian against the transform's own matrix
(`benchmarks/transform_gradients.py`): 34 of the 40 combinations of
layer, fill mode and interpolation (one draw each, and translations by a
fixed 1.5 pixels) are off by 0.06 to 1.0 per entry (of entries in
[0, 1]). The constant-fill bilinear translations are exact by
construction; a constant-fill nearest-neighbour translation is exact
for the random draw but off by 1.0 at the half-pixel shift, where
rounding ties; three other nearest-neighbour combinations happened to
be exact in their draw.
Reverse and forward mode (`"exact"`, `"vjp"`, `"jvp"`, and the input
gradients of attention maps) go through that gradient, so their input
Jacobians of a network that transforms its input are wrong; the
difference estimators need only forward passes and are right.
"""

import keras

from keras_jacobian import _compat
from keras_jacobian import kinks

TRANSFORM_OPS = frozenset(
    {"ImageProjectiveTransformV2", "ImageProjectiveTransformV3"}
)


def _layers(model):
    return [m for m in _compat.flatten_layers(model) if m is not model]


def _builtin(layer):
    return type(layer).__module__.startswith("keras.") and not isinstance(
        layer, keras.layers.Lambda
    )


def _exact_translation(layer):
    return (
        isinstance(layer, keras.layers.RandomTranslation)
        and layer.fill_mode == "constant"
        and layer.interpolation == "bilinear"
    )


def _may_hold_transform(layer):
    """A layer that may run a transform other than an exact translation:
    a Keras random augmentation (flips excepted), an augmentation
    pipeline, a `Lambda` or a layer defined outside Keras."""
    if not _builtin(layer):
        return True
    name = type(layer).__name__
    if name == "RandomFlip" or _exact_translation(layer):
        return False
    return name.startswith("Rand") or name in ("AugMix", "Pipeline")


def may_transform(model):
    """Whether `model` may run an image transform: a Keras image
    augmentation layer, a `Lambda` or a layer defined outside Keras."""
    for layer in _layers(model):
        if not _builtin(layer):
            return True
        if "preprocessing" in type(layer).__module__:
            return True
    return False


def check_forward_mode(model, role):
    """Refuses forward-mode (`"jvp"`) Jacobians of quantized layers.

    TensorFlow's forward mode does not take the gradient Keras defines
    for its quantized layers (that of their dequantized weights), which
    reverse mode takes: on an int8-quantized tanh network, `"jvp"` with
    as many directions as inputs gave 6.01 where `"exact"` and the tape
    give 12.57.

    Raises:
        ValueError: naming the quantization and the estimators to use.
    """
    modes = sorted(
        {getattr(layer, "quantization_mode", None) for layer in _layers(model)}
        - {None}
    )
    if modes:
        raise ValueError(
            f"estimator='jvp' differentiates the {role} {model.name!r} in "
            f"forward mode, but its layers are quantized ({modes}), and "
            "TensorFlow's forward mode does not take the gradient Keras "
            "defines for quantized layers (on an int8 tanh network: 6.01 "
            "where the exact value is 12.57). Use estimator='vjp' (the "
            "same objective) or 'exact', or quantize after distillation."
        )


def check_transforms(
    model, input_shape, dtype, training, role, forward_mode=False
):
    """Refuses autodiff input Jacobians through an image transform.

    Translations with `fill_mode="constant"` and bilinear interpolation
    are accepted when they are the only transforming layers (their
    gradient is the transpose), except by forward mode (`forward_mode`),
    which TensorFlow cannot trace through the transform.

    Raises:
        ValueError: naming the transform, the measured error and what to
            do instead.
    """
    if not may_transform(model):
        return
    nodes = kinks.graph_nodes(model, input_shape, dtype, training)
    found = [n for n in nodes if n.op in TRANSFORM_OPS]
    if not found:
        return
    layers = _layers(model)
    modes = sorted(
        {
            f"{n.attr['fill_mode'].s.decode().lower()} "
            f"{n.attr['interpolation'].s.decode().lower()}"
            for n in found
        }
    )
    suspects = sorted(
        f"{layer.name} ({type(layer).__name__})"
        for layer in layers
        if _may_hold_transform(layer)
    )
    if (
        modes == ["constant bilinear"]
        and not suspects
        and any(_exact_translation(layer) for layer in layers)
    ):
        if forward_mode:
            raise ValueError(
                f"estimator='jvp' differentiates the {role} {model.name!r} in "
                f"forward mode, but it transforms its input with {found[0].op} "
                f"(layers {suspects or 'RandomTranslation'}) in a "
                f"{'training' if training else 'inference'}-mode pass, which "
                "TensorFlow's forward mode cannot trace inside a compiled step "
                "(TypeError 'Could not generate a generic TraceType'). Use "
                "estimator='vjp' (the same objective) or apply the "
                "augmentation in the input pipeline."
            )
        return
    raise ValueError(
        f"The {role} {model.name!r} transforms its input with "
        f"{found[0].op} (fill_mode and interpolation {modes}; layers "
        f"{suspects}) in a "
        f"{'training' if training else 'inference'}-mode pass, and "
        "TensorFlow's gradient of that operation is not the transpose of "
        "the transform: input Jacobians through it by reverse or forward "
        "mode are wrong (measured on a 6x6 image: 0.06 to 1.0 off per "
        "entry of the transform's matrix in 34 of 40 combinations of "
        "RandomTranslation, RandomRotation, RandomZoom, RandomShear, "
        "fill_mode and interpolation). Apply the augmentation in the input "
        "pipeline "
        "instead (e.g. `dataset.map(lambda x, y: (augment(x, "
        "training=True), y))`: teacher and student then see the same "
        "image), use RandomTranslation(fill_mode='constant', "
        "interpolation='bilinear'), whose gradient is right, or, for a "
        "network without kinks, "
        "estimator='forward_difference' or 'finite_difference', which "
        "need forward passes only."
    )
