"""Trains every conformance case on one device and on 2 replicas.

Each model is built with default arguments inside `strategy.scope()`,
compiled with SGD and trained by `fit` for 2 steps of a global batch of
4; prints one line `RESULT {case: {max_weight_diff, moved, loss_one,
loss_mirrored} or {error}}`.
Run: PYTHONPATH=. python tests/distributed_jobs/conformance_mirrored.py
"""

import json
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keras_jacobian.distribute import strategies  # noqa: E402

DEVICES = strategies.split_cpu(2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tests import conformance_cases as cc  # noqa: E402
from tests import conformance_references as ref  # noqa: E402

STEPS = 2


def train(case, strategy):
    x, y = ref.data(ref.BATCH * STEPS, seed=3)
    with strategy.scope():
        keras.utils.set_random_seed(0)  # the same adapters and seed states
        teacher, student = case.networks()
        model = case.build(teacher, student)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    start = [np.array(v.numpy()) for v in model.trainable_variables]
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(ref.BATCH)
    history = model.fit(dataset, epochs=1, verbose=0)
    end = [np.array(v.numpy()) for v in model.trainable_variables]
    return start, end, float(history.history["loss"][-1])


def compare(case, one, mirrored):
    start, w1, loss1 = train(case, one)
    _, w2, loss2 = train(case, mirrored)
    return {
        "max_weight_diff": max(
            float(np.max(np.abs(a - b))) for a, b in zip(w1, w2)
        ),
        "moved": max(float(np.max(np.abs(a - b))) for a, b in zip(w1, start)),
        "loss_one": loss1,
        "loss_mirrored": loss2,
    }


def main(names):
    one = strategies.get_strategy("one_device", devices=DEVICES[0])
    mirrored = strategies.get_strategy("mirrored", devices=DEVICES)
    result = {}
    for name in names or cc.REGISTRY:
        keras.backend.clear_session()
        try:
            result[name] = compare(cc.REGISTRY[name], one, mirrored)
        except Exception as error:
            last = traceback.extract_tb(error.__traceback__)[-1]
            result[name] = {
                "error": f"{type(error).__name__}: {error} "
                f"(at {os.path.basename(last.filename)}:{last.lineno})"
            }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
