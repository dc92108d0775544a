"""Input-direction estimators: 2 replicas against one device.

Trains each case on one device and on 2 replicas (logical CPUs) from the
same weights and seed, then prints one JSON line
`RESULT {case: {"max_weight_diff", "moved", "loss_one", "loss_mirrored"}}`.
Every replica draws the directions of the whole global batch and keeps
its slice, so the two runs draw the same directions.
Run: PYTHONPATH=.:tests/distributed_jobs python \
    tests/distributed_jobs/projections_equality.py
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keras_jacobian.distribute import strategies  # noqa: E402

DEVICES = strategies.split_cpu(2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tiny_models  # noqa: E402

from keras_jacobian.distiller import Distiller  # noqa: E402
from keras_jacobian.regularized import JacobianRegularizedModel  # noqa: E402
from keras_jacobian.terms.jacobian import JacobianMatching  # noqa: E402
from keras_jacobian.terms.logits import LogitsDistillation  # noqa: E402

GLOBAL_BATCH = 8
STEPS = 3
ESTIMATORS = ("jvp", "finite_difference", "forward_difference")


def distiller_case(estimator):
    def make():
        teacher, student = tiny_models.pair()
        model = Distiller(
            teacher,
            student,
            [
                LogitsDistillation("kl", temperature=2.0),
                JacobianMatching(
                    "all",
                    estimator=estimator,
                    normalize=False,
                    num_projections=2,
                ),
            ],
            distillation_loss_weights=[1.0, 0.5],
            seed=4,
        )
        return model, student

    return make


def regularized_case(estimator):
    def make():
        _, student = tiny_models.pair()
        model = JacobianRegularizedModel(
            student, weight=0.1, target="all", estimator=estimator, seed=4
        )
        return model, student

    return make


def train(make, strategy):
    x, y = tiny_models.data(GLOBAL_BATCH * STEPS)
    with strategy.scope():
        model, student = make()
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    history = model.fit(dataset, epochs=1, verbose=0)
    return student.get_weights(), history.history["loss"][-1]


def main(names):
    cases = {}
    for estimator in ESTIMATORS:
        cases[f"distiller_{estimator}"] = distiller_case(estimator)
        cases[f"regularized_{estimator}"] = regularized_case(estimator)
    one = strategies.get_strategy("one_device", devices=DEVICES[0])
    mirrored = strategies.get_strategy("mirrored", devices=DEVICES)
    result = {}
    for name in names or cases:
        initial = cases[name]()[1].get_weights()
        w1, loss1 = train(cases[name], one)
        w2, loss2 = train(cases[name], mirrored)
        result[name] = {
            "max_weight_diff": max(
                float(np.max(np.abs(a - b))) for a, b in zip(w1, w2)
            ),
            "moved": max(
                float(np.max(np.abs(a - b))) for a, b in zip(w1, initial)
            ),
            "loss_one": float(loss1),
            "loss_mirrored": float(loss2),
        }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
