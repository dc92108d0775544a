"""Forward-mode rules traced for exact shapes, whatever ran before.

TensorFlow traces the forward-mode (JVP) rule of each op once per input
signature. After 32 such traces of one op type in a process
(`tensorflow.python.eager.forwardprop._TRACE_COUNT_LIMIT`, never reset,
not by `keras.backend.clear_session` either) it switches to one relaxed
trace of unknown shape, and soon of unknown rank: the same `BiasAdd` rule
then serves a convolution's rank-4 output and a dense layer's rank-2 one.

Under XLA this breaks a step that differentiates such a trace inside a
`tf.cond` (the `Distiller` skips a term of weight 0 with one): the
gradient of the cond hands the other branch placeholders of the traced
static shapes, and XLA refuses branches of unknown, hence different, rank
("left_branch_shape.dimensions_size() != right_branch_shape
.dimensions_size() (2 vs 1)") or sizes ("Dynamic Spatial Convolution is
not supported"). Whether a `jit_compile=True` step compiled thus depended
on how many forward-mode passes the process had already run: 11 eager
ones through a small network at 11 batch sizes were enough.

`exact_shapes()` keeps TensorFlow tracing exact shapes while the library
records a forward pass. Those passes run inside steps of fixed shapes, so
the exact traces they add are few and cached.
"""

import contextlib
import threading

from tensorflow.python.eager import forwardprop

_LOCK = threading.Lock()
_DEPTH = 0
_SAVED_LIMIT = None


@contextlib.contextmanager
def exact_shapes():
    """Within the block, forward-mode rules are traced for exact shapes.

    Re-entrant and safe across threads: the process-wide limit is raised
    while at least one block is open and restored when the last closes.
    With a TensorFlow that has no such limit, it does nothing.
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
