"""Shared pytest setup: quiet TensorFlow, parsed absl flags, seeds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()


@pytest.fixture(autouse=True)
def _seed_and_clear():
    # Without `gc.collect()` (free_memory=True costs about 0.6 s a test,
    # minutes over the suite); Python's own collector still runs.
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(1234)
    yield
