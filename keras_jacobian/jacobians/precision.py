"""The float precision a network computes in."""

import tensorflow as tf

from keras_jacobian import _compat


def compute_precision(*dtypes):
    """The coarsest float dtype name among `dtypes` (None entries skipped)."""
    order = ["float64", "float32", "float16", "bfloat16"]
    names = [tf.as_dtype(d).name for d in dtypes if d is not None]
    names = [n for n in names if n in order] or ["float32"]
    return max(names, key=order.index)


def network_precision(model):
    """The coarsest float dtype a Keras model computes in.

    Reads the `compute_dtype` of every layer, nested models and the
    sublayers of custom layers included, and of the model's inputs: a
    model built under `mixed_bfloat16` keeps computing in bfloat16 under
    any later global policy, and its difference steps must follow.

    Returns:
        A dtype name, e.g. `"bfloat16"`; `"float32"` when none is float.
    """
    dtypes = [
        getattr(layer, "compute_dtype", None)
        for layer in _compat.flatten_layers(model)
    ]
    try:
        dtypes += [t.dtype for t in model.inputs or []]
    except (AttributeError, ValueError):
        pass
    return compute_precision(*dtypes)
