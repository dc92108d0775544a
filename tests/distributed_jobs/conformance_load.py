"""Loads the conformance cases' `.keras` files in a fresh process.

Reads `<dir>/manifest.json` ({case: path}) and `<dir>/batch.npz`, and
prints one line `RESULT {case: evaluate logs, or the error}`. Only
`keras_jacobian` is imported (it registers the classes), as a user would.
Run: python tests/distributed_jobs/conformance_load.py <dir>
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_jacobian  # noqa: E402, F401


def main(directory):
    with open(os.path.join(directory, "manifest.json")) as f:
        manifest = json.load(f)
    batch = np.load(os.path.join(directory, "batch.npz"))
    x, y = batch["x"], batch["y"]
    result = {}
    for name, path in manifest.items():
        try:
            model = keras.models.load_model(path)
            logs = model.evaluate(
                x, y, batch_size=len(x), verbose=0, return_dict=True
            )
            result[name] = {key: float(value) for key, value in logs.items()}
        except Exception as error:
            result[name] = f"{type(error).__name__}: {error}"
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
