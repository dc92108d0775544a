"""Step time with and without XLA (`jit_compile=True`) for each term.

Command (about 4 minutes on 2 CPU cores):

    PYTHONPATH=. python benchmarks/xla_step_time.py

A small conv pair (teacher 16-32 filters, student 8-16 filters, 16x16x3
inputs, batch 32). For each term, prints the first-step time (tracing and
compiling) and the median time of the following steps, without and with
XLA, and their ratio XLA / no-XLA. Results on this machine are in
docs/performance.md (section XLA).
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_jacobian.distiller import Distiller  # noqa: E402
from keras_jacobian.regularized import JacobianRegularizedModel  # noqa: E402
from keras_jacobian.terms.jacobian import JacobianMatching  # noqa: E402
from keras_jacobian.terms.logits import LogitsDistillation  # noqa: E402
from keras_jacobian.terms.noise import NoiseDistillation  # noqa: E402

SHAPE = (16, 16, 3)
CLASSES = 10
BATCH = 32
STEPS = 12


def conv_pair():
    def net(name, filters):
        inputs = keras.Input(SHAPE)
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(
            inputs
        )
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Conv2D(2 * filters, 3, activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(CLASSES)(x), name=name)

    return net("teacher", 16), net("student", 8)


CASES = {
    "logits": lambda: [LogitsDistillation(temperature=4.0, loss="kd")],
    "jacobian_top1": lambda: [
        LogitsDistillation(temperature=4.0, loss="kd"),
        JacobianMatching(),
    ],
    "jacobian_label": lambda: [
        LogitsDistillation(temperature=4.0, loss="kd"),
        JacobianMatching("label"),
    ],
    "jacobian_top_k3": lambda: [
        LogitsDistillation(temperature=4.0, loss="kd"),
        JacobianMatching("top_k", k=3),
    ],
    "jacobian_all": lambda: [
        LogitsDistillation(temperature=4.0, loss="kd"),
        JacobianMatching("all", estimator="exact"),
    ],
    "jacobian_random": lambda: [
        LogitsDistillation(temperature=4.0, loss="kd"),
        JacobianMatching("random"),
    ],
    "noise": lambda: [NoiseDistillation(0.1)],
    "regularized_random": None,
    "regularized_all": None,
}


def build(name):
    teacher, student = conv_pair()
    if name.startswith("regularized"):
        return JacobianRegularizedModel(
            student, weight=0.01, target=name.split("_")[1]
        )
    return Distiller(
        teacher, student, CASES[name](), supervised_loss_weight=1.0
    )


def time_steps(name, jit_compile):
    keras.utils.set_random_seed(0)
    model = build(name)
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH,) + SHAPE).astype("float32")
    y = rng.integers(0, CLASSES, size=(BATCH,))
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return times[0], float(np.median(times[1:]))


def main(names):
    print(
        f"{'case':20s} {'first':>7s} {'step':>8s} {'xla first':>9s} "
        f"{'xla step':>8s} {'ratio':>6s}"
    )
    for name in names or CASES:
        first, step = time_steps(name, False)
        xla_first, xla_step = time_steps(name, True)
        print(
            f"{name:20s} {first:6.2f}s {step * 1e3:6.1f}ms {xla_first:8.2f}s "
            f"{xla_step * 1e3:6.1f}ms {xla_step / step:6.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
