"""Loss scaling for `tf.distribute` replicas, done in one place."""

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
