"""`import keras_jacobian` prints nothing on a CPU machine."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CODE = (
    "import os, keras_jacobian; "
    "print(os.environ['TF_CPP_MIN_LOG_LEVEL'], keras_jacobian.__file__)"
)


def _import(**env_vars):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_vars)
    return subprocess.run(
        [sys.executable, "-c", CODE],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.slow
def test_import_is_quiet():
    result = _import()
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    level, path = result.stdout.split()
    assert level == "2"
    assert pathlib.Path(path).is_relative_to(ROOT / "keras_jacobian")


@pytest.mark.slow
def test_import_keeps_the_users_log_level():
    result = _import(TF_CPP_MIN_LOG_LEVEL="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "0"
