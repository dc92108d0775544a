"""Picking a `tf.distribute` strategy by name, and who writes files.

Example scripts expose `--strategy` with the names in `STRATEGIES`:

- `"default"`: TensorFlow's default strategy (one device, no replicas).
- `"one_device"`: `OneDeviceStrategy` on the given device (default: the
  first GPU, else the CPU).
- `"mirrored"`: `MirroredStrategy` over all local GPUs, or over the given
  devices (e.g. the logical CPU devices made by `split_cpu`).
- `"multi_worker"`: `MultiWorkerMirroredStrategy` configured by the
  `TF_CONFIG` environment variable (train it with
  `keras_jacobian.distribute.multi_worker.fit`).
- `"tpu"`: `TPUStrategy` through a `TPUClusterResolver`.

Every distributed strategy trains the same model as one device with the
same global batch: the `Distiller` scales its losses once for replicas.
"""

import json
import os

import tensorflow as tf

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")


def get_strategy(name="default", devices=None, tpu=None):
    """Returns a `tf.distribute.Strategy` picked by name.

    Args:
        name: one of `"default"`, `"one_device"`, `"mirrored"`,
            `"multi_worker"`, `"tpu"`.
        devices: for `"mirrored"`, a list of device names (default: all
            local GPUs, or the CPU when there is none); for
            `"one_device"`, a single device name or a one-item list.
        tpu: for `"tpu"`, the TPU name or address given to
            `TPUClusterResolver` (default: found from the environment).

    Returns:
        A `tf.distribute.Strategy`. Build and compile models inside
        `strategy.scope()`.

    Raises:
        ValueError: for an unknown name, a malformed or absent `TF_CONFIG`
            with `"multi_worker"`, or no reachable TPU with `"tpu"`.

    Example:

    ```python
    strategy = keras_jacobian.get_strategy("mirrored")
    with strategy.scope():
        distiller = keras_jacobian.Distiller(teacher, student, terms)
        distiller.compile(optimizer="adam")
    distiller.fit(dataset, epochs=10)  # dataset batched globally
    ```
    """
    if name not in STRATEGIES:
        raise ValueError(
            f"`name` must be one of {STRATEGIES}. Received: name={name!r}"
        )
    if name == "default":
        _no_devices(name, devices)
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(_one_device(devices))
    if name == "mirrored":
        if devices is not None:
            devices = list(devices)
            if not devices:
                raise ValueError(
                    "`devices` must name at least one device for "
                    "'mirrored'. Received: devices=[]"
                )
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        _no_devices(name, devices)
        cluster_spec_from_env()
        return tf.distribute.MultiWorkerMirroredStrategy()
    _no_devices(name, devices)
    return _tpu_strategy(tpu)


def _no_devices(name, devices):
    if devices is not None:
        raise ValueError(
            f"`devices` is only used by 'mirrored' and 'one_device'. "
            f"Received: devices={devices!r} with name={name!r}."
        )


def _one_device(devices):
    if devices is None:
        gpus = tf.config.list_logical_devices("GPU")
        return gpus[0].name if gpus else "/cpu:0"
    if isinstance(devices, str):
        return devices
    devices = list(devices)
    if len(devices) != 1:
        raise ValueError(
            "'one_device' takes exactly one device. Received: "
            f"devices={devices!r}"
        )
    return devices[0]


def cluster_spec_from_env():
    """Reads and checks `TF_CONFIG`; returns the parsed dict.

    Raises:
        ValueError: when `TF_CONFIG` is absent, not JSON, or lacks a
            `cluster` with workers and a `task` of known type and index.
    """
    raw = os.environ.get("TF_CONFIG")
    example = (
        'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", '
        '"host2:12345"]}, "task": {"type": "worker", "index": 0}}\''
    )
    if not raw:
        raise ValueError(
            "'multi_worker' needs the TF_CONFIG environment variable, "
            "which describes the cluster and this process's place in it. "
            f"Received: no TF_CONFIG. Set it on every worker, e.g. {example}"
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"TF_CONFIG must be JSON. Received: {raw!r} ({error}). "
            f"Expected, e.g. {example}"
        ) from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    workers = None
    if isinstance(cluster, dict):
        workers = list(cluster.get("chief", [])) + list(
            cluster.get("worker", [])
        )
    if not workers or not isinstance(task, dict):
        raise ValueError(
            "TF_CONFIG must have a 'cluster' with a 'worker' (and optional "
            "'chief') list of host:port addresses and a 'task' with 'type' "
            f"and 'index'. Received: {raw!r}. Expected, e.g. {example}"
        )
    task_type, index = task.get("type"), task.get("index")
    members = cluster.get(task_type) if task_type else None
    if (
        not isinstance(members, list)
        or not isinstance(index, int)
        or not (0 <= index < len(members))
    ):
        raise ValueError(
            "TF_CONFIG's 'task' must name a job of the cluster and an "
            f"index within it. Received: task={task!r} for cluster "
            f"{cluster!r}."
        )
    return config


def _tpu_strategy(tpu):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise ValueError(
            "'tpu' needs a reachable TPU, found by TPUClusterResolver "
            f"(tpu={tpu!r}). None was found: {error}. On a TPU VM leave "
            "`tpu=None`; elsewhere pass the TPU's name or grpc:// address, "
            "or pick another strategy."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy=None):
    """Whether this process should write checkpoints, logs and results.

    True for the worker with `task_type` `"chief"`, or for worker 0 when
    the cluster has no chief (TensorFlow's convention), and for every
    single-process strategy. Callbacks pass their model's
    `distribute_strategy`: outside a strategy scope, the current strategy
    is the default one, which knows no cluster.

    Args:
        strategy: a `tf.distribute.Strategy`, or a model (its
            `distribute_strategy` is read, as 0.1.0's
            `callbacks.chief.is_chief(model)` did); default the current
            strategy.

    Returns:
        A Python bool.
    """
    strategy = getattr(strategy, "distribute_strategy", strategy)
    strategy = strategy or tf.distribute.get_strategy()
    return is_chief_task(getattr(strategy, "cluster_resolver", None))


def is_chief_task(cluster_resolver):
    """True for the chief, or worker 0 of a cluster without a chief.

    A missing resolver or task type (one process) counts as chief.

    Args:
        cluster_resolver: a `tf.distribute.cluster_resolver` or `None`.

    Returns:
        A Python bool.
    """
    task_type = getattr(cluster_resolver, "task_type", None)
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    cluster = cluster_resolver.cluster_spec().as_dict()
    return (
        task_type == "worker"
        and cluster_resolver.task_id == 0
        and "chief" not in cluster
    )


def split_cpu(n):
    """Splits the physical CPU into `n` logical devices.

    Lets `get_strategy("mirrored", devices=...)` run `n` replicas on one
    CPU (testing, or checking that a run scales). It must be called before
    TensorFlow initialises its devices, i.e. before any op runs or any
    model is built in the process.

    Args:
        n: number of logical CPU devices, an integer >= 1.

    Returns:
        The logical device names, e.g. `["/device:CPU:0", "/device:CPU:1"]`.

    Raises:
        ValueError: when `n` is not a positive integer, or when TensorFlow
            has already initialised its devices with another split.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"`n` must be an integer >= 1. Received: n={n!r}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * n
        )
    except RuntimeError as error:
        current = tf.config.list_logical_devices("CPU")
        if len(current) == n:
            return [d.name for d in current]
        raise ValueError(
            f"split_cpu({n}) must run before TensorFlow initialises its "
            f"devices, but they are initialised already with "
            f"{len(current)} logical CPU device(s) ({error}). Call it at "
            "the start of the program, before building any model or "
            "running any op."
        ) from None
    return [d.name for d in tf.config.list_logical_devices("CPU")]
