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
    keras.backend.clear_session()
    keras.utils.set_random_seed(1234)
    yield
