"""Old import paths of modules that moved in 0.2.0, kept for one release.

`import keras_jacobian.data` (and the other paths in `MOVED`) still works:
it returns a module that forwards every attribute to the module's new home
and warns once with a `DeprecationWarning` naming the new path. The old
paths will be removed in 0.3.0.
"""

import importlib
import importlib.abc
import importlib.util
import os
import sys
import types
import warnings

MOVED = {
    "keras_jacobian.attention": "keras_jacobian.attention_maps",
    "keras_jacobian.features": "keras_jacobian.endpoints",
    "keras_jacobian.training": "keras_jacobian.steps",
    "keras_jacobian.seed_state": "keras_jacobian.saving",
    "keras_jacobian.distribute_utils": "keras_jacobian.steps",
    "keras_jacobian.strategies": "keras_jacobian.distribute.strategies",
    "keras_jacobian.multi_worker": "keras_jacobian.distribute.multi_worker",
    "keras_jacobian.determinism": "keras_jacobian.distribute.determinism",
    "keras_jacobian.callbacks.chief": "keras_jacobian.distribute.strategies",
    "keras_jacobian.data": "keras_jacobian.experiments.data",
    "keras_jacobian.models": "keras_jacobian.experiments.models",
    "keras_jacobian.plotting": "keras_jacobian.experiments.plotting",
}


PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
IMPORTLIB_INIT = os.path.join("importlib", "__init__.py")


def warn_moved(old, new):
    """Warns at the first frame outside keras_jacobian and importlib.

    Python shows a `DeprecationWarning` only when it is attributed to the
    user's code (`__main__`), so `stacklevel` must reach the line that
    imports the old path, through `import` statements,
    `importlib.import_module` or the package's `__getattr__`. Frames of
    `importlib._bootstrap` are skipped by `warnings` itself and are not
    counted.
    """
    level, frame = 1, sys._getframe(0)
    while frame.f_back is not None:
        frame = frame.f_back
        name = frame.f_code.co_filename
        if "importlib" in name and "_bootstrap" in name:
            continue
        level += 1
        if not (name.startswith(PACKAGE_DIR) or name.endswith(IMPORTLIB_INIT)):
            break
    warnings.warn(
        f"`{old}` moved to `{new}` in keras_jacobian 0.2.0; the old path "
        f"will be removed in 0.3.0. Import `{new}` instead.",
        DeprecationWarning,
        stacklevel=level,
    )


class _Forwarder(types.ModuleType):
    """A module object that reads every attribute from another module."""

    def __init__(self, name, target):
        super().__init__(name, target.__doc__)
        self.__dict__["_target"] = target

    def __getattr__(self, attribute):
        return getattr(self.__dict__["_target"], attribute)

    def __dir__(self):
        return dir(self.__dict__["_target"])


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        new = MOVED[spec.name]
        warn_moved(spec.name, new)
        return _Forwarder(spec.name, importlib.import_module(new))

    def exec_module(self, module):
        pass


def install():
    """Makes the old module paths importable (idempotent)."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
