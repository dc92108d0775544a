"""Step time of each distillation term relative to logits-only distillation.

One small convolutional pair (16x16x3 inputs, batch 64, three 3x3 conv
layers each; teacher 32-32-64 filters, student 16-16-32), compiled
`train_step` (graph mode, no XLA), CPU. Each configuration is logits
distillation plus the named term; the time per step is the median over
`--steps` steps after two warm-up steps (tracing excluded), the
configurations timed in turn, step by step.

Command:

    PYTHONPATH=. python benchmarks/attention_cost.py --steps 20

Takes about 2 minutes on 2 shared CPU cores. The printed ratios are the
result; see docs/attention.md for the numbers measured.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_jacobian as kj  # noqa: E402
from keras_jacobian.terms.attention import AttentionJacobianMatching  # noqa: E402
from keras_jacobian.terms.attention import AttentionTransfer  # noqa: E402
from keras_jacobian.terms.features import FeatureDistillation  # noqa: E402


def conv_net(prefix, widths, classes=10):
    inputs = keras.Input((16, 16, 3))
    h = inputs
    for i, width in enumerate(widths):
        h = keras.layers.Conv2D(
            width,
            3,
            strides=1 if i == 0 else 2,
            padding="same",
            activation="relu",
            name=f"{prefix}c{i + 1}",
        )(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(classes, name=f"{prefix}out")(h)
    return keras.Model(inputs, outputs, name=f"{prefix}net")


PAIRS = [("tc1", "sc1"), ("tc2", "sc2")]
CONFIGS = {
    "logits only": [],
    "+ JacobianMatching(teacher_top1)": [kj.JacobianMatching],
    "+ NoiseDistillation(0.1)": [lambda: kj.NoiseDistillation(0.1)],
    "+ FeatureDistillation(adapter)": [
        lambda: FeatureDistillation(
            teacher_layer_name="tc3", student_layer_name="sc3", adapter="conv"
        )
    ],
    "+ AttentionTransfer(2 pairs)": [lambda: AttentionTransfer(PAIRS)],
    "+ AttentionJacobianMatching(1 pair)": [
        lambda: AttentionJacobianMatching(PAIRS[:1])
    ],
    "+ AttentionJacobianMatching(2 pairs)": [
        lambda: AttentionJacobianMatching(PAIRS)
    ],
}


def build_step(extra, x, y):
    keras.utils.set_random_seed(0)
    teacher = conv_net("t", (32, 32, 64))
    student = conv_net("s", (16, 16, 32))
    terms = [kj.LogitsDistillation(temperature=4.0, loss="kd")] + [
        make() for make in extra
    ]
    distiller = kj.Distiller(
        teacher, student, terms, supervised_loss_weight=1.0
    )
    distiller.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    step = tf.function(distiller.train_step)
    data = (tf.constant(x), tf.constant(y))
    for _ in range(2):
        step(data)

    def run():
        start = time.perf_counter()
        float(step(data)["loss"])
        return time.perf_counter() - start

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 10, size=args.batch)
    runs = {name: build_step(extra, x, y) for name, extra in CONFIGS.items()}
    # Round-robin over configurations, so that load from other processes
    # on the machine affects all of them alike.
    times = {name: [] for name in runs}
    for _ in range(args.steps):
        for name, run in runs.items():
            times[name].append(run())
    base = float(np.median(times["logits only"]))
    print(f"{'configuration':40s} {'ms/step':>8s} {'ratio':>6s}")
    for name, values in times.items():
        seconds = float(np.median(values))
        print(f"{name:40s} {1000 * seconds:8.1f} {seconds / base:6.2f}")


if __name__ == "__main__":
    main()
