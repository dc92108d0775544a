"""Per-example Jacobians of a network whose BatchNorm runs in training mode.

A `BatchNormalization` layer in training mode normalises each example with
the mean and variance of its whole batch, so an example's output depends
on the other examples' inputs. Differentiated as they are, the rows of a
student in training mode would mix in derivatives across examples, which
the teacher (in inference mode) and the student at inference do not have;
and every estimator would see another mixture (`"exact"` differentiates the
batch's summed class scores, `"vjp"` per-example projections, the
input-direction estimators passes on shifted copies of the whole batch).

The Jacobian terms therefore differentiate each example's output with
respect to its own input with the batch's statistics held constant: the
function the network computes at inference when its moving statistics equal
the batch's. The statistics keep their dependence on the weights, so the
weight gradient of the terms stays exact:

- in the step's pass, each layer computes its statistics with the tape that
  watches the input paused (`GradientTape.stop_recording`): the outer tape,
  which differentiates with respect to the weights, still records them;
- every extra pass of the step (shifted, tiled or noisy copies of the batch)
  normalises with the statistics of the step's pass, which the forward-mode
  accumulator of `"jvp"` does not see as depending on the input.

With `renorm=True` the corrections `r` and `d`, computed from the batch's
statistics and the renorm variables, are held the same way, as the step's
pass computed them (before it updates those variables): the Jacobian is
that of the function Keras runs in training, `((x - mean) / std * r + d) *
gamma + beta`, with `mean`, `std`, `r` and `d` held.

The layers are wrapped once (`install`); outside a step the wrapper calls
the layer's own method. The recorded statistics are per thread, so that
the replicas of a `tf.distribute` strategy, traced in threads, keep their
own.
"""

import contextlib
import functools
import threading

import keras
import tensorflow as tf

from keras_jacobian import _compat

_local = threading.local()
_lock = threading.Lock()
_MARK = "_keras_jacobian_moments"


def batch_norm_layers(model):
    """The `BatchNormalization` layers of `model`, nested ones included."""
    return [
        layer
        for layer in _compat.flatten_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def install(model):
    """Wraps the statistics of `model`'s BatchNorm layers (idempotent)."""
    with _lock:
        for layer in batch_norm_layers(model):
            if getattr(layer, _MARK, False):
                continue
            _compat.wrap_batch_norm_statistics(
                layer, functools.partial(_wrap, layer)
            )
            object.__setattr__(layer, _MARK, True)


def _wrap(layer, name, method):
    def held(*args):
        record = getattr(_local, "record", None)
        if record is None:
            return method(*args)
        return record.statistics((id(layer), name), method, args)

    return held


class Record:
    """The statistics of one pass of the step, replayed in its extra ones.

    Per layer and method, in call order (a layer called twice in a pass
    has two entries): the batch moments and, for `renorm=True`, the
    corrections computed from them and from the renorm variables, read
    before the step's pass updates those.
    """

    def __init__(self):
        self._recorded = {}
        self._replaying = None
        self._tape = None

    def statistics(self, key, method, args):
        if self._replaying is not None:
            calls = self._replaying.get(key, 0)
            self._replaying[key] = calls + 1
            recorded = self._recorded.get(key, [])
            if calls < len(recorded):
                dtype = args[0].dtype
                return tuple(tf.cast(v, dtype) for v in recorded[calls])
            return method(*args)
        if self._tape is not None:
            with self._tape.stop_recording():
                result = method(*args)
        else:
            result = method(*args)
        self._recorded.setdefault(key, []).append(result)
        return result

    @contextlib.contextmanager
    def recording(self, tape=None):
        """The step's pass: statistics recorded, invisible to `tape`."""
        self._tape = tape
        with _active(self):
            yield
        self._tape = None

    def replayed(self, forward):
        """`forward`, normalising with the recorded statistics."""

        def again(inputs):
            self._replaying = {}
            try:
                with _active(self):
                    return forward(inputs)
            finally:
                self._replaying = None

        return again


@contextlib.contextmanager
def _active(record):
    previous = getattr(_local, "record", None)
    _local.record = record
    try:
        yield
    finally:
        _local.record = previous


def first_pass(forward, x, watch):
    """The step's pass `forward(x)`, with a tape on `x` when `watch`.

    Returns:
        `(tape or None, outputs, record)`, `record.replayed` wraps the
        step's extra passes.
    """
    record = Record()
    if not watch:
        with record.recording():
            return None, forward(x), record
    tape = tf.GradientTape(persistent=True, watch_accessed_variables=False)
    with tape:
        tape.watch(x)
        with record.recording(tape):
            outputs = forward(x)
    return tape, outputs, record


class _Detached:
    """Statistics computed from zeros of the batch's shape: a traced graph
    in which they do not depend on the input's values."""

    def statistics(self, key, method, args):
        return method(
            *(
                tf.zeros(tf.shape(a), a.dtype) if tf.is_tensor(a) else a
                for a in args
            )
        )


def detached():
    """Within it, BatchNorm statistics do not depend on the input.

    For the graph checks of the difference estimators: their extra passes
    reuse the step's statistics, so operations inside the statistics (a
    variance clamped at zero, renorm's clipped corrections) act the same
    way in every pass and are no kink between them.
    """
    return _active(_Detached())
