"""Keras losses inside terms, with the meaning they have in Keras."""

import keras
import tensorflow as tf


def loss_function(loss, where, own=()):
    """The callable of a Keras loss given as in `keras.distillation`.

    Args:
        loss: a Keras loss name, a loss function or a `keras.losses.Loss`.
        where: the term's name, for messages.
        own: the term's own loss names, for messages.

    Returns:
        The function or `Loss` instance.
    """
    own_names = f" or one of {tuple(own)}" if own else ""
    if isinstance(loss, (list, tuple, dict)):
        raise ValueError(
            f"{where} takes a single loss (networks with one distillation "
            "output); nested structures of losses for several outputs are "
            f"not supported. Received: loss={loss!r}. Use one term per "
            "output or layer."
        )
    if isinstance(loss, str):
        try:
            return keras.losses.get(loss)
        except ValueError:
            raise ValueError(
                f"{where}: `loss` must be a Keras loss (a name such as "
                "'kl_divergence' or 'mean_squared_error', a function or a "
                f"keras.losses.Loss){own_names}. Received: loss={loss!r}"
            ) from None
    if callable(loss):
        return loss
    raise ValueError(
        f"{where}: `loss` must be a Keras loss name, a loss function or a "
        f"keras.losses.Loss{own_names}. Received: loss={loss!r}"
    )


def per_example(loss_fn, y_true, y_pred):
    """Unreduced values of a Keras loss, float32, batch axis first.

    A `keras.losses.Loss` is applied without its reduction (`call`), a
    function as it is; averaging the result gives the value Keras'
    distillation losses compute (`ops.mean(loss_fn(...))`).
    """
    if isinstance(loss_fn, keras.losses.Loss):
        values = loss_fn.call(y_true, y_pred)
    else:
        values = loss_fn(y_true, y_pred)
    values = tf.cast(values, "float32")
    if values.shape.rank == 0:
        values = tf.fill(tf.shape(y_true)[:1], values)
    return values


def serialize(loss):
    """A configuration entry: own names as strings, Keras losses as
    Keras serializes them (dicts), so that a string read back is never
    a Keras name."""
    if isinstance(loss, str):
        try:
            loss = keras.losses.get(loss)
        except ValueError:
            return loss
    return keras.saving.serialize_keras_object(loss)


def deserialize(config):
    """The loss of a configuration entry written by `serialize`."""
    if isinstance(config, str):
        return config
    return keras.losses.deserialize(config)
