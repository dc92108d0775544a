"""Pins every private Keras and TensorFlow API `keras_jacobian._compat` uses.

Each test checks that the private name exists and behaves as the library
assumes, so that a Keras or TensorFlow upgrade that changes one fails here
first. The last tests check that no other module uses a private Keras or
TensorFlow name.
"""

import ast
import inspect
import json
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.eager import forwardprop

import keras_jacobian
from keras_jacobian import _compat
from tests import tiny

PACKAGE = pathlib.Path(keras_jacobian.__file__).parent


def test_forward_mode_trace_limit_is_raised_and_restored():
    # Without the limit the wrapper would silently do nothing.
    assert isinstance(forwardprop._TRACE_COUNT_LIMIT, int)
    before = forwardprop._TRACE_COUNT_LIMIT
    with _compat.exact_forward_shapes():
        with _compat.exact_forward_shapes():
            assert forwardprop._TRACE_COUNT_LIMIT == float("inf")
        assert forwardprop._TRACE_COUNT_LIMIT == float("inf")
    assert forwardprop._TRACE_COUNT_LIMIT == before


def test_global_seed_state_is_what_unseeded_draws_advance():
    state = _compat.global_seed_state()
    assert isinstance(state, keras.Variable)
    before = np.array(state.numpy())
    keras.random.normal((2,))
    assert not np.array_equal(state.numpy(), before)
    # The same variable on every call.
    assert _compat.global_seed_state() is state


class _Block(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(2, name="inner", dtype="bfloat16")

    def call(self, x):
        return self.inner(x)


def test_flatten_layers_reaches_sublayers_of_custom_layers():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, _Block(name="block")(inputs))
    names = [layer.name for layer in _compat.flatten_layers(model)]
    assert names[0] == model.name
    assert "block" in names and "inner" in names
    # What the public listing misses, and the reason for the private one.
    assert "inner" not in [layer.name for layer in model.layers]


def test_compiled_loss_is_the_compiled_callable():
    model = tiny.mlp(input_dim=3, classes=2, dtype="float32")
    assert _compat.compiled_loss(model) is None
    model.compile(optimizer="sgd", loss="mse")
    y = np.array([[1.0, 0.0], [0.0, 2.0]], "float32")
    y_pred = np.array([[0.5, 0.5], [1.0, 1.0]], "float32")
    got = float(_compat.compiled_loss(model)(y, y_pred, None))
    np.testing.assert_allclose(got, np.mean((y - y_pred) ** 2), rtol=1e-6)


def test_loss_tracker_is_the_metric_logged_as_loss():
    model = tiny.mlp(input_dim=3, classes=2, dtype="float32")
    model.compile(optimizer="sgd", loss="mse")
    tracker = _compat.loss_tracker(model)
    assert isinstance(tracker, keras.metrics.Mean)
    assert tracker.name == "loss"
    assert model.metrics[0] is tracker


def test_symbolic_build_creates_the_compiled_metrics_variables():
    model = tiny.mlp(input_dim=3, classes=2, dtype="float32")
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    assert _compat.needs_symbolic_build(model)
    batch = (np.zeros((2, 3), "float32"), np.zeros((2, 2), "float32"))
    before = len(model.metrics_variables)
    _compat.symbolic_build(model, batch)
    assert not _compat.needs_symbolic_build(model)
    paths = [v.path for v in model.metrics_variables]
    assert len(paths) > before
    assert "mean_absolute_error/total" in paths


def test_serialized_dataset_graph_includes_mapped_functions():
    dataset = tf.data.Dataset.range(3).map(
        lambda x: tf.cast(x, "float32") + tf.random.uniform(())
    )
    graph = tf.compat.v1.GraphDef.FromString(
        _compat.serialized_dataset_graph(dataset)
    )
    ops = {node.op for node in graph.node}
    assert {"RangeDataset", "MapDataset"} <= ops
    inner = {n.op for f in graph.library.function for n in f.node_def}
    assert "RandomUniform" in inner


def test_call_inputs_lists_every_call_of_a_shared_layer():
    inputs = keras.Input((3,))
    shared = keras.layers.Dense(3, name="shared")
    hidden = keras.layers.Dense(3)(inputs)
    outputs = keras.layers.Add()([shared(hidden), shared(inputs)])
    keras.Model(inputs, outputs)
    calls = _compat.call_inputs(shared)
    assert len(calls) == 2
    assert [t is inputs for t in calls[1]] == [True]
    assert [t is hidden for t in calls[0]] == [True]


def test_producing_operation_walks_back_from_a_symbolic_output():
    inputs = keras.Input((3,))
    layer = keras.layers.Dense(2, activation="softmax", name="probs")
    operation, index = _compat.producing_operation(layer(inputs))
    assert operation is layer and index == 0
    assert _compat.producing_operation(tf.zeros((2,))) is None


class _Recording(_compat.BackupAndRestoreHooks):
    def __init__(self, backup_dir):
        super().__init__(backup_dir, save_freq="epoch")
        self.saved = []

    def save_backup(self):
        self.saved.append(dict(self.position))
        super().save_backup()


def test_backup_hooks_see_every_save_keras_makes(tmp_path):
    backup = _Recording(str(tmp_path / "backup"))
    model = tiny.mlp(input_dim=3, classes=2, dtype="float32")
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((4, 3), "float32")
    y = np.zeros((4, 2), "float32")
    model.fit(x, y, epochs=2, batch_size=2, verbose=0, callbacks=[backup])
    # Keras calls `_save_model` at each epoch's end (recording the epoch
    # to resume from); the hook sees it.
    assert [s["epoch"] for s in backup.saved] == [1, 2]
    assert backup.weights_path.endswith("latest.weights.h5")
    assert backup.metadata_path.endswith("training_metadata.json")
    assert backup.weights_path.startswith(str(tmp_path / "backup"))


def test_backup_position_is_what_keras_writes(tmp_path):
    backup = _compat.BackupAndRestoreHooks(
        str(tmp_path / "backup"), save_freq="epoch", delete_checkpoint=False
    )
    model = tiny.mlp(input_dim=3, classes=2, dtype="float32")
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((4, 3), "float32")
    model.fit(x, x[:, :2], epochs=1, verbose=0, callbacks=[backup])
    with open(backup.metadata_path) as f:
        written = json.load(f)
    assert written == backup.position


# A private name is a Keras or TensorFlow one when the package does not
# define it, or when a package class defines it over one of a Keras base
# class (an override of a private method or attribute).
def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name != "_compat.py":
            yield path, ast.parse(path.read_text(encoding="utf-8"))


def _is_private(name):
    return name.startswith("_") and not name.startswith("__")


def _defined_names():
    names = set()
    for _, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(
                node.ctx, ast.Store
            ):
                names.add(node.attr)
            elif _sets_attribute(node):
                names.add(node.args[1].value)
    return names


def _sets_attribute(node):
    """`setattr(x, "_name", v)` or `object.__setattr__(x, "_name", v)`."""
    if not isinstance(node, ast.Call) or len(node.args) != 3:
        return False
    func = node.func
    named = (isinstance(func, ast.Name) and func.id == "setattr") or (
        isinstance(func, ast.Attribute) and func.attr == "__setattr__"
    )
    return (
        named
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    )


def _used_names(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            yield node.lineno, node.attr
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _is_private(node.args[1].value)
        ):
            yield node.lineno, node.args[1].value


def test_no_private_keras_or_tensorflow_module_outside_compat():
    found = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                if module.startswith(("keras.src", "tensorflow.python")):
                    found.append(f"{path.name}:{node.lineno} {module}")
    assert not found, f"Move these into keras_jacobian/_compat.py: {found}"


def test_no_private_keras_or_tensorflow_attribute_outside_compat():
    defined = _defined_names()
    found = [
        f"{path.relative_to(PACKAGE)}:{line} {name}"
        for path, tree in _modules()
        for line, name in _used_names(tree)
        if name not in defined
    ]
    assert not found, (
        "Private names of other libraries used outside "
        f"keras_jacobian/_compat.py: {found}. Wrap them there."
    )


def _keras_private_names(base, tmp_path):
    names = {n for n in dir(base) if _is_private(n)}
    instance = None
    if issubclass(base, keras.callbacks.BackupAndRestore):
        instance = base(str(tmp_path / "b"))
    elif issubclass(base, keras.Model):
        instance = keras.Model()
    if instance is not None:
        names |= {n for n in vars(instance) if _is_private(n)}
    return names


def test_no_package_class_overrides_a_private_keras_name(tmp_path):
    import importlib

    found = []
    for path, tree in _modules():
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts).removesuffix(".__init__")
        if ".experiments" in name:
            continue
        module = importlib.import_module(name)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            cls = getattr(module, node.name, None)
            if not inspect.isclass(cls):
                continue
            own = {
                n.name for n in ast.walk(node) if isinstance(n, ast.FunctionDef)
            } | {
                n.attr
                for n in ast.walk(node)
                if isinstance(n, ast.Attribute)
                and isinstance(n.ctx, ast.Store)
                and isinstance(n.value, ast.Name)
                and n.value.id == "self"
            }
            own = {n for n in own if _is_private(n)}
            for base in cls.__mro__[1:]:
                if base.__module__.startswith(("keras", "tensorflow")) and (
                    not base.__module__.startswith("keras_jacobian")
                ):
                    clash = own & _keras_private_names(base, tmp_path)
                    found += [f"{path.name} {node.name}.{n}" for n in clash]
    assert not found, (
        f"Package classes define private Keras names: {sorted(set(found))}. "
        "Override them in keras_jacobian/_compat.py or rename."
    )


WRAPPERS = [
    name
    for name, value in vars(_compat).items()
    if not name.startswith("_")
    and (inspect.isfunction(value) or inspect.isclass(value))
    and value.__module__ == _compat.__name__
]


@pytest.mark.parametrize("name", WRAPPERS)
def test_every_wrapper_says_what_it_uses_and_where_it_was_checked(name):
    doc = inspect.getdoc(getattr(_compat, name))
    assert "Uses " in doc and "Checked on " in doc, doc


def test_loss_function_kwargs_are_what_the_loss_computes_with():
    y = np.array([[0.0], [2.0]], "float32")
    y_pred = np.array([[1.0], [0.0]], "float32")
    loss = keras.losses.Huber(delta=0.3)
    assert _compat.loss_function_kwargs(loss) == {"delta": 0.3}
    # Huber with delta 0.3, by hand: errors 1 and 2, both beyond delta.
    expected = np.mean([0.3 * (e - 0.15) for e in (1.0, 2.0)])
    np.testing.assert_allclose(float(loss(y, y_pred)), expected, rtol=1e-6)
    assert _compat.loss_function_kwargs(lambda a, b: a) == {}
