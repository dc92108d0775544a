"""Bitwise-reproducible training runs."""

import keras
import tensorflow as tf


def enable_determinism(seed):
    """Makes training runs repeat bit for bit on the same machine.

    Seeds Python's, NumPy's and TensorFlow's generators (and Keras' global
    seed, used by initializers, dropout and unseeded `SeedGenerator`s)
    with `keras.utils.set_random_seed(seed)`, and makes TensorFlow pick
    deterministic kernels with
    `tf.config.experimental.enable_op_determinism()`.

    Two runs of the same program with the same seed, data order and
    hardware then give identical weights. Call it once at the start of
    the program, before building models. What it does not cover:

    - some ops have no deterministic kernel (mostly on GPU, e.g. some
      scatter and segment reductions); TensorFlow then raises an error
      instead of running non-deterministically;
    - deterministic kernels can be slower (on GPU, mainly);
    - Keras compiles no model with XLA while op determinism is on:
      `compile(jit_compile=True)` warns and runs without XLA;
    - a `tf.data` pipeline must be deterministic too: seeded shuffles, no
      `deterministic=False`, and the same number of workers;
    - under multi-worker training, collective reductions add results in
      an order that is fixed for a given cluster size, not across sizes;
    - different hardware or library versions may round differently.

    Args:
        seed: an integer seed.

    Example:

    ```python
    keras_jacobian.enable_determinism(1234)
    distiller = keras_jacobian.Distiller(teacher, student, terms, seed=1)
    ```
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(
            f"`seed` must be an integer >= 0. Received: seed={seed!r}"
        )
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
