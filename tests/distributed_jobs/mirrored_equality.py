"""Trains on one device and on 2 replicas (logical CPUs); prints diffs.

Prints one JSON line: {case: max |w_1 - w_2| over the student's weights}.
Run: PYTHONPATH=.:tests/distributed_jobs python \
    tests/distributed_jobs/mirrored_equality.py
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
from keras_jacobian.terms.features import FeatureDistillation  # noqa: E402
from keras_jacobian.terms.jacobian import JacobianMatching  # noqa: E402
from keras_jacobian.terms.logits import LogitsDistillation  # noqa: E402

GLOBAL_BATCH = 8
STEPS = 3


def distiller_case(target):
    def make():
        teacher, student = tiny_models.pair()
        model = Distiller(
            teacher,
            student,
            [
                LogitsDistillation(temperature=2.0, loss="kd"),
                JacobianMatching(
                    target=target,
                    estimator="exact",
                    normalize=True,
                    name="norm",
                ),
                JacobianMatching(
                    target=target,
                    estimator="exact",
                    normalize=False,
                    name="raw",
                ),
            ],
            distillation_loss_weights=[1.0, 0.5, 0.5],
            supervised_loss_weight=1.0,
        )
        return model, student

    return make


def batch_norm_case(sync):
    def make():
        teacher, _ = tiny_models.pair()
        student = tiny_models.seeded(
            tiny_models.conv_net("student", batch_norm=True, sync=sync), 2
        )
        model = Distiller(
            teacher,
            student,
            [
                LogitsDistillation(temperature=4.0, loss="kd"),
                JacobianMatching("teacher_top1"),
            ],
            supervised_loss_weight=1.0,
        )
        return model, student

    return make


def summed_keras_losses_case():
    teacher, student = tiny_models.pair()
    model = Distiller(
        teacher,
        student,
        [
            LogitsDistillation(
                loss=keras.losses.MeanSquaredError(reduction="sum")
            ),
            FeatureDistillation(
                loss=keras.losses.MeanAbsoluteError(reduction="sum"),
            ),
        ],
        distillation_loss_weights=[0.1, 0.1],
    )
    return model, student


def regularized_case():
    _, student = tiny_models.pair()
    model = JacobianRegularizedModel(student, weight=0.1, target="all")
    return model, student


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
    cases = {
        "kl+jacobian_top1": distiller_case("teacher_top1"),
        "kl+jacobian_all": distiller_case("all"),
        "kl+jacobian_label": distiller_case("label"),
        "regularized_all": regularized_case,
        "summed_keras_losses": summed_keras_losses_case,
        "batch_norm_student": batch_norm_case(sync=False),
    }
    one = strategies.get_strategy("one_device", devices=DEVICES[0])
    mirrored = strategies.get_strategy("mirrored", devices=DEVICES)
    result = {}
    w_initial = {
        name: cases[name]()[1].get_weights() for name in names or cases
    }
    for name in names or cases:
        w1, loss1 = train(cases[name], one)
        w2, loss2 = train(cases[name], mirrored)
        moved = max(
            float(np.max(np.abs(a - b))) for a, b in zip(w1, w_initial[name])
        )
        result[name] = {
            "max_weight_diff": max(
                float(np.max(np.abs(a - b))) for a, b in zip(w1, w2)
            ),
            "moved": moved,
            "loss_one": float(loss1),
            "loss_mirrored": float(loss2),
        }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
