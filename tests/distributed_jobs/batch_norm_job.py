"""A BatchNorm student's Jacobian terms on 2 replicas (logical CPUs).

Each replica normalises with its own half of the batch, and the replicas
trace the step in threads: each must hold its own statistics. Prints
`RESULT {estimator: loss}` for one step of `fit` on the batch of
`tests/test_batch_statistics.py` (the test compares with that file's
reference on each half).
Run: PYTHONPATH=.:tests/distributed_jobs python \
    tests/distributed_jobs/batch_norm_job.py
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keras_jacobian.distribute import strategies  # noqa: E402

DEVICES = strategies.split_cpu(2)

import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import test_batch_statistics as cases  # noqa: E402

BATCH = 8


def main():
    strategy = tf.distribute.MirroredStrategy(DEVICES)
    x = cases.batch(BATCH)
    result = {}
    for estimator in ("vjp", "jvp", "finite_difference"):
        with strategy.scope():
            model = cases.distiller(cases.teacher(), cases.student(), estimator)
        history = model.fit(
            x, batch_size=BATCH, epochs=1, shuffle=False, verbose=0
        )
        result[estimator] = history.history["jacobian_matching_loss"][0]
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
