"""Random draws inside networks, replayed so that differences stay derivatives.

The input-direction estimators run a network more than once per step: the
step's own pass `F(x)`, then passes on shifted (or tiled) copies of the
batch. A network that draws random values in those passes (dropout, noise,
augmentation layers such as `RandomFlip`, `keras.random.*` calls inside a
custom layer, Monte Carlo dropout) would otherwise see other draws in each
pass, and `(F(x + eps v) - F(x)) / eps` would measure the change of the
draws, not the derivative (10^3 to 10^7 times too large).

Keras draws every random value of `keras.random` from a `SeedGenerator`
(a layer's own, or the global one for `seed=None`) through stateless ops:
the draw is a function of the generator's state and of the shape. So the
state the network's generators had before the step's pass is recorded
(`RandomState.record`) and restored before every extra pass, whose batch has the
shape of the step's batch: each pass then sees the step's draws, and each
`J v` is the derivative of the network at those draws (the one the tape
of `estimator="exact"` differentiates).

Draws with a fixed integer seed (`keras.random.dropout(x, 0.5, seed=3)`,
`tf.random.stateless_normal(tf.shape(x), seed=[1, 2])`) advance no state
but still depend on the batch's shape and on each example's row: a pass
on `R` tiled copies of the batch would see other draws than the step's
pass. A network whose output on tiled copies differs from its output on
the batch is found at construction too (`replayed_states`), and every
extra pass then runs on a batch of the step's shape and row layout.

Randomness that cannot be replayed this way (stateful TensorFlow ops such
as `tf.random.uniform`, NumPy or Python random numbers in eager `call`s)
is found by behaviour at construction (`replayed_states`), and the
difference estimators refuse it.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

from keras_jacobian import _compat

# The output of two passes with the same draws may differ by round-off
# (threaded reductions); random draws change it far more than this.
REPLAY_RTOL = 1e-5
PROBE_BATCH = 8
# Copies of the probe batch in the layout check: the second copy's rows
# sit at other positions, in a batch of another size.
PROBE_COPIES = 2


def _global_state():
    """The state of the generator behind `keras.random.*(seed=None)`."""
    return _compat.global_seed_state()


def _candidate_states(model):
    """The integer variables a pass may advance: seed-generator states.

    Every `SeedGenerator` a layer owns (directly, in a nested layer or
    model, in `TimeDistributed`, ...) is part of `model.variables`; the
    global generator is added. Integer variables that are not seeds (a
    step counter read in `call`) are candidates too: the extra passes
    should see them as the step's pass did.
    """
    states = [
        v for v in model.variables if not keras.backend.is_float_dtype(v.dtype)
    ]
    known = {id(v) for v in states}
    state = _global_state()
    if id(state) not in known:
        states.append(state)
    return states


@contextlib.contextmanager
def preserved_states(model):
    """Restores `model`'s integer variables (seed states) on exit."""
    states = _candidate_states(model)
    saved = [np.array(keras.ops.convert_to_numpy(s)) for s in states]
    try:
        yield
    finally:
        for s, value in zip(states, saved):
            s.assign(value)


def _outputs(model, x, training):
    out = model(x, training=training)
    return [
        np.asarray(keras.ops.convert_to_numpy(t), "float64")
        for t in (tf.nest.flatten(out))
    ]


def _layout_gap(tiled, first):
    """The largest difference between each copy of a pass on tiled copies
    of the batch and the pass on the batch (outputs with a batch axis)."""
    gaps = [0.0]
    for a, b in zip(tiled, first):
        if a.ndim and b.ndim and a.shape[0] == PROBE_COPIES * b.shape[0]:
            copies = np.reshape(a, (PROBE_COPIES,) + b.shape)
            gaps.append(float(np.max(np.abs(copies - b), initial=0.0)))
    return max(gaps)


def replayed_states(model, input_shape, dtype, role, training, estimator):
    """The random state a network advances in a pass, checked replayable.

    Runs `model` twice, eagerly, on the same batch of random inputs: the
    first pass shows which integer variables (seed-generator states) it
    advances; they are reset and the second pass must give the same
    output. A third pass, from the same states, on `PROBE_COPIES` tiled
    copies of the batch shows whether the output of an example depends
    on the batch's size or on the example's row (draws with a fixed
    integer seed, or any other dependence): then the estimators run every
    extra pass on a batch of the step's shape. Every variable of the
    model, and the global seed state, is restored afterwards, so the
    check has no side effect (BatchNorm statistics and seed states are
    as before).

    Args:
        model: the Keras model (or endpoint model) the estimator runs.
        input_shape: its input shape without the batch axis.
        dtype: its input dtype.
        role: `"teacher"`, `"student"` or `"model"`, for messages.
        training: the mode the estimator runs it in.
        estimator: the estimator's name; a difference estimator
            (`"finite_difference"`, `"forward_difference"`) refuses
            randomness that cannot be replayed.

    Returns:
        A `RandomState` holding the state variables to reset before each
        extra pass (none for a network without random draws), and whether
        each extra pass must see a batch of the step's shape.

    Raises:
        ValueError: for a difference estimator, when two passes with the
            same seed states differ.
    """
    from keras_jacobian import jacobians
    from keras_jacobian import probes

    if not keras.backend.is_float_dtype(dtype):
        dtype = keras.config.floatx()
    states = _candidate_states(model)
    variables = list(model.variables)
    if not any(v is states[-1] for v in variables):
        variables.append(states[-1])
    saved = [np.array(keras.ops.convert_to_numpy(v)) for v in variables]
    start = [np.array(keras.ops.convert_to_numpy(s)) for s in states]
    shape = probes.probe_shape(model, input_shape, role)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(PROBE_BATCH,) + shape), dtype=dtype)
    try:
        first = _outputs(model, x, training)
        used = [
            s
            for s, value in zip(states, start)
            if not np.array_equal(keras.ops.convert_to_numpy(s), value)
        ]
        # Every variable back as before the first pass, as the extra
        # passes see them: seed states, and the variables a training pass
        # updates (BatchNorm's renorm statistics feed its next pass).
        for v, value in zip(variables, saved):
            v.assign(value)
        second = _outputs(model, x, training)
        for v, value in zip(variables, saved):
            v.assign(value)
        tiled = _outputs(model, tf.concat([x] * PROBE_COPIES, 0), training)
    finally:
        for v, value in zip(variables, saved):
            v.assign(value)
    gap = max(
        float(np.max(np.abs(a - b), initial=0.0)) for a, b in zip(first, second)
    )
    scale = max(float(np.max(np.abs(a), initial=0.0)) for a in first)
    if gap > REPLAY_RTOL * max(scale, 1.0) and (
        estimator in jacobians.DIFFERENCE_ESTIMATORS
    ):
        mode = "training" if training else "inference"
        raise ValueError(
            f"estimator={estimator!r} differences forward passes of the "
            f"{role}, but the {role} draws random values that cannot be "
            f"replayed: two {mode}-mode passes on the same input, with "
            "every Keras seed generator reset to the same state, gave "
            f"outputs that differ by up to {gap:.3g} (outputs up to "
            f"{scale:.3g}). Random ops outside `keras.random` (e.g. "
            "`tf.random.uniform`, NumPy) draw anew in each pass, so the "
            "difference of two passes is not a derivative. Use "
            "estimator='jvp', 'exact' or 'vjp' (autodiff through one "
            "pass: the exact derivative at that pass's draws), or draw "
            "the values with `keras.random.*(..., seed=self.seed_generator)`"
            " and a `keras.random.SeedGenerator` owned by the layer."
        )
    # Round-off of another batch size taken for a dependence only costs
    # speed (one pass per direction); a missed dependence costs the value.
    layout_gap = _layout_gap(tiled, first)
    return RandomState(
        used, per_batch=layout_gap > REPLAY_RTOL * max(scale, 1.0)
    )


class RandomState:
    """The random state a network advances in a pass, to be replayed.

    A plain object, so that a Keras model holding it does not track the
    state variables as its own (they belong to the network).

    Args:
        states: the state variables (`replayed_states`).
        per_batch: whether an example's output depends on the batch's
            size or on its row (e.g. draws with a fixed integer seed), so
            that every extra pass must run on a batch of the step's shape
            and row layout, even with no state to reset.
    """

    def __init__(self, states=(), per_batch=False):
        self.states = list(states)
        self.per_batch = bool(per_batch)

    def __len__(self):
        return len(self.states)

    def record(self):
        """Records the states now; returns a function that restores them.

        Call it before the step's pass: every later call of the returned
        function resets the states to their values at that point, so
        that the next pass of a batch of the same shape draws the same
        values. Returns None when there is nothing to replay and one
        pass on tiled copies of the batch sees the step's draws.
        """
        if not self.states and not self.per_batch:
            return None
        values = [tf.identity(s.value) for s in self.states]

        def replay():
            for s, value in zip(self.states, values):
                s.assign(value)

        return replay
