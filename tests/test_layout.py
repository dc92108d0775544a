"""The package layout: moved modules keep their old import paths for one
release (with a DeprecationWarning), and the core imports no experiment
tooling."""

import importlib
import os
import pathlib
import subprocess
import sys
import textwrap
import warnings

import pytest

import keras_jacobian
from keras_jacobian import _moved


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_old_module_paths_import_with_a_deprecation_warning(old):
    new = importlib.import_module(_moved.MOVED[old])
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    messages = [
        str(w.message)
        for w in caught
        if issubclass(w.category, DeprecationWarning)
    ]
    assert any(_moved.MOVED[old] in m for m in messages), messages
    public = [n for n in dir(new) if not n.startswith("__")]
    assert public
    for name in public:
        assert getattr(module, name) is getattr(new, name)


@pytest.mark.parametrize(
    "name, new",
    [
        ("data", "keras_jacobian.experiments.data"),
        ("models", "keras_jacobian.experiments.models"),
        ("plotting", "keras_jacobian.experiments.plotting"),
        ("multi_worker", "keras_jacobian.distribute.multi_worker"),
        ("attention", "keras_jacobian.attention_maps"),
    ],
)
def test_old_package_attributes_still_work(name, new):
    target = importlib.import_module(new)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        module = getattr(keras_jacobian, name)
    for attribute in getattr(target, "__all__", dir(target)):
        if not attribute.startswith("__"):
            assert getattr(module, attribute) is getattr(target, attribute)


PACKAGE = pathlib.Path(keras_jacobian.__file__).parent
MAX_MODULE_LINES = 500
# Over the limit until its split lands; listed here so that the exemption
# is dropped as soon as the module fits (see the test below).
SPLIT_PENDING = {"distiller.py"}


def test_no_module_exceeds_500_lines():
    lengths = {
        path.relative_to(PACKAGE).as_posix(): len(
            path.read_text(encoding="utf-8").splitlines()
        )
        for path in sorted(PACKAGE.rglob("*.py"))
    }
    long = {
        name: n
        for name, n in lengths.items()
        if n > MAX_MODULE_LINES and name not in SPLIT_PENDING
    }
    assert not long, (
        f"Modules over {MAX_MODULE_LINES} lines: {long}. Split them by "
        "concern (see the module map in keras_jacobian/__init__.py)."
    )
    fitting = {
        n for n in SPLIT_PENDING if lengths.get(n, 0) <= MAX_MODULE_LINES
    }
    assert not fitting, f"Remove {fitting} from SPLIT_PENDING: they fit."


def test_public_names_import_from_the_top_level():
    for name in keras_jacobian.__all__:
        assert getattr(keras_jacobian, name) is not None
    assert keras_jacobian.get_strategy is keras_jacobian.distribute.get_strategy
    assert keras_jacobian.is_chief is keras_jacobian.distribute.is_chief


def test_the_core_imports_without_experiment_tooling_or_warnings():
    code = textwrap.dedent(
        """
        import sys, warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import keras_jacobian
            import keras_jacobian.distribute
            import keras_jacobian.callbacks
        moved = [w for w in caught if "moved to" in str(w.message)]
        print("MOVED", len(moved))
        print("EXPERIMENTS", "keras_jacobian.experiments" in sys.modules)
        print("TFDS", "tensorflow_datasets" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "MOVED 0" in out.stdout
    assert "EXPERIMENTS False" in out.stdout
    assert "TFDS False" in out.stdout


def test_old_paths_warn_under_python_default_warning_filters():
    """Python shows a DeprecationWarning only when it points at `__main__`.

    A fresh process without warning filters, as users run: an `import`
    statement, `importlib.import_module` and a package attribute.
    """
    code = textwrap.dedent(
        """
        import importlib
        import keras_jacobian
        import keras_jacobian.data
        importlib.import_module("keras_jacobian.models")
        keras_jacobian.plotting
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for line, old in ((4, "data"), (5, "models"), (6, "plotting")):
        assert (
            f"<string>:{line}: DeprecationWarning: `keras_jacobian.{old}` "
            "moved to" in out.stderr
        ), out.stderr[-3000:]
