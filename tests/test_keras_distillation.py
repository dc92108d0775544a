"""Keras' own distillation tests, run against keras_jacobian.

The test files ship in the installed Keras wheel
(`keras/src/distillation/*_test.py`). They are copied into a temporary
folder with their imports of Keras' distillation classes, and only those,
rewritten: every line

    from keras.src.distillation.<distiller|distillation_loss> import <Name>

becomes

    from keras_jacobian import <Name>

No other line changes, and the copy must have no other reference to
`keras.src.distillation` left. The copies then run in a pytest
subprocess, and every one of their tests must pass.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

IMPORT = re.compile(
    r"^from keras\.src\.distillation\.(distiller|distillation_loss) "
    r"import (\w+)$",
    re.MULTILINE,
)
TEST_FILES = ("distiller_test.py", "distillation_loss_test.py")


def _keras_test_dir():
    try:
        import keras.src.distillation as package
    except ImportError:
        return None
    folder = pathlib.Path(package.__file__).parent
    if not all((folder / name).is_file() for name in TEST_FILES):
        return None
    return folder


def rewrite_imports(source):
    """The test source with Keras' distillation imports made ours."""
    rewritten, count = IMPORT.subn(r"from keras_jacobian import \2", source)
    if count == 0 or "keras.src.distillation" in rewritten:
        raise ValueError(
            "Unexpected imports of keras.src.distillation in Keras' tests."
        )
    return rewritten


def test_rewrite_changes_only_the_imports():
    source = (
        "import keras\n"
        "from keras.src.distillation.distiller import Distiller\n"
        "from keras.src.distillation.distillation_loss import "
        "LogitsDistillation\n"
        "x = 1\n"
    )
    assert rewrite_imports(source) == (
        "import keras\n"
        "from keras_jacobian import Distiller\n"
        "from keras_jacobian import LogitsDistillation\n"
        "x = 1\n"
    )
    with pytest.raises(ValueError, match="Unexpected imports"):
        rewrite_imports("import keras.src.distillation.distiller as d\n")


def test_keras_distillation_tests_pass(tmp_path):
    folder = _keras_test_dir()
    if folder is None:
        pytest.skip(
            "The installed Keras ships no keras/src/distillation/*_test.py."
        )
    for name in TEST_FILES:
        source = (folder / name).read_text()
        (tmp_path / name).write_text(rewrite_imports(source))
    import keras_jacobian

    # The keras_jacobian under test, wherever pytest imported it from.
    root = str(pathlib.Path(keras_jacobian.__file__).parents[1])
    path = os.environ.get("PYTHONPATH")
    env = dict(
        os.environ,
        PYTHONPATH=root if not path else os.pathsep.join([root, path]),
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="2",
        TF_NUM_INTRAOP_THREADS="1",
        TF_NUM_INTEROP_THREADS="1",
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "--rootdir",
            str(tmp_path),
            *TEST_FILES,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, summary
    assert re.search(r"\b16 passed\b", result.stdout), summary
