"""Teacher caching: compute the teacher's targets once, reuse every epoch.

With data that is the same every epoch (no random augmentation), the
teacher's part of each step (its logits, its input Jacobian rows) is the
same every epoch too. `cache_teacher` computes it once per example and
returns a `tf.data.Dataset` that carries it with the inputs, so that the
`Distiller` trains the student without running the teacher at all.
"""

import re

import numpy as np
import tensorflow as tf

from keras_jacobian import _compat

# Ops whose output changes from one pass over the data to the next (or
# may: Python functions cannot be inspected). `PyFuncStateless` is not one:
# `tf.numpy_function(..., stateful=False)` declares the function pure,
# which TensorFlow itself relies on (it may fold or deduplicate calls).
RANDOM_OP_PATTERN = re.compile(
    r"Random|Multinomial|TruncatedNormal|RngReadAndSkip|RngBitGenerator|"
    r"SampleDistortedBoundingBox|PyFunc(?!Stateless)"
)


def dataset_random_ops(dataset):
    """Names of the random (or opaque Python) ops in a dataset's pipeline.

    Reads the serialised graph of the pipeline, including the functions of
    `map`, `filter`, `interleave` and the like. `shuffle` is not reported:
    it only reorders examples, and cached targets travel with their
    examples. Nor is `tf.numpy_function(..., stateful=False)`, declared
    pure; other Python functions are (`PyFunc`, `EagerPyFunc`).

    Args:
        dataset: a `tf.data.Dataset`.

    Returns:
        A sorted list of op type names, empty when the pipeline is
        deterministic.
    """
    graph = tf.compat.v1.GraphDef.FromString(
        _compat.serialized_dataset_graph(dataset)
    )
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops.update(node.op for node in function.node_def)
    return sorted(op for op in ops if RANDOM_OP_PATTERN.search(op))


def _check_terms(distiller):
    refused = [t.name for t in distiller.distillation_losses if not t.cacheable]
    if refused:
        raise ValueError(
            "Teacher targets can only be cached when they depend on the "
            "example alone, but these terms draw new random values every "
            f"step: {refused} (random projections, input noise). Train "
            "with the live teacher (pass the data to `fit` directly), or "
            "use a deterministic target such as "
            "JacobianMatching(target='teacher_top1')."
        )


def _split(element):
    if isinstance(element, (tuple, list)):
        element = tuple(element)
        if len(element) == 1:
            return element[0], None, None
        if len(element) == 2:
            return element[0], element[1], None
        if len(element) == 3:
            return element
    return element, None, None


def _as_dataset(data, batch_size):
    if isinstance(data, tf.data.Dataset):
        random_ops = dataset_random_ops(data)
        if random_ops:
            raise ValueError(
                "The input pipeline contains random operations "
                f"({random_ops}), so each epoch sees different inputs and "
                "the teacher's targets computed once would be wrong for "
                "later epochs. Cache the deterministic part of the pipeline "
                "(e.g. before the augmentation), or train with the live "
                "teacher. `shuffle` alone is fine. Python functions "
                "(`tf.py_function`, `tf.numpy_function`) are refused too, "
                "since they cannot be inspected: if yours is deterministic, "
                "declare it with `tf.numpy_function(..., stateful=False)`, "
                "or pass `check_random=False`."
            )
        return data
    if batch_size is None:
        raise ValueError(
            "`batch_size` is required when the data is given as arrays, "
            f"e.g. `(x, y)`. Received: batch_size={batch_size!r}"
        )
    if isinstance(data, list):
        data = tuple(data)
    return tf.data.Dataset.from_tensor_slices(data).batch(batch_size)


def _teacher_input(x):
    if isinstance(x, dict):
        return x.get("teacher", x["student"]), x["student"]
    return x, x


def cache_teacher(
    distiller,
    data,
    batch_size=None,
    shuffle=False,
    seed=None,
    check_random=True,
):
    """Precomputes the teacher's targets of every example, once.

    The teacher's targets of each term (`distiller.teacher_targets`: its
    logits, its Jacobian rows, ...) are computed for every example of one
    pass over `data` and returned in a dataset of
    `({"student": x, "teacher_targets": targets}, y)`, which the `Distiller`
    trains on without running the teacher. With `shuffle=True` the examples
    are shuffled every epoch; the targets travel with their examples.

    Only valid when every pass over `data` yields the same inputs: random
    augmentation would change the inputs but not the cached targets. A
    `tf.data` pipeline with random ops is refused, and so are terms whose
    targets are drawn anew each step (`term.cacheable` is False: random
    projections, input noise).

    Memory: the targets of every example are held in host memory; a
    Jacobian row is the size of an input, so `target="all"` needs one
    input-sized array per class and example.

    Args:
        distiller: a `keras_jacobian.Distiller`.
        data: a `tf.data.Dataset` of batches `x`, `(x, y)` or
            `(x, y, sample_weight)`, or a tuple of arrays `(x, y)` /
            `(x, y, sample_weight)`, or an array `x`. `x` may be a dict
            `{"student": x_s, "teacher": x_t}`.
        batch_size: batch size of the returned dataset; required with
            arrays, defaults to the dataset's first batch size otherwise.
        shuffle: shuffle the examples every epoch (with `seed`).
        seed: seed of the shuffle.
        check_random: refuse pipelines with random ops; turn off only for
            a pipeline whose Python functions are known to be
            deterministic (a NumPy function declared with
            `tf.numpy_function(..., stateful=False)` is accepted as it is).

    Returns:
        A batched `tf.data.Dataset` to pass to `distiller.fit`.

    Example:

    ```python
    train = keras_jacobian.cache_teacher(
        distiller, (x_train, y_train), batch_size=64, shuffle=True, seed=0
    )
    distiller.fit(train, epochs=10)
    ```
    """
    _check_terms(distiller)
    if isinstance(data, tf.data.Dataset) and not check_random:
        dataset = data
    else:
        dataset = _as_dataset(data, batch_size)

    @tf.function(reduce_retracing=True)
    def targets_of(xt, y):
        return distiller.teacher_targets(xt, y)

    parts = {"x": [], "y": [], "sw": [], "targets": []}
    first_batch = None
    for element in dataset:
        x, y, sw = _split(element)
        xt, xs = _teacher_input(x)
        xt = tf.convert_to_tensor(xt)
        if not xt.dtype.is_floating:
            xt = tf.cast(xt, "float32")
        if first_batch is None:
            first_batch = int(tf.shape(xs)[0])
        parts["targets"].append(
            tf.nest.map_structure(lambda t: t.numpy(), targets_of(xt, y))
        )
        parts["x"].append(np.asarray(xs))
        if y is not None:
            parts["y"].append(tf.nest.map_structure(np.asarray, y))
        if sw is not None:
            parts["sw"].append(np.asarray(sw))
    if first_batch is None:
        raise ValueError("`data` is empty: there is nothing to cache.")

    def concat(chunks):
        return tf.nest.map_structure(
            lambda *c: np.concatenate(c, axis=0), *chunks
        )

    inputs = {
        "student": concat(parts["x"]),
        # A tuple: tf.data would read a list as one tensor.
        "teacher_targets": tuple(concat(parts["targets"])),
    }
    element = (inputs,)
    if parts["y"]:
        element += (concat(parts["y"]),)
        if parts["sw"]:
            element += (concat(parts["sw"]),)
    cached = tf.data.Dataset.from_tensor_slices(
        element if len(element) > 1 else inputs
    )
    if shuffle:
        count = len(inputs["student"])
        cached = cached.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    return cached.batch(batch_size or first_batch)


__all__ = ["cache_teacher", "dataset_random_ops"]
