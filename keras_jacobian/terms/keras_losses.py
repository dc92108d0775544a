"""Keras losses inside terms, with the meaning they have in Keras."""

import inspect

import keras
import tensorflow as tf

from keras_jacobian import _compat


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
    function as it is; `reduce_example` turns them into the values whose
    mean over the batch is the value Keras' distillation losses compute
    (`ops.mean(loss_fn(...))`).
    """
    if isinstance(loss_fn, keras.losses.Loss):
        values = loss_fn.call(y_true, y_pred)
    else:
        values = loss_fn(y_true, y_pred)
    values = tf.cast(values, "float32")
    if values.shape.rank == 0:
        values = tf.fill(tf.shape(y_true)[:1], values)
    return values


def sums(loss_fn):
    """Whether `loss_fn` is a `keras.losses.Loss` with `reduction="sum"`."""
    return (
        isinstance(loss_fn, keras.losses.Loss)
        and getattr(loss_fn, "reduction", None) == "sum"
    )


def global_batch_size(values):
    """The number of examples of the global batch, float32 `()`.

    Under `tf.distribute` the replicas' batch sizes are summed (an
    all-reduce: a term that calls this `synchronizes`).
    """
    count = tf.cast(tf.shape(values)[0], "float32")
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
    return count


def reduce_example(loss_fn, values):
    """Per-example values `(batch,)` of a Keras loss's unreduced values.

    Their mean over the global batch (the `Distiller`'s reduction) is the
    loss's own reduction of all the values, as `ops.mean(loss_fn(...))`
    gives it in `keras.distillation`: the mean of every value for
    `"sum_over_batch_size"`, `"mean"`, `"mean_with_sample_weight"` and
    `None` (Keras' `Distiller` passes no sample weight; the vector of
    `None` is averaged), and their sum for `"sum"`: each example's sum
    times the global batch size, so that 2 replicas sum over the global
    batch as one device does (Keras does not scale a summed loss for
    replicas either).
    """
    axes = list(range(1, values.shape.rank))
    if sums(loss_fn):
        if axes:
            values = tf.reduce_sum(values, axis=axes)
        return values * global_batch_size(values)
    if axes:
        values = tf.reduce_mean(values, axis=axes)
    return values


def _completed(loss, config):
    """Adds to the configuration of a Keras loss wrapping a function the
    function's arguments its `get_config` leaves out (`Huber`'s `delta`),
    when its class takes them."""
    kwargs = _compat.loss_function_kwargs(loss)
    inner = config.get("config") if isinstance(config, dict) else None
    if not kwargs or not isinstance(inner, dict):
        return config
    try:
        accepted = inspect.signature(type(loss).__init__).parameters
    except (TypeError, ValueError):
        return config
    missing = {
        k: v for k, v in kwargs.items() if k not in inner and k in accepted
    }
    if missing:
        config = dict(config)
        config["config"] = {**inner, **missing}
    return config


def _same_loss(loss, restored):
    if type(restored) is not type(loss):
        return False
    if isinstance(loss, keras.losses.Loss):
        if loss.get_config() != restored.get_config():
            return False
        if _compat.loss_function_kwargs(loss) != _compat.loss_function_kwargs(
            restored
        ):
            return False
    return True


def serialize(loss, where="The term"):
    """A configuration entry: own names as strings, Keras losses as
    Keras serializes them (dicts), so that a string read back is never
    a Keras name.

    The entry is read back at once: a loss that would not load, or would
    load with other arguments, is a `ValueError` now, when saving, naming
    the loss, rather than an error or another loss when loading.
    """
    if isinstance(loss, str):
        try:
            loss = keras.losses.get(loss)
        except ValueError:
            return loss
    fix = (
        "Register it with `@keras.saving.register_keras_serializable()` "
        "and make its `get_config` return every argument of its "
        "`__init__`, or give a Keras loss by name."
    )
    try:
        config = _completed(loss, keras.saving.serialize_keras_object(loss))
        restored = keras.saving.deserialize_keras_object(
            config, safe_mode=False
        )
    except Exception as error:
        raise ValueError(
            f"{where} cannot be saved: its loss cannot be serialized and "
            f"loaded back ({type(error).__name__}: {error}). {fix} "
            f"Received: loss={loss!r}"
        ) from error
    if not _same_loss(loss, restored):
        raise ValueError(
            f"{where} cannot be saved: its loss would load with other "
            "arguments than it has (its `get_config` leaves some out). "
            f"{fix} Received: loss={loss!r}"
        )
    return config


def deserialize(config):
    """The loss of a configuration entry written by `serialize`."""
    if isinstance(config, str):
        return config
    return keras.losses.deserialize(config)
