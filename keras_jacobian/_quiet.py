"""Imports TensorFlow without its start-up lines on the standard error.

TensorFlow 2.21 writes, from C++ and before `absl::InitializeLog()`, where
`TF_CPP_MIN_LOG_LEVEL` does not apply yet, lines about CUDA probing on a
CPU machine, oneDNN and CPU features. `import keras_jacobian` imports
TensorFlow first, here, with the standard error (file descriptor 2) muted
meanwhile, and sets `TF_CPP_MIN_LOG_LEVEL=2` (warnings and information
off, errors on) unless the user set it. A user who sets
`TF_CPP_MIN_LOG_LEVEL=0`, or imports TensorFlow before keras_jacobian, sees
every line. Import errors still propagate as Python exceptions.
"""

import os
import sys


def import_tensorflow_quietly():
    """Imports TensorFlow, muting the standard error unless asked not to."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0":
        import tensorflow  # noqa: F401

        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # No standard error to mute.
        import tensorflow  # noqa: F401

        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


import_tensorflow_quietly()
