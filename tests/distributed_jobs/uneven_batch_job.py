"""A last batch that leaves a replica empty, and bad labels, on 2 replicas.

5 examples in batches of 4: the last global batch holds 1 example, so
one of the 2 replicas (logical CPUs) gets none. `evaluate` and `fit`
(2 epochs, so the uneven step's update shows in the second epoch) run on
one device and on 2 replicas; the logs and weights are printed for the
test to compare. Then out-of-range labels, read by `target="label"` and
by the compiled loss, must raise in `fit` and `evaluate` on 2 replicas.

The networks are MLPs: in TensorFlow 2.21 with oneDNN (the default on
CPU), a Conv2D on an empty batch returns its input unchanged, which
breaks the backward pass of any conv net, plain Keras included, on an
empty replica (see docs/distributed.md).

Prints one line `RESULT <json>`.
Run: PYTHONPATH=.:tests/distributed_jobs python \
    tests/distributed_jobs/uneven_batch_job.py
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keras_jacobian.distribute import strategies  # noqa: E402

DEVICES = strategies.split_cpu(2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_jacobian.distiller import Distiller  # noqa: E402
from keras_jacobian.regularized import JacobianRegularizedModel  # noqa: E402
from keras_jacobian.terms.jacobian import JacobianMatching  # noqa: E402
from keras_jacobian.terms.logits import LogitsDistillation  # noqa: E402

FEATURES = 6
CLASSES = 3
EXAMPLES = 5
BATCH = 4


def mlp(name, hidden, seed):
    inputs = keras.Input((FEATURES,))
    h = keras.layers.Dense(hidden, activation="tanh")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES)(h), name=name)
    rng = np.random.default_rng(seed)
    model.set_weights(
        [
            rng.normal(scale=0.5, size=w.shape).astype(w.dtype)
            for w in model.get_weights()
        ]
    )
    return model


def distiller():
    student = mlp("student", 5, 2)
    model = Distiller(
        mlp("teacher", 7, 1),
        student,
        [
            LogitsDistillation(temperature=2.0, loss="kd"),
            JacobianMatching(target="label", normalize=False, name="label"),
            # Relative to the global batch's teacher norm: an all-reduce
            # that runs on every replica, the empty one included. (Random
            # projections differ from one device's on uneven batches.)
            JacobianMatching(
                target="all",
                estimator="exact",
                normalize="teacher",
                name="relative_exact",
            ),
        ],
        distillation_loss_weights=[1.0, 0.5, 0.1],
        supervised_loss_weight=1.0,
    )
    return model, student


def regularized():
    student = mlp("student", 5, 2)
    return JacobianRegularizedModel(student, weight=0.1, target="all"), student


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(EXAMPLES, FEATURES)).astype("float32")
    y = np.array([0, 2, 1, 2, 0], "int32")
    return x, y


def run(make, strategy):
    x, y = data()
    with strategy.scope():
        model, student = make()
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    evaluated = model.evaluate(
        x, y, batch_size=BATCH, verbose=0, return_dict=True
    )
    history = model.fit(
        x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0
    )
    return evaluated, history.history, student.get_weights()


def bad_labels(strategy):
    x, _ = data()
    y = np.array([0, 2, 1, 7, 0], "int32")
    with strategy.scope():
        model, _ = distiller()
        model.compile(optimizer="sgd")
    errors = {}
    for method in ("fit", "evaluate"):
        try:
            getattr(model, method)(x, y, batch_size=BATCH, verbose=0)
            errors[method] = None
        except Exception as error:  # noqa: BLE001 (reported to the test)
            errors[method] = f"{type(error).__name__}: {error}"
    return errors


def loss_labels(strategy):
    """Out-of-range labels read by the compiled loss (on the second
    replica: the first batch splits as [0, 2] and [1, 7])."""
    x, _ = data()
    y = np.array([0, 2, 1, 7, 0], "int32")
    errors = {}
    for name, make in (("distiller", distiller), ("regularized", regularized)):
        with strategy.scope():
            model, student = make()
            model.compile(
                optimizer="sgd",
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True
                ),
            )
        before = student.get_weights()
        for method in ("fit", "evaluate"):
            try:
                # Unshuffled: the first step sees the bad label.
                options = {"shuffle": False} if method == "fit" else {}
                getattr(model, method)(
                    x, y, batch_size=BATCH, verbose=0, **options
                )
                message = None
            except Exception as error:  # noqa: BLE001 (reported to the test)
                message = f"{type(error).__name__}: {error}"
            errors[f"{name}_{method}"] = message
        errors[f"{name}_unchanged"] = all(
            np.array_equal(a, b) for a, b in zip(before, student.get_weights())
        )
    return errors


def main():
    one = strategies.get_strategy("one_device", devices=DEVICES[0])
    mirrored = strategies.get_strategy("mirrored", devices=DEVICES)
    result = {}
    for name, make in (("distiller", distiller), ("regularized", regularized)):
        ev1, fit1, w1 = run(make, one)
        ev2, fit2, w2 = run(make, mirrored)
        result[name] = {
            "evaluate_one": ev1,
            "evaluate_mirrored": ev2,
            "fit_one": fit1,
            "fit_mirrored": fit2,
            "max_weight_diff": max(
                float(np.max(np.abs(a - b))) for a, b in zip(w1, w2)
            ),
        }
    result["bad_labels"] = bad_labels(mirrored)
    result["loss_labels"] = loss_labels(mirrored)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
