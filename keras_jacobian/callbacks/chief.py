"""Which worker writes files under multi-worker `tf.distribute`."""

import tensorflow as tf


def is_chief_task(cluster_resolver):
    """True for the chief (or worker 0 of a cluster without a chief).

    A missing resolver or task type (one process) counts as chief.
    """
    task_type = getattr(cluster_resolver, "task_type", None)
    if cluster_resolver is None or task_type is None:
        return True
    if task_type == "chief":
        return True
    cluster = cluster_resolver.cluster_spec().as_dict()
    return (
        task_type == "worker"
        and cluster_resolver.task_id == 0
        and "chief" not in cluster
    )


def is_chief(model=None):
    """True unless this process is a non-chief worker of a cluster.

    Reads the cluster resolver of the model's strategy (or of the current
    strategy).
    """
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is None:
        strategy = tf.distribute.get_strategy()
    return is_chief_task(getattr(strategy, "cluster_resolver", None))
