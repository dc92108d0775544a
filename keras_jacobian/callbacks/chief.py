"""Which worker writes files under multi-worker `tf.distribute`."""

import tensorflow as tf


def is_chief(model=None):
    """True unless this process is a non-chief worker of a cluster.

    Reads the task of the model's strategy (or the current strategy): the
    chief writes, or worker 0 when the cluster has no chief. A single
    process, and any strategy without a cluster, counts as chief.
    """
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is None:
        strategy = tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if resolver is None or task_type is None:
        return True
    if task_type == "chief":
        return True
    cluster = resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and (
        "chief" not in cluster
    )
