"""Out-of-range labels in steps compiled with XLA, reported after the step.

`labels_to_indices` checks labels with `tf.debugging.Assert`, which XLA
drops: under `compile(jit_compile=True)` a label outside `[0, classes)`
would select a row of zeros (`tf.one_hot`), so `target="label"` would
train towards a zero Jacobian row and log a wrong loss without a word.
(Keras' own `SparseCategoricalCrossentropy` logs NaN there, no error.)

No check inside an XLA cluster can stop a step, so a `LabelRangeMonitor`
records such labels in variables inside the step (one copy per replica),
and the model's `train_function` and `test_function`, which run outside
XLA, read them after each call and raise a `ValueError` naming the bad
labels. The step that read them has run by then (one update); training
stops at the first call that saw them. Outside XLA the in-step assertion
raises first and the monitor is not used.
"""

import tensorflow as tf

_NONE_LOW = tf.int32.max
_NONE_HIGH = tf.int32.min


class LabelRangeMonitor:
    """Records labels outside `[0, num_classes)` seen by compiled steps.

    Its variable is not a weight of the model (not saved, not trained).

    Args:
        num_classes: the number of classes the labels index.
        message: the first sentence of the error, saying what the labels
            are for and what they must be.
    """

    def __init__(self, num_classes, message):
        self.num_classes = num_classes
        self.message = message
        # Per replica: [count, lowest, highest] of the bad labels.
        self.state = tf.Variable(
            [0, _NONE_LOW, _NONE_HIGH],
            dtype="int32",
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.SUM,
            name="label_range_monitor",
        )

    def record(self, labels):
        """Adds the batch's out-of-range sparse labels to the record.

        One-hot labels (shape `(batch, num_classes)`) are skipped: their
        `argmax` is always a class.
        """
        labels = tf.convert_to_tensor(labels)
        shape = labels.shape
        if (
            shape.rank == 2
            and shape[-1] == self.num_classes
            and self.num_classes > 1
        ):
            return
        indices = tf.cast(tf.reshape(labels, [-1]), "int32")
        bad = (indices < 0) | (indices >= self.num_classes)
        state = self.state.read_value()
        self.state.assign(
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
                ]
            )
        )

    def check(self, strategy):
        """Raises `ValueError` if a replica recorded a bad label; resets."""
        copies = strategy.experimental_local_results(self.state)
        values = [copy.numpy() for copy in copies]
        count = sum(int(v[0]) for v in values)
        if not count:
            return
        low = min(int(v[1]) for v in values)
        high = max(int(v[2]) for v in values)
        for copy in copies:
            copy.assign([0, _NONE_LOW, _NONE_HIGH])
        raise ValueError(
            f"{self.message} Received {count} label(s) out of range, from "
            f"{low} to {high}. (The step ran compiled with XLA, which "
            "drops in-step checks: this error comes after that step, "
            "whose update used zero rows for those examples.)"
        )


def checked(function, model, monitor):
    """`function` (a `train_function`), checking `monitor` after each call.

    The check runs only when `model.jit_compile` is on; without XLA the
    step's own assertion has raised already.
    """
    if monitor is None or function is None:
        return function

    def run_and_check(*args, **kwargs):
        logs = function(*args, **kwargs)
        if model.jit_compile:
            monitor.check(model.distribute_strategy)
        return logs

    return run_and_check


class CheckedStepsMixin:
    """Wraps a model's `train_function` and `test_function` with
    `checked`, reading the model's `_label_monitor` (`None` for no
    check); a model built on its first batch gets its monitor during the
    first call, so its functions read it after each call."""

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force=force)
        self.train_function = self._label_checked(self.train_function)
        return self.train_function

    def make_test_function(self, force=False):
        if self.test_function is not None and not force:
            return self.test_function
        super().make_test_function(force=force)
        self.test_function = self._label_checked(self.test_function)
        return self.test_function

    def _label_checked(self, function):
        if self.built:
            return checked(function, self, self._label_monitor)

        def run(*args, **kwargs):
            logs = function(*args, **kwargs)
            if self._label_monitor is not None and self.jit_compile:
                self._label_monitor.check(self.distribute_strategy)
            return logs

        return run
