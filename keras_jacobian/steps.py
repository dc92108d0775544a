"""The training and evaluation steps shared by the library's models.

`LossStepsMixin` holds `train_step` and `test_step`: a model computes its
losses, the step scales them once for `tf.distribute` replicas and applies
the optimizer. (Saving lives in `saving.py`.)
"""

import keras
import tensorflow as tf

from keras_jacobian import _compat
from keras_jacobian import label_range


def num_replicas():
    """Replicas that each compute a part of the global batch."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def reduce_per_example(values, sample_weight=None):
    """Mean over the replica's batch of per-example values, float32.

    With `sample_weight`, the weighted sum divided by the batch size, as
    Keras' `"sum_over_batch_size"` reduction does. An empty batch (a
    replica left without examples by an uneven last batch) gives 0, not
    the NaN of a mean over nothing; the step gives it no weight.
    """
    values = tf.cast(values, "float32")
    if sample_weight is not None:
        weights = tf.cast(tf.reshape(sample_weight, [-1]), "float32")
        values = values * weights
    count = tf.cast(tf.size(values), "float32")
    return tf.math.divide_no_nan(tf.reduce_sum(values), count)


def replica_share(batch):
    """This replica's share of the global batch, `batch / global_batch`.

    A replica's loss is a mean over its own examples; weighted by this
    share, the losses summed over replicas (as gradients are) make the
    mean over the global batch, as on one device, also when the last
    batch splits unevenly or leaves a replica empty. (Dividing by the
    number of replicas, as Keras does, is right for even splits only.)
    One scalar all-reduce per step; none on a single replica.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tf.ones((), "float32")
    batch = tf.cast(batch, "float32")
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, batch)
    return tf.math.divide_no_nan(batch, total)


def draw_for_replica(draw, batch, axis=0):
    """Random values for this replica's examples, as one device draws them.

    Under `tf.distribute` every replica holds the same seed-generator
    state, so independent draws would repeat the first replica's values
    on every replica. Instead every replica calls `draw(global_batch)`,
    the draw one device makes for the whole batch, and keeps its own
    slice along `axis`: N replicas then use the values one device would
    use, when the global batch splits evenly (every batch but perhaps the
    last; an uneven last batch still gets valid, if different, draws).

    Args:
        draw: a function of the number of examples returning a tensor
            with that many entries along `axis`.
        batch: this replica's number of examples (int or scalar tensor).
        axis: the examples' axis of the draw.

    Returns:
        The draw for this replica's `batch` examples.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return draw(batch)
    replicas = context.num_replicas_in_sync
    replica = context.replica_id_in_sync_group
    values = draw(batch * replicas)
    start = replica * batch
    return tf.gather(values, tf.range(start, start + batch), axis=axis)


class LossStepsMixin:
    """`train_step` and `test_step` for models that compute their losses.

    A subclass implements `_step_losses(x, y, sample_weight, training)`,
    returning `(y_pred, logged, total)`: the predictions the compiled
    metrics read, a list of `(metric, value)` pairs to log, and the total
    loss of the replica's batch (means over its examples, 0 for none).
    The step weights the total once by the replica's share of the global
    batch (gradients are summed across replicas), applies the optimizer's
    loss scale, and logs the total as Keras' `loss`, each logged value
    weighted by the replica's number of examples.
    """

    def supervised_loss(
        self, y, y_pred, sample_weight, weight=1.0, regularization=True
    ):
        """`weight` times the compiled loss, plus regularisation losses
        (unless `regularization=False`).

        Both per replica: Keras' loss objects divide by the replica count,
        which is undone here so that every part of the total is scaled in
        one place, in `train_step`. The class indices a sparse compiled
        loss reads are checked (`label_range.loss_labels`).
        """
        loss = tf.zeros((), "float32")
        compiled_loss = _compat.compiled_loss(self)
        if y is not None and compiled_loss is not None:
            y = label_range.loss_labels(self, y, y_pred)
            compiled = tf.cast(
                compiled_loss(y, y_pred, sample_weight), "float32"
            )
            loss = weight * compiled * num_replicas()
        for extra in self.losses if regularization else ():
            loss = loss + tf.cast(tf.reduce_sum(extra), "float32")
        return loss

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """The total loss of a batch, as `train_step` minimises it.

        Keras' signature. The terms read the input Jacobians of both
        networks, so the loss is computed from `x` (the student runs on
        it); `y_pred`, when given, is taken to be the student's output
        on `x`. A subclass may override this method: the steps then call
        the override (with the step's `y_pred`) and minimise what it
        returns, as Keras does; its `super().compute_loss(...)` returns
        the step's total, computed once.

        Args:
            x: the input batch.
            y: labels, or `None`.
            y_pred: the student's predictions on `x`, or `None`.
            sample_weight: per-example weights, or `None`.
            training: whether the student runs in training mode.

        Returns:
            The total loss, a float32 scalar.
        """
        pending = getattr(self, "_pending_step", None)
        if pending is not None and pending[0] is x:
            return pending[1]
        del y_pred
        return self._step_losses(x, y, sample_weight, training=training)[2]

    def _step_total(self, x, y, sample_weight, training):
        """`_step_losses`, through an overriding `compute_loss` if any."""
        y_pred, logged, total = self._step_losses(
            x, y, sample_weight, training=training
        )
        if type(self).compute_loss is not LossStepsMixin.compute_loss:
            object.__setattr__(self, "_pending_step", (x, total))
            try:
                total = self.compute_loss(
                    x=x,
                    y=y,
                    y_pred=y_pred,
                    sample_weight=sample_weight,
                    training=training,
                )
            finally:
                object.__setattr__(self, "_pending_step", None)
            total = tf.cast(total, "float32")
        return y_pred, logged, total

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        share = replica_share(tf.shape(tf.nest.flatten(x)[0])[0])
        with tf.GradientTape() as tape:
            y_pred, logged, total = self._step_total(
                x, y, sample_weight, training=True
            )
            scaled = total * share
            scaled = self.optimizer.scale_loss(scaled)
        try:
            grads = tape.gradient(scaled, variables)
        except tf.errors.InternalError as error:
            raise _eager_forward_mode_error(error) from error
        label_range.guarded_apply(self, grads, variables)
        return self._log(x, y, y_pred, sample_weight, logged, total)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred, logged, total = self._step_total(
            x, y, sample_weight, training=False
        )
        return self._log(x, y, y_pred, sample_weight, logged, total)

    def _log(self, x, y, y_pred, sample_weight, logged, total):
        batch = tf.shape(tf.nest.flatten(x)[0])[0]
        for metric, value in logged:
            metric.update_state(value, sample_weight=batch)
        _compat.loss_tracker(self).update_state(total, sample_weight=batch)
        if y is None:
            return self.get_metrics_result()
        return self.compute_metrics(x, y, y_pred, sample_weight)


def _eager_forward_mode_error(error):
    """A clearer error for TensorFlow's failure to differentiate, eagerly,
    a forward-mode pass through an XLA function."""
    if "returned too few gradients" not in str(error) or (
        not tf.executing_eagerly()
    ):
        return error
    return RuntimeError(
        "TensorFlow could not differentiate the forward-mode Jacobian "
        "pass (estimator='jvp') of a network that runs XLA functions "
        "(e.g. Keras' grouped and depthwise convolutions in ConvNeXt) "
        "when the step runs eagerly: compile without `run_eagerly=True` "
        "(the traced step works), or use estimator='vjp' (reverse mode, "
        f"the same objective). TensorFlow said: {error.message}"
    )


def without_updates(model, forward):
    """`forward`, leaving `model`'s non-trainable float variables as they
    were: a pass on other inputs (shifted copies of the batch, noisy
    copies) must not update BatchNorm's moving statistics again."""
    variables = [
        v
        for v in model.non_trainable_variables
        if keras.backend.is_float_dtype(v.dtype)
    ]
    if not variables:
        return forward

    def again(inputs):
        saved = [tf.identity(v.value) for v in variables]
        outputs = forward(inputs)
        with tf.control_dependencies(tf.nest.flatten(outputs)):
            for v, value in zip(variables, saved):
                v.assign(value)
        return outputs

    return again
