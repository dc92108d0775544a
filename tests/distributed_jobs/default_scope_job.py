"""The documented distributed paths, with default arguments, on 2 replicas.

Inside `strategy.scope()` of a MirroredStrategy over 2 logical CPUs (and,
for comparison, of a one-device strategy): a `Distiller` and a
`JacobianRegularizedModel` built with default arguments, compiled and
trained by `fit`; then the Distiller's teacher cached with
`cache_teacher(distiller, (x, y), batch_size=...)` and trained on the
cache. Prints `RESULT {case: {max_weight_diff, moved}}` (student weights,
one device against 2 replicas; how far training moved them); whatever
the library logs goes to stderr, which the test reads.
Run: PYTHONPATH=.:tests/distributed_jobs \
    python tests/distributed_jobs/default_scope_job.py
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keras_jacobian.distribute import strategies  # noqa: E402

DEVICES = strategies.split_cpu(2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tiny_models  # noqa: E402

import keras_jacobian as kj  # noqa: E402

BATCH = 8


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2 * BATCH,) + tiny_models.SHAPE).astype("float32")
    return x, rng.integers(0, tiny_models.CLASSES, size=2 * BATCH)


def compiled(model):
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def pair():
    return (
        tiny_models.seeded(tiny_models.conv_net("teacher", filters=6), 0),
        tiny_models.seeded(tiny_models.conv_net("student"), 1),
    )


def distiller(cached):
    teacher, student = pair()
    model = compiled(
        kj.Distiller(
            teacher,
            student,
            [
                kj.LogitsDistillation(temperature=4.0, loss="kd"),
                kj.JacobianMatching(),
            ],
            supervised_loss_weight=1.0,
        )
    )
    return model, student, cached


def regularized():
    _, student = pair()
    return compiled(kj.JacobianRegularizedModel(student)), student, False


CASES = {
    "distiller": lambda: distiller(cached=False),
    "regularized": regularized,
    "cached_teacher": lambda: distiller(cached=True),
}


def train(make, strategy):
    x, y = data()
    # `seed=None` seeds each model's draws from Keras' global seed.
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model, student, cached = make()
    if cached:
        train_data = kj.cache_teacher(model, (x, y), batch_size=BATCH)
        model.fit(train_data, epochs=2, verbose=0)
    else:
        model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    return student.get_weights()


def _largest_difference(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


def main():
    one = strategies.get_strategy("one_device", devices=DEVICES[0])
    mirrored = strategies.get_strategy("mirrored", devices=DEVICES)
    result = {}
    for name, make in CASES.items():
        initial = pair()[1].get_weights()  # seeded from NumPy
        w_one = train(make, one)
        w_mirrored = train(make, mirrored)
        result[name] = {
            "max_weight_diff": _largest_difference(w_one, w_mirrored),
            "moved": _largest_difference(w_one, initial),
        }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
