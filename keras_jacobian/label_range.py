"""Out-of-range class labels, reported as a `ValueError` naming them.

`labels_to_indices` checks the labels of `target="label"` with
`tf.debugging.Assert`, which XLA drops: under `compile(jit_compile=True)`
a label outside `[0, classes)` would select a row of zeros (`tf.one_hot`),
so `target="label"` would train towards a zero Jacobian row and log a
wrong loss without a word. The compiled loss fares worse: Keras'
sparse categorical cross-entropy gives NaN for such a label under XLA
(TensorFlow's kernel raises only without XLA, on a CPU), and the NaN
reaches the weights.

No check inside an XLA cluster can stop a step, so a `LabelRangeMonitor`
records such labels in variables inside the step (one copy per replica),
and the model's `train_function` and `test_function`, which run outside
XLA, read them after each call and raise a `ValueError` naming the bad
labels. The step that read them has run by then (one update); training
stops at the first call that saw them. A `LossLabelMonitor` also hands
the compiled loss class 0 in place of each bad label under XLA, so that
this one update stays finite; without XLA its assertion stops the step
before the update, and the same `ValueError` replaces TensorFlow's
`InvalidArgumentError`.
"""

import keras
import tensorflow as tf

_NONE_LOW = tf.int32.max
_NONE_HIGH = tf.int32.min
_EMPTY = [0, _NONE_LOW, _NONE_HIGH, 0, 0, 0]
_XLA_NOTE = (
    "(The step ran compiled with XLA, which drops in-step checks: this "
    "error comes after that step, which {}.)"
)


FIX = "or pick target='teacher_top1', which needs no labels."
FRACTION = (
    "target='label' needs whole-number class indices (NaN is none): a float "
    "label is "
    "not truncated to a class. Cast integer-valued labels, fix the others "
    "(probabilities or soft labels are not class indices), " + FIX
)
NOT_ONE_HOT = (
    "target='label' reads a one-hot row as the class of its 1: a row of "
    "zeros names no class, and several positive entries or fractions (soft "
    "labels from MixUp, CutMix or label smoothing) name no single class. "
    "Fix the labels (smooth them in the loss: `label_smoothing=`), " + FIX
)


def one_hot_rows(labels):
    """True for each row of `labels` that holds one 1 and zeros."""
    binary = tf.reduce_all(tf.equal(labels, 0) | tf.equal(labels, 1), -1)
    ones = tf.reduce_sum(tf.cast(tf.equal(labels, 1), "int32"), -1)
    return binary & tf.equal(ones, 1)


def _count(bad):
    return tf.reduce_sum(tf.cast(bad, "int32"))


class LabelRangeMonitor:
    """Records labels outside `[0, num_classes)` seen by compiled steps.

    Its variable is not a weight of the model (not saved, not trained).

    Args:
        num_classes: the number of classes the labels index.
        message: the first sentence of the error, saying what the labels
            are for and what they must be.
    """

    # What a step compiled with XLA did with the bad labels.
    xla_update = (
        "used zero rows for indices out of range, truncated fractional "
        "ones and took the argmax of rows that are not one-hot (in its "
        "loss and, in `fit`, its update)"
    )

    def __init__(self, num_classes, message):
        self.num_classes = num_classes
        self.message = message
        # Per replica: [count, lowest, highest] of the bad labels, the
        # number of classes they were checked against, and the counts of
        # fractional labels and of rows that are not one-hot.
        self.state = tf.Variable(
            _EMPTY,
            dtype="int32",
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.SUM,
            name="label_range_monitor",
        )

    def record(self, labels):
        """Adds the batch's out-of-range sparse labels to the record.

        Rows of shape `(batch, num_classes)` are counted when they are not
        one-hot; float indices when they are not whole numbers.
        """
        labels = tf.convert_to_tensor(labels)
        shape = labels.shape
        state = self.state.read_value()
        if (
            shape.rank == 2
            and shape[-1] == self.num_classes
            and self.num_classes > 1
        ):
            bad = tf.logical_not(one_hot_rows(labels))
            self.state.assign(
                tf.tensor_scatter_nd_add(state, [[5]], [_count(bad)])
            )
            return
        if labels.dtype.is_floating:
            # A NaN is no whole number either; not also out of range.
            bad = tf.not_equal(labels, tf.round(labels))
            state = tf.tensor_scatter_nd_add(state, [[4]], [_count(bad)])
            self.state.assign(state)
            finite = tf.math.is_finite(labels)
            labels = tf.where(finite, labels, tf.zeros_like(labels))
        self._record(labels, self.num_classes)

    def guard(self, labels, model):
        """Records the batch's bad labels; returns the labels to use.

        Under XLA the step goes on (`checked` raises after it). Eagerly
        the `ValueError` is raised at once. In a graph without XLA the
        returned labels, and through `guarded` the step's update, wait
        for an assertion that no bad label was recorded: the step stops
        before any use of them, and `checked` raises the `ValueError`.
        """
        self.record(labels)
        if model.jit_compile:
            return labels
        if tf.executing_eagerly():
            self.check(model.distribute_strategy, compiled=False)
            return labels
        # Read after the record's assignments (automatic control
        # dependencies order the operations on the variable).
        state = self.state.read_value()
        ok = tf.debugging.Assert(
            tf.equal(state[0] + state[4] + state[5], 0),
            ["Bad labels; `checked` raises their ValueError."],
        )
        _set_guards(model, _guards(model) + [ok])
        with tf.control_dependencies([ok]):
            return tf.nest.map_structure(tf.identity, labels)

    def _record(self, labels, num_classes, ignore_class=None):
        """Records the labels outside `[0, num_classes)`.

        Returns:
            `(assign, bad)`: the assignment of the record and a boolean
            tensor of the labels' shape, True for each bad label.
        """
        indices = tf.cast(tf.reshape(labels, [-1]), "int32")
        num_classes = tf.cast(num_classes, "int32")
        bad = (indices < 0) | (indices >= num_classes)
        if ignore_class is not None:
            bad = bad & tf.not_equal(indices, int(ignore_class))
        state = self.state.read_value()
        assign = self.state.assign(
            tf.stack(
                [
                    state[0] + tf.reduce_sum(tf.cast(bad, "int32")),
                    tf.minimum(
                        state[1],
                        tf.reduce_min(tf.where(bad, indices, _NONE_LOW)),
                    ),
                    tf.maximum(
                        state[2],
                        tf.reduce_max(tf.where(bad, indices, _NONE_HIGH)),
                    ),
                    tf.maximum(state[3], num_classes),
                    state[4],
                    state[5],
                ]
            )
        )
        return assign, tf.reshape(bad, tf.shape(labels))

    def error(self, strategy, compiled):
        """The `ValueError` for the bad labels recorded, or None; resets.

        Args:
            strategy: the model's `tf.distribute` strategy.
            compiled: whether the step that recorded them ran with XLA.
        """
        copies = strategy.experimental_local_results(self.state)
        values = [copy.numpy() for copy in copies]
        count = sum(int(v[0]) for v in values)
        fractional = sum(int(v[4]) for v in values)
        rows = sum(int(v[5]) for v in values)
        if not count + fractional + rows:
            return None
        low = min(int(v[1]) for v in values)
        high = max(int(v[2]) for v in values)
        classes = max(int(v[3]) for v in values)
        for copy in copies:
            copy.assign(_EMPTY)
        message = self.message
        if callable(message):
            message = message(classes)
        found = []
        if count:
            found.append(
                f"{message} Received {count} label(s) out of range, from "
                f"{low} to {high}."
            )
        if fractional:
            found.append(
                f"{FRACTION} Received {fractional} label(s) that are not "
                "whole numbers."
            )
        if rows:
            found.append(
                f"{NOT_ONE_HOT} Received {rows} row(s) that are not one-hot."
            )
        return ValueError(
            " ".join(found)
            + " "
            + (
                _XLA_NOTE.format(self.xla_update)
                if compiled
                else "(The step stopped before using them.)"
            )
        )

    def check(self, strategy, compiled=True):
        """Raises `ValueError` if a replica recorded a bad label; resets."""
        error = self.error(strategy, compiled)
        if error is not None:
            raise error


class LossLabelMonitor(LabelRangeMonitor):
    """Checks the class indices read by a sparse compiled loss.

    Made for a model compiled with a sparse categorical cross-entropy
    (see `sparse_crossentropy`); the number of classes is the last axis
    of the predictions, read in the step.

    Args:
        loss_name: the loss as the error names it.
        ignore_class: the loss's `ignore_class` (a label it skips), or
            None.
    """

    xla_update = (
        "read class 0 in place of those labels (in its loss and, in "
        "`fit`, its update)"
    )

    def __init__(self, loss_name, ignore_class=None):
        self.loss_name = loss_name
        self.ignore_class = ignore_class

        def message(classes):
            if ignore_class is None:
                allowed = f"[0, {classes})"
                skip = (
                    ", skip a marker such as -1 with `keras.losses."
                    "SparseCategoricalCrossentropy(ignore_class=-1)`"
                )
            else:
                allowed = f"[0, {classes}) or ignore_class={ignore_class}"
                skip = ""
            return (
                f"The compiled loss {loss_name} needs class indices in "
                f"{allowed}: the predictions have {classes} classes (last "
                "axis). Fix the labels (e.g. shift labels numbered from 1)"
                f"{skip}, or give the model one output per class."
            )

        super().__init__(None, message)

    def record_and_fix(self, labels, y_pred):
        """Records the bad labels of `labels`; returns the labels to use.

        Eagerly a bad label raises the `ValueError` at once. In a graph it
        fails an assertion after the record (an `InvalidArgumentError`
        that `checked` turns into the `ValueError`); under XLA, which drops
        the assertion, the labels returned read class 0 in place of each
        bad one, so that the loss stays finite until `checked` raises.
        """
        labels = tf.convert_to_tensor(labels)
        classes = y_pred.shape[-1]
        if classes is None:
            classes = tf.shape(y_pred)[-1]
        if tf.executing_eagerly():
            indices = tf.cast(tf.reshape(labels, [-1]), "int32")
            bad = (indices < 0) | (indices >= classes)
            if self.ignore_class is not None:
                bad = bad & tf.not_equal(indices, int(self.ignore_class))
            shown = tf.boolean_mask(indices, bad).numpy()
            if shown.size:
                raise ValueError(
                    f"{self.message(int(classes))} Received "
                    f"{shown.size} label(s) out of range: "
                    f"{sorted(set(shown.tolist()))[:10]}."
                )
            return labels
        assign, bad = self._record(labels, classes, self.ignore_class)
        with tf.control_dependencies([assign]):
            ok = tf.debugging.Assert(
                tf.logical_not(tf.reduce_any(bad)),
                [
                    "Labels out of range for the compiled loss "
                    f"{self.loss_name}. Received labels:",
                    tf.boolean_mask(labels, bad),
                ],
                summarize=10,
            )
        with tf.control_dependencies([ok]):
            return tf.where(bad, tf.zeros_like(labels), labels)


def sparse_crossentropy(loss):
    """The name and `ignore_class` of a sparse cross-entropy loss.

    Args:
        loss: the loss given to `compile(loss=...)`: a name, a function, a
            `keras.losses.Loss`, or one of these in a list or dict of one.

    Returns:
        `(name, ignore_class)` if `loss` is Keras' sparse categorical
        cross-entropy (the labels it reads are class indices), else None.
    """
    if isinstance(loss, (list, tuple)) and len(loss) == 1:
        loss = loss[0]
    if isinstance(loss, dict) and len(loss) == 1:
        loss = next(iter(loss.values()))
    function = keras.losses.sparse_categorical_crossentropy
    if isinstance(loss, str):
        try:
            loss = keras.losses.get(loss)
        except ValueError:
            return None
    if loss is function:
        return "sparse_categorical_crossentropy", None
    # `keras.losses.SparseCategoricalCrossentropy`, or any loss object
    # wrapping the function (Keras' `LossFunctionWrapper`).
    if isinstance(loss, keras.losses.Loss) and (
        getattr(loss, "fn", None) is function
    ):
        return loss.name, loss.get_config().get("ignore_class")
    return None


def loss_monitor(model, strategy=None):
    """The model's `LossLabelMonitor` for its compiled loss, or None.

    Kept while the loss reads labels the same way; made (inside the
    scope of `strategy`, by default the model's) when it changes.
    """
    current = getattr(model, "_loss_label_monitor", None)
    sparse = sparse_crossentropy(getattr(model, "loss", None))
    if sparse is None:
        monitor = None
    elif current is not None and (
        (current.loss_name, current.ignore_class) == sparse
    ):
        monitor = current
    else:
        strategy = strategy or model.distribute_strategy
        with strategy.scope():
            monitor = LossLabelMonitor(*sparse)
    model._loss_label_monitor = monitor
    return monitor


def loss_labels(model, y, y_pred):
    """The labels `y` the compiled loss reads, checked by the model's
    `LossLabelMonitor` (if any; see `LossLabelMonitor.record_and_fix`)."""
    monitor = getattr(model, "_loss_label_monitor", None)
    if monitor is None:
        return y
    labels = tf.nest.flatten(y)
    predictions = tf.nest.flatten(y_pred)
    if len(labels) != 1 or len(predictions) != 1:
        return y
    fixed = monitor.record_and_fix(labels[0], predictions[0])
    return tf.nest.pack_sequence_as(y, [fixed])


def guarded_apply(model, grads, variables):
    """`model.optimizer.apply`, waiting for the label assertions of this
    step's trace (`LabelRangeMonitor.guard`): no update, and no step
    count, runs with a bad label."""
    guards = _guards(model)
    _set_guards(model, [])
    if guards:
        with tf.control_dependencies(guards):
            grads = [None if g is None else tf.identity(g) for g in grads]
    with tf.control_dependencies(guards):
        model.optimizer.apply(grads, variables)


def _guards(model):
    """The label assertions of the graph being traced."""
    graph = tf.compat.v1.get_default_graph()
    return [g for g in getattr(model, "_label_guards", ()) if g.graph is graph]


def _set_guards(model, guards):
    # Outside Keras' attribute tracking: graph operations, not state.
    object.__setattr__(model, "_label_guards", guards)


def _monitors(model):
    return [
        monitor
        for monitor in (
            getattr(model, "_label_monitor", None),
            getattr(model, "_loss_label_monitor", None),
        )
        if monitor is not None
    ]


def checked(function, model):
    """`function` (a `train_function` or `test_function`), raising the
    `ValueError` of the model's label monitors.

    With `model.jit_compile` the monitors are read after each call. A
    step without XLA stops at its assertion: the TensorFlow error becomes
    the monitor's `ValueError` when a monitor recorded the bad labels
    (other errors are raised as they are).
    """
    if function is None:
        return function

    def run_and_check(*args, **kwargs):
        try:
            logs = function(*args, **kwargs)
        except tf.errors.OpError:
            # The replica whose assertion failed raises an
            # `InvalidArgumentError`; on several replicas the others may
            # surface first, cancelled (`CancelledError`).
            strategy = model.distribute_strategy
            for monitor in _monitors(model):
                error = monitor.error(strategy, compiled=False)
                if error is not None:
                    raise error from None
            raise
        if model.jit_compile:
            for monitor in _monitors(model):
                monitor.check(model.distribute_strategy)
        return logs

    return run_and_check


class CheckedStepsMixin:
    """Wraps a model's `train_function` and `test_function` with
    `checked`, reading the model's `_label_monitor` (`None` for no
    check; a model built on its first batch gets it during the first
    call) and its `_loss_label_monitor`, made here for its compiled
    loss."""

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        loss_monitor(self)
        super().make_train_function(force=force)
        self.train_function = checked(self.train_function, self)
        return self.train_function

    def make_test_function(self, force=False):
        if self.test_function is not None and not force:
            return self.test_function
        loss_monitor(self)
        super().make_test_function(force=force)
        self.test_function = checked(self.test_function, self)
        return self.test_function
