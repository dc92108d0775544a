"""Every check on every registered term and configuration.

The cases live in `tests/conformance_cases.py`; a case registered there
gets each check below, under its name as the pytest id
(`test_value[jacobian_all_raw]`):

- `test_value`: the logged value against the case's NumPy / plain-tape
  reference (random terms: with the draws the step uses, or as an
  unbiased estimate averaged over many draws);
- `test_gradient`: the gradient the train step applies (SGD, learning
  rate 1) against central finite differences of the loss, in float64,
  with the random draws held fixed;
- `test_copy_has_zero_gradient`: a student that copies the teacher is a
  stationary point of the term;
- `test_round_trip`: the `.keras` file gives the same losses in a fresh
  process (one subprocess for every case);
- `test_sample_weight`: Keras' weighted reduction, zero weights drop
  examples;
- `test_two_replicas_equal_one_device`: built with default arguments
  inside `strategy.scope()`, MirroredStrategy over 2 logical CPUs gives
  the weights of one device after 2 steps (one subprocess for every case);
- `test_term_in_two_distillers`: one term object in two Distillers trains
  each as a fresh term would;
- `test_mixed_float16_finite`: loss and gradients finite under
  `mixed_float16`.

Every model is built with default arguments apart from those that define
the case. Steps run eagerly (`train_step`, `test_step`: the functions
`fit` and `evaluate` trace), except in the subprocesses, which call `fit`
and `evaluate`. `test_every_term_is_registered` fails when an exported
term class, a `JacobianMatching` target or a regularised-model target
has no case.

Cost (2 cores, nearly idle): 3 minutes for the module, of which the
test process takes about 125 s of CPU; the two subprocesses start with
the module and run beside it (marked `slow`). The replica job alone
takes about 2.5 minutes: it trains the 37 cases on one device and on 2
replicas.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_jacobian as kj
from keras_jacobian import jacobians
from keras_jacobian import regularized
from keras_jacobian.terms import jacobian as jacobian_terms
from tests import conformance_cases as cc
from tests import conformance_references as ref

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "distributed_jobs"))

import cluster  # noqa: E402

CASES = list(cc.REGISTRY.values())
IDS = list(cc.REGISTRY)
# Copies of the batch averaged by the value check of unbiased estimates:
# 4,000 one-draw estimates give a standard error of about 1.5 %.
UNBIASED_COPIES = 1000
UNBIASED_RTOL = 0.05


def ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture
def policy():
    """Restores float32 after a test that changes the dtype policy."""
    yield
    keras.config.set_dtype_policy("float32")
    keras.config.set_floatx("float32")


def compiled(case, teacher, student, learning_rate=0.1, loss=True, term=None):
    model = case.build(teacher, student, term=term)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=ce() if loss else None,
    )
    return model


def seed_state(model):
    return model.seed_generator.state.numpy().copy()


def logged(model, x, y, sample_weight=None, state=None):
    """The metrics of one evaluation step, from seed state `state`."""
    if state is not None:
        model.seed_generator.state.assign(state)
    model.reset_metrics()
    logs = model.test_step((x, y, sample_weight))
    return {key: float(value) for key, value in logs.items()}


def expected_values(case, teacher, student, model, x, y):
    """The reference per-example values, and the seed state of their draws."""
    state = seed_state(model)
    draws = case.read_draws(model, x, y) if case.read_draws else None
    model.seed_generator.state.assign(state)
    return case.reference(teacher, student, model, x, y, draws), state


def step_gradients(model, x, y):
    """The gradient one train step applies, read from SGD(1)'s update.

    The weights and the seed state are restored afterwards.
    """
    variables = model.trainable_variables
    before = [v.numpy().copy() for v in variables]
    state = seed_state(model)
    model.train_step((x, y))
    grads = [b - v.numpy() for b, v in zip(before, variables)]
    for v, b in zip(variables, before):
        v.assign(b)
    model.seed_generator.state.assign(state)
    return grads


def term_weight(model):
    weights = getattr(model, "term_weights", None)
    if weights is None:
        return float(model.weight_variable.numpy())
    return float(weights[0].numpy())


def np_cross_entropy(student, x, y):
    z = ref.logits(student, x)
    return -np.log(ref.np_softmax(z)[np.arange(len(y)), y])


def test_every_term_is_registered():
    exported = [getattr(kj, name) for name in kj.__all__]
    terms = {
        c
        for c in exported
        if isinstance(c, type)
        and issubclass(c, kj.DistillationTerm)
        and c is not kj.DistillationTerm
    }
    built = [case.term() for case in CASES if case.term is not None]
    assert terms <= {type(term) for term in built}
    matching = [t for t in built if isinstance(t, kj.JacobianMatching)]
    assert {t.target for t in matching} == set(jacobian_terms.TARGETS)
    assert {t.estimator for t in matching} == set(jacobians.ESTIMATORS)
    models = [
        case.model(ref.net("s", 0)) for case in CASES if case.model is not None
    ]
    assert {m.target for m in models} == set(regularized.TARGETS)
    assert {m.estimator for m in models} == set(jacobians.ESTIMATORS)


# (a) Values.


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_value(case):
    x, y = ref.data()
    teacher, student = case.networks()
    model = compiled(case, teacher, student)
    if case.unbiased:
        # Each copy of each example draws its own directions.
        copies = np.tile(x, (UNBIASED_COPIES, 1, 1, 1))
        labels = np.tile(y, UNBIASED_COPIES)
        got = logged(model, copies, labels)[case.loss_key]
        expected = case.reference(teacher, student, model, x, y, None)
        np.testing.assert_allclose(got, np.mean(expected), rtol=UNBIASED_RTOL)
        return
    expected, state = expected_values(case, teacher, student, model, x, y)
    got = logged(model, x, y, state=state)[case.loss_key]
    np.testing.assert_allclose(got, np.mean(expected), rtol=1e-4, atol=1e-6)


# (b) Gradients against finite differences.

# Central differences of the float64 networks: the library reduces the
# terms in float32, so the step trades truncation (eps^2) against the
# float32 round-off of the loss (~1e-7 |loss| / eps).
FD_STEP = 1e-3
FD_RTOL = 2e-3


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradient(case, policy):
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    x, y = ref.data()
    teacher, student = case.networks()
    # No compiled loss: the gradient is that of the terms alone.
    model = compiled(case, teacher, student, learning_rate=1.0, loss=False)
    variables = model.trainable_variables
    start = [v.numpy().copy() for v in variables]
    state = seed_state(model)
    grads = step_gradients(model, x, y)

    def loss(direction, step):
        for v, w, d in zip(variables, start, direction):
            v.assign(w + step * d)
        model.seed_generator.state.assign(state)
        _, _, total = model._step_losses(x, y, None, training=True)
        return float(total)

    rng = np.random.default_rng(0)
    every = [rng.normal(size=w.shape) for w in start]
    # The first convolution only gets a Jacobian term's gradient through
    # the second-order path of the input gradient.
    first = [
        d if "s_conv1/kernel" in v.path else np.zeros_like(d)
        for v, d in zip(variables, every)
    ]
    assert any(np.any(d) for d in first)
    for name, direction in (("all weights", every), ("s_conv1", first)):
        norm = np.sqrt(sum(np.sum(d**2) for d in direction))
        direction = [d / norm for d in direction]
        analytic = sum(np.sum(g * d) for g, d in zip(grads, direction))
        numeric = (loss(direction, FD_STEP) - loss(direction, -FD_STEP)) / (
            2 * FD_STEP
        )
        scale = np.sqrt(sum(np.sum(g**2) for g in grads))
        assert scale > 1e-4, "the term does not train the student"
        np.testing.assert_allclose(
            analytic, numeric, atol=FD_RTOL * scale, err_msg=name
        )


# (c) A copy of the teacher is a stationary point.


# The same students away from the copy have gradients of 0.05 to 4 (and
# test_gradient checks that each term trains the student); a float32
# SGD(1) update resolves gradients down to ~3e-8 at these weights.
COPY_GRADIENT_BOUND = 1e-6


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_copy_has_zero_gradient(case):
    if case.copy_skip:
        pytest.skip(case.copy_skip)
    x, y = ref.data()
    teacher, student = case.networks(copy=True)
    model = compiled(case, teacher, student, learning_rate=1.0, loss=False)
    grads = step_gradients(model, x, y)
    largest = max(float(np.max(np.abs(g))) for g in grads)
    assert largest <= COPY_GRADIENT_BOUND, (
        f"a student copying the teacher moves: max |gradient| = {largest}"
    )


# (e) Sample weights.


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_sample_weight(case):
    x, y = ref.data()
    weights = np.array([0.5, 2.0, 0.0, 1.5], "float32")
    teacher, student = case.networks()
    model = compiled(case, teacher, student)
    if case.weighted_reference is True:
        # A scale estimated from the weighted batch: no per-example
        # reference for one draw; the invariance below is still checked.
        state = seed_state(model)
        got = logged(model, x, y, weights, state)
        per_example = None
    elif case.weighted_reference is not None:
        state = seed_state(model)
        draws = case.read_draws(model, x, y) if case.read_draws else None
        model.seed_generator.state.assign(state)
        per_example = case.weighted_reference(weights)(
            teacher, student, model, x, y, draws
        )
    elif case.unbiased:
        # No per-example reference for one draw: the library's own
        # per-example values (one-hot weights, the same draws), so that
        # what is checked is the weighting.
        state = seed_state(model)
        per_example = np.array(
            [
                len(x)
                * logged(model, x, y, np.eye(len(x))[i], state)[case.loss_key]
                for i in range(len(x))
            ]
        )
    else:
        per_example, state = expected_values(
            case, teacher, student, model, x, y
        )
    got = logged(model, x, y, weights, state)
    if per_example is not None:
        # Keras' "sum_over_batch_size": the weighted sum over the batch
        # size, as the compiled loss reduces it.
        term = np.sum(weights * per_example) / len(x)
        np.testing.assert_allclose(
            got[case.loss_key], term, rtol=1e-4, atol=1e-6
        )
        task = np.sum(weights * np_cross_entropy(student, x, y)) / len(x)
        np.testing.assert_allclose(
            got["loss"], task + term_weight(model) * term, rtol=1e-4, atol=1e-6
        )
    # Another example in place of the zero-weight one changes nothing.
    other_x, other_y = ref.data(seed=9)
    x[2], y[2] = other_x[0], (y[2] + 1) % ref.CLASSES
    replaced = logged(model, x, y, weights, state)
    for key in (case.loss_key, "loss"):
        np.testing.assert_allclose(replaced[key], got[key], rtol=1e-6)


# (g) One term object in two Distillers.


def _snapshot(model):
    return [v.numpy().copy() for v in model.trainable_variables], seed_state(
        model
    )


def _restore(model, snapshot):
    values, state = snapshot
    for v, value in zip(model.trainable_variables, values):
        v.assign(value)
    model.seed_generator.state.assign(state)


def _one_step(model, x, y):
    model.reset_metrics()
    return float(model.train_step((x, y))["loss"])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_term_in_two_distillers(case):
    if case.reuse_skip:
        pytest.skip(case.reuse_skip)
    x, y = ref.data()
    # The second student differs in spatial size and, with an adapter, in
    # width, so that state built for the first cannot serve the second.
    second = {"strides": 2, "student_filters": case.student_filters + 1}
    if case.student_filters == 3:  # no adapter: the teacher's width
        second["student_filters"] = 3

    def pair(term=None):
        teacher, first_student = case.networks()
        _, second_student = case.networks(**second)
        first = compiled(case, teacher, first_student, term=term)
        first_start = _snapshot(first)
        second_model = compiled(case, teacher, second_student, term=term)
        return first, first_start, second_model, _snapshot(second_model)

    shared = case.term()
    first, first_start, second_model, second_start = pair(shared)
    reused = [_one_step(first, x, y), _one_step(second_model, x, y)]
    fresh_first, _, fresh_second, _ = pair()
    _restore(fresh_first, first_start)
    _restore(fresh_second, second_start)
    fresh = [_one_step(fresh_first, x, y), _one_step(fresh_second, x, y)]
    np.testing.assert_allclose(reused, fresh, rtol=1e-5)
    for a, b in ((first, fresh_first), (second_model, fresh_second)):
        for v, w in zip(a.trainable_variables, b.trainable_variables):
            np.testing.assert_allclose(v.numpy(), w.numpy(), atol=1e-6)


# (h) Mixed precision.


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_mixed_float16_finite(case, policy):
    keras.config.set_dtype_policy("mixed_float16")
    x, y = ref.data()
    teacher, student = case.networks()
    model = compiled(case, teacher, student)
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        _, logs, total = model._step_losses(x, y, None, training=True)
    grads = tape.gradient(total, variables)
    assert np.isfinite(float(total))
    for metric, value in logs:
        assert np.isfinite(float(value)), metric.name
    assert all(g is not None for g in grads)
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)
    assert max(float(np.max(np.abs(g.numpy()))) for g in grads) > 0


# (d) Round trip in a fresh process; (f) replicas. One subprocess each,
# started in the background when the module starts (the other checks run
# meanwhile) if any of their tests is selected.


class _Job:
    """A job of tests/distributed_jobs run in its own process group."""

    def __init__(self, script, args, directory):
        self.directory = directory
        self.script = script
        self.out = open(directory / "stdout.txt", "w")
        self.err = open(directory / "stderr.txt", "w")
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(cluster.SCRIPTS, script)] + args,
            env=cluster.env(),
            stdout=self.out,
            stderr=self.err,
            start_new_session=True,
        )

    def result(self, timeout=900):
        """The job's `RESULT` JSON line; raises with its stderr on failure."""
        self.process.wait(timeout=timeout)
        self.out.close()
        self.err.close()
        text = (self.directory / "stdout.txt").read_text()
        lines = [x for x in text.splitlines() if x.startswith("RESULT ")]
        if self.process.returncode != 0 or not lines:
            tail = (self.directory / "stderr.txt").read_text()[-3000:]
            raise RuntimeError(
                f"{self.script} failed ({self.process.returncode}):\n{tail}"
            )
        return json.loads(lines[-1][len("RESULT ") :])

    def stop(self):
        if self.process.poll() is None:
            cluster.kill(self.process)


def _save_every_case(directory):
    """Saves each case after one step; returns the in-process logs."""
    x, y = ref.data()
    np.savez(directory / "batch.npz", x=x, y=y)
    in_process, manifest = {}, {}
    for case in CASES:
        keras.backend.clear_session(free_memory=False)
        try:
            teacher, student = case.networks()
            model = compiled(case, teacher, student)
            model.train_step((x, y))
            path = str(directory / f"{case.name}.keras")
            model.save(path)
            # The loaded model draws from the seed state saved here.
            in_process[case.name] = logged(model, x, y)
        except Exception as error:  # reported by the case's own test
            in_process[case.name] = f"{type(error).__name__}: {error}"
            continue
        manifest[case.name] = path
    with open(directory / "manifest.json", "w") as f:
        json.dump(manifest, f)
    return in_process


@pytest.fixture(scope="module", autouse=True)
def _jobs(request, tmp_path_factory):
    selected = {
        getattr(item, "originalname", "") for item in request.session.items
    }
    jobs = {}
    if "test_two_replicas_equal_one_device" in selected:
        directory = tmp_path_factory.mktemp("conformance_replicas")
        jobs["replicas"] = _Job("conformance_mirrored.py", [], directory)
    if "test_round_trip" in selected:
        directory = tmp_path_factory.mktemp("conformance_round_trip")
        in_process = _save_every_case(directory)
        job = _Job("conformance_load.py", [str(directory)], directory)
        jobs["round_trip"] = (in_process, job)
    yield jobs
    for job in jobs.values():
        (job[1] if isinstance(job, tuple) else job).stop()


@pytest.fixture(scope="module")
def round_trips(_jobs):
    in_process, job = _jobs["round_trip"]
    return in_process, job.result()


@pytest.fixture(scope="module")
def replicas(_jobs):
    return _jobs["replicas"].result()


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_round_trip(case, round_trips):
    in_process, loaded = round_trips
    expected = in_process[case.name]
    assert not isinstance(expected, str), expected
    got = loaded[case.name]
    assert not isinstance(got, str), got
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_allclose(
            got[key], expected[key], rtol=1e-5, atol=1e-7, err_msg=key
        )


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_two_replicas_equal_one_device(case, replicas):
    result = replicas[case.name]
    assert "error" not in result, result.get("error")
    assert result["moved"] > 1e-3  # training changed the weights
    bound = case.replica_tolerance * max(1.0, result["moved"])
    assert result["max_weight_diff"] < bound, result
    np.testing.assert_allclose(
        result["loss_mirrored"],
        result["loss_one"],
        rtol=max(1e-5, case.replica_tolerance),
    )
