"""The training and evaluation steps shared by the library's models.

`LossStepsMixin` holds `train_step` and `test_step`: a model computes its
losses, the step scales them once for `tf.distribute` replicas and applies
the optimizer. (Saving lives in `saving.py`.)
"""

import keras
import tensorflow as tf


def num_replicas():
    """Replicas that each compute a part of the global batch."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def reduce_per_example(values, sample_weight=None):
    """Mean over the replica's batch of per-example values, float32.

    With `sample_weight`, the weighted sum divided by the batch size, as
    Keras' `"sum_over_batch_size"` reduction does.
    """
    values = tf.cast(values, "float32")
    if sample_weight is not None:
        weights = tf.cast(tf.reshape(sample_weight, [-1]), "float32")
        values = values * weights
    return tf.reduce_mean(values)


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
    loss of the replica's batch. The step divides the total by the number
    of replicas once (gradients are summed across replicas), applies the
    optimizer's loss scale, and logs the total as Keras' `loss`.
    """

    def supervised_loss(self, y, y_pred, sample_weight, weight=1.0):
        """`weight` times the compiled loss, plus regularisation losses.

        Both per replica: Keras' loss objects divide by the replica count,
        which is undone here so that every part of the total is scaled in
        one place, in `train_step`.
        """
        loss = tf.zeros((), "float32")
        if y is not None and self._compile_loss is not None:
            compiled = tf.cast(
                self._compile_loss(y, y_pred, sample_weight), "float32"
            )
            loss = weight * compiled * num_replicas()
        for extra in self.losses:
            loss = loss + tf.cast(tf.reduce_sum(extra), "float32")
        return loss

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            y_pred, logged, total = self._step_losses(
                x, y, sample_weight, training=True
            )
            scaled = total / num_replicas()
            scaled = self.optimizer.scale_loss(scaled)
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        return self._log(x, y, y_pred, sample_weight, logged, total)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred, logged, total = self._step_losses(
            x, y, sample_weight, training=False
        )
        return self._log(x, y, y_pred, sample_weight, logged, total)

    def _log(self, x, y, y_pred, sample_weight, logged, total):
        batch = tf.shape(tf.nest.flatten(x)[0])[0]
        for metric, value in logged:
            metric.update_state(value, sample_weight=batch)
        self._loss_tracker.update_state(total, sample_weight=batch)
        if y is None:
            return self.get_metrics_result()
        return self.compute_metrics(x, y, y_pred, sample_weight)
