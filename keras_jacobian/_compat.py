"""Every private Keras and TensorFlow API the library uses, in one place.

Each wrapper below says what it reads or changes, why no public API does
it, and the versions it was checked on. `tests/test_compat.py` pins each
one (the private name exists and behaves as assumed), so that an upgrade
that renames or changes one fails there, loudly, before anything else;
`tests/test_layout.py` checks that no other module of the package uses a
private Keras or TensorFlow name.

Checked on Keras 3.15.1 and TensorFlow 2.21.0 (CPU).
"""

import contextlib
import threading

import keras
from keras.src.random import seed_generator
from tensorflow.python.eager import forwardprop

# Forward-mode rules traced for exact shapes.
#
# TensorFlow traces the forward-mode (JVP) rule of each op once per input
# signature. After 32 such traces of one op type in a process
# (`tensorflow.python.eager.forwardprop._TRACE_COUNT_LIMIT`, never reset,
# not by `keras.backend.clear_session` either) it switches to one relaxed
# trace of unknown shape, and soon of unknown rank: the same `BiasAdd`
# rule then serves a convolution's rank-4 output and a dense layer's
# rank-2 one.
#
# Under XLA this breaks a step that differentiates such a trace inside a
# `tf.cond` (the `Distiller` skips a term of weight 0 with one): the
# gradient of the cond hands the other branch placeholders of the traced
# static shapes, and XLA refuses branches of unknown, hence different,
# rank ("left_branch_shape.dimensions_size() != right_branch_shape
# .dimensions_size() (2 vs 1)") or sizes ("Dynamic Spatial Convolution is
# not supported"). Whether a `jit_compile=True` step compiled thus
# depended on how many forward-mode passes the process had already run:
# 11 eager ones through a small network at 11 batch sizes were enough.
_LOCK = threading.Lock()
_DEPTH = 0
_SAVED_LIMIT = None


@contextlib.contextmanager
def exact_forward_shapes():
    """Within the block, forward-mode rules are traced for exact shapes.

    Uses `tensorflow.python.eager.forwardprop._TRACE_COUNT_LIMIT`, the
    number of traces of one op's forward-mode rule before TensorFlow
    relaxes its shapes; no public API sets it. Raised to infinity while
    at least one block is open (re-entrant, safe across threads) and
    restored when the last closes. The library's forward passes run
    inside steps of fixed shapes, so the exact traces they add are few
    and cached. With a TensorFlow that has no such limit, it does
    nothing.

    Checked on TensorFlow 2.21.0.
    """
    global _DEPTH, _SAVED_LIMIT
    if not hasattr(forwardprop, "_TRACE_COUNT_LIMIT"):
        yield
        return
    with _LOCK:
        if _DEPTH == 0:
            _SAVED_LIMIT = forwardprop._TRACE_COUNT_LIMIT
            forwardprop._TRACE_COUNT_LIMIT = float("inf")
        _DEPTH += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH -= 1
            if _DEPTH == 0:
                forwardprop._TRACE_COUNT_LIMIT = _SAVED_LIMIT


def global_seed_state():
    """The state variable of the generator behind `seed=None` draws.

    Uses `keras.src.random.seed_generator.global_seed_generator()`: the
    `keras.random.*` functions called without a seed draw from it, and a
    network that does (Monte Carlo dropout written with `seed=None`)
    advances its state. No public API returns it; the library reads it
    to replay a pass's draws and to leave it as it was after a probe.

    Checked on Keras 3.15.1.
    """
    return seed_generator.global_seed_generator().state


def loss_function_kwargs(loss):
    """The keyword arguments a Keras loss object passes to its function.

    Uses `LossFunctionWrapper._fn_kwargs`: `keras.losses.Huber(delta=0.3)`
    keeps `delta` there, and some classes' `get_config` leave such
    arguments out, so a loss rebuilt from its configuration would compute
    something else. The library reads them to save the loss whole and to
    check that a reloaded loss is the same. `{}` for other losses.

    Checked on Keras 3.15.1.
    """
    return dict(getattr(loss, "_fn_kwargs", None) or {})


def flatten_layers(model):
    """The model and every layer inside it, recursively.

    Uses `Layer._flatten_layers(include_self=True, recursive=True)`, the
    only listing that includes the sublayers of custom layers (public
    `model.layers` lists the direct layers of a Functional or Sequential
    model only). Objects without it are walked through `.layers`.

    Checked on Keras 3.15.1.
    """
    flatten = getattr(model, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=True, recursive=True))
    found = [model]
    for layer in getattr(model, "layers", []):
        found.extend(flatten_layers(layer))
    return found


def compiled_loss(model):
    """The loss `model.compile(loss=...)` set, or None.

    Uses `Trainer._compile_loss` (a callable `(y, y_pred, sample_weight)`
    that also tracks the per-output losses). The public
    `Model.compute_loss` adds the regularisation losses to it, but the
    library weights the compiled loss alone (`student_loss_weight` or
    `supervised_loss_weight`) and skips it at weight 0.

    Checked on Keras 3.15.1.
    """
    return getattr(model, "_compile_loss", None)


def loss_tracker(model):
    """The `Mean` metric Keras logs as `loss`.

    Uses `Trainer._loss_tracker`. A custom `train_step` that logs its own
    total must update this metric: a second metric named `loss` would be
    logged beside it. No public API returns it (it is one of
    `model.metrics`, found only by name).

    Checked on Keras 3.15.1.
    """
    return model._loss_tracker


def needs_symbolic_build(model):
    """Whether the compiled loss or metrics have no variables yet.

    Uses `Trainer._compile_metrics` and `Trainer._compile_loss` and their
    `built` flag (they build on the first step, which under a
    multi-worker strategy must find every variable already created).

    Checked on Keras 3.15.1.
    """
    for name in ("_compile_metrics", "_compile_loss"):
        compiled = getattr(model, name, None)
        if compiled is not None and not compiled.built:
            return True
    return False


def symbolic_build(model, batch):
    """Creates the compiled loss's and metrics' variables from one batch.

    Uses `Trainer._symbolic_build(data_batch=...)`, the step `Model.fit`
    itself takes before its first step (shapes and dtypes from the batch,
    without running the model on it). `Model.build` builds the layers
    only, not the compiled metrics.

    Checked on Keras 3.15.1.
    """
    model._symbolic_build(data_batch=batch)


def serialized_dataset_graph(dataset):
    """The serialised `GraphDef` of a `tf.data` pipeline, as bytes.

    Uses `DatasetV2._as_serialized_graph()`, which includes the functions
    of `map`, `filter`, `interleave` and the like; no public API exposes a
    pipeline's ops.

    Checked on TensorFlow 2.21.0.
    """
    return dataset._as_serialized_graph().numpy()


def call_inputs(layer):
    """The input tensors of each call of `layer` in a Functional graph.

    Uses `Operation._inbound_nodes` and `Node.arguments.keras_tensors`.
    The public `layer.input` gives the first call's inputs only, and fails
    for a layer called on several tensors; a shared layer may take a
    model's input in any of its calls.

    Returns:
        A list of lists of `KerasTensor`s, one list per call.

    Checked on Keras 3.15.1.
    """
    calls = []
    for node in getattr(layer, "_inbound_nodes", []):
        arguments = getattr(node, "arguments", None)
        calls.append(list(getattr(arguments, "keras_tensors", [])))
    return calls


def producing_operation(tensor):
    """The operation (layer or op) whose output `tensor` is, and the index.

    Uses `KerasTensor._keras_history`, `(operation, node_index,
    tensor_index)`; no public API walks back from a symbolic tensor.

    Returns:
        `(operation, tensor_index)`, or None for anything that is not a
        symbolic output.

    Checked on Keras 3.15.1.
    """
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    operation, _, index = history
    return operation, index


class BackupAndRestoreHooks(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` with its private parts named.

    Uses the callback's private `_save_model` (called by `on_epoch_end`
    and `on_train_batch_end`), the paths `_weights_path` and
    `_training_metadata_path` it writes, `_current_epoch` and
    `_last_batch_seen`, which it records, and the model's
    `Trainer._initial_epoch`, which it sets; Keras offers no public way to
    change how the backup is written. A subclass overrides `save_backup`
    instead, and reads the rest through the properties below.

    Checked on Keras 3.15.1.
    """

    def _save_model(self):
        self.save_backup()

    def save_backup(self):
        """Writes the backup; Keras' own save unless overridden."""
        super()._save_model()

    @property
    def weights_path(self):
        """The file of the backed-up weights."""
        return self._weights_path

    @property
    def metadata_path(self):
        """The JSON file of the epoch and batch reached."""
        return self._training_metadata_path

    @property
    def position(self):
        """`{"epoch": ..., "batch": ...}`, as Keras writes its metadata."""
        return {"epoch": self._current_epoch, "batch": self._last_batch_seen}

    @property
    def restored_epoch(self):
        """The epoch `on_train_begin` restored the model at, or `None`."""
        return getattr(self.model, "_initial_epoch", None)

    def forget_resumed_epoch(self):
        """Lets later `fit` calls of the model start where they are told.

        Uses `Trainer._initial_epoch`: Keras' callback sets it to the
        restored epoch and `fit` starts there instead of at its
        `initial_epoch` argument, but nothing resets it, so every later
        `fit` of the same model (with or without a backup) would skip as
        many epochs.

        Checked on Keras 3.15.1.
        """
        self.model._initial_epoch = None


def wrap_batch_norm_statistics(layer, wrap):
    """Replaces, on this instance, the methods that compute a
    `BatchNormalization` layer's batch statistics by `wrap(name, method)`.

    Uses `BatchNormalization._moments` and
    `BatchNormalization._renorm_correction_and_moments`: in training mode
    `BatchNormalization.call` computes the per-channel `(mean, variance)`
    of the batch with `self._moments(inputs, mask)`, and, with
    `renorm=True`, the corrections `(r, d, mean, variance)` from them and
    the renorm variables, which the same call then updates. The wrappers
    are set with `object.__setattr__`, outside Keras' attribute tracking:
    nothing of them is saved or serialised.

    Checked on Keras 3.15.1.
    """
    for name in ("_moments", "_renorm_correction_and_moments"):
        object.__setattr__(layer, name, wrap(name, getattr(layer, name)))
