"""Shared pytest setup: quiet TensorFlow, parsed absl flags, seeds.

The suite runs on as many pytest-xdist workers as the machine has CPUs for
this process (`-n auto`), one test file per worker at a time
(`--dist loadfile`: the conformance module shares background jobs among
its tests).
"""

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

# The suite's TensorFlow processes (workers and the jobs they start) peak
# at 2.8 GB resident on 2 cores; past a few workers the suite is bound by
# its longest file (the conformance module, about 3 minutes).
MAX_WORKERS = 4


def usable_cpus():
    """CPUs this process may run on: affinity and cgroup quota included.

    `os.cpu_count()` counts the host's CPUs, also in a container limited
    to two of them, where that many TensorFlow workers would only compete.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            count = min(count, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, count)


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per usable CPU, at most `MAX_WORKERS`.

    `PYTEST_XDIST_AUTO_NUM_WORKERS` still sets the number (pytest-xdist
    reads it when this returns None).
    """
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    return min(usable_cpus(), MAX_WORKERS)


@pytest.fixture(autouse=True)
def _seed_and_clear():
    # Without `gc.collect()` (free_memory=True costs about 0.6 s a test,
    # minutes over the suite); Python's own collector still runs.
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(1234)
    yield
