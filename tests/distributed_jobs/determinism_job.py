"""Trains a Distiller from Keras' default initialisers; saves its weights.

Usage: determinism_job.py SEED OUT.npz. The run draws everything at
random (initial weights, shuffling, random Jacobian projections, noise),
all from `enable_determinism(SEED)`. The file also holds `jit_compile`,
what a model compiled with `jit_compile=True` gets under op determinism.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keras_jacobian.distribute.determinism import enable_determinism  # noqa: E402

enable_determinism(int(sys.argv[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tiny_models  # noqa: E402

from keras_jacobian.distiller import Distiller  # noqa: E402
from keras_jacobian.terms.jacobian import JacobianMatching  # noqa: E402
from keras_jacobian.terms.logits import LogitsDistillation  # noqa: E402
from keras_jacobian.terms.noise import NoiseDistillation  # noqa: E402

teacher = tiny_models.conv_net("teacher", filters=6)
student = tiny_models.conv_net("student")
distiller = Distiller(
    teacher,
    student,
    [
        LogitsDistillation(temperature=4.0, loss="kd"),
        JacobianMatching("random", num_projections=2),
        NoiseDistillation(0.1),
    ],
    supervised_loss_weight=1.0,
)
distiller.compile(
    optimizer="adam",
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
)
x = np.random.normal(size=(48,) + tiny_models.SHAPE).astype("float32")
y = np.random.randint(0, tiny_models.CLASSES, size=(48,))
dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(48).batch(8)
distiller.fit(dataset, epochs=2, verbose=0)
# Keras compiles nothing with XLA under op determinism (docs/distributed.md).
probe = tiny_models.conv_net("probe")
probe.compile(optimizer="sgd", loss="mse", jit_compile=True)
np.savez(sys.argv[2], *student.get_weights(), jit_compile=probe.jit_compile)
