"""Strategies by name, MirroredStrategy equality with one device, and
bitwise determinism.

Cost: about 60 s on 2 CPU cores, mostly two subprocess jobs (the 2-replica
comparison, which must split the CPU before TensorFlow starts, and three
determinism runs in parallel).
"""

import json
import os
import re
import sys

import numpy as np
import pytest
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "distributed_jobs"))

import cluster  # noqa: E402

from keras_jacobian.distribute import determinism  # noqa: E402
from keras_jacobian.distribute import strategies  # noqa: E402

# Weights move by ~0.3 in these runs; 2 replicas must match one device to
# this bound (measured: 6e-8 to 1.2e-7, float32 round-off of the
# all-reduce). Every model is built with its default checks, inside the
# strategy's scope.
EQUALITY_TOLERANCE = 1e-6


def test_unknown_strategy_name():
    with pytest.raises(ValueError, match="must be one of"):
        strategies.get_strategy("mirror")


def test_default_and_one_device():
    assert strategies.get_strategy() is tf.distribute.get_strategy()
    one = strategies.get_strategy("one_device", devices="/cpu:0")
    assert isinstance(one, tf.distribute.OneDeviceStrategy)
    assert one.num_replicas_in_sync == 1
    assert strategies.is_chief(one)
    assert strategies.is_chief(tf.distribute.get_strategy())
    with pytest.raises(ValueError, match="exactly one device"):
        strategies.get_strategy("one_device", devices=["/cpu:0", "/cpu:1"])
    with pytest.raises(ValueError, match="only used by"):
        strategies.get_strategy("default", devices=["/cpu:0"])


def test_mirrored_on_given_devices():
    strategy = strategies.get_strategy("mirrored", devices=["/cpu:0"])
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 1
    with pytest.raises(ValueError, match="at least one device"):
        strategies.get_strategy("mirrored", devices=[])


@pytest.mark.parametrize(
    "tf_config, match",
    [
        (None, "needs the TF_CONFIG"),
        ("{not json", "must be JSON"),
        ('{"cluster": {}}', "must have a 'cluster'"),
        (
            '{"cluster": {"worker": ["127.0.0.1:1"]}, '
            '"task": {"type": "worker", "index": 3}}',
            "index within it",
        ),
        (
            '{"cluster": {"worker": ["127.0.0.1:1"]}, '
            '"task": {"type": "ps", "index": 0}}',
            "must name a job",
        ),
    ],
)
def test_multi_worker_needs_valid_tf_config(monkeypatch, tf_config, match):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=match):
        strategies.get_strategy("multi_worker")


def test_split_cpu_after_devices_exist():
    tf.constant(1.0)  # initialises the devices
    count = len(tf.config.list_logical_devices("CPU"))
    assert len(strategies.split_cpu(count)) == count
    with pytest.raises(ValueError, match="must run before TensorFlow"):
        strategies.split_cpu(count + 1)
    with pytest.raises(ValueError, match="integer >= 1"):
        strategies.split_cpu(0)


def test_enable_determinism_rejects_bad_seed():
    with pytest.raises(ValueError, match="integer >= 0"):
        determinism.enable_determinism(-1)


@pytest.mark.slow
def test_two_replicas_match_one_device():
    process = cluster.start("mirrored_equality.py", [])
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0
    line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT ") :])
    print("max |w_1 device - w_2 replicas|:")
    for case, values in result.items():
        print(f"  {case}: {values['max_weight_diff']:.2e}")
    batch_norm = result.pop("batch_norm_student")
    assert len(result) == 5
    for case, values in result.items():
        assert values["moved"] > 0.1, case  # training did change weights
        assert values["max_weight_diff"] < EQUALITY_TOLERANCE, case
        np.testing.assert_allclose(
            values["loss_mirrored"], values["loss_one"], rtol=1e-5
        )
    # Per-replica batch statistics differ from global ones: BatchNorm in
    # the student breaks equality (see docs/distributed.md).
    assert batch_norm["max_weight_diff"] > 10 * EQUALITY_TOLERANCE


@pytest.mark.slow
def test_documented_paths_with_defaults_on_two_replicas(tmp_path):
    """Defaults inside the scope: equal to one device, and nothing logged.

    A Distiller, a JacobianRegularizedModel and a cached teacher
    (`cache_teacher`), built and called with default arguments inside a
    MirroredStrategy over 2 logical CPUs. The construction's probe runs on
    every replica; TensorFlow's logger must stay silent (it warned about
    running `strategy.run` eagerly, once per probe).
    """
    stderr_path = tmp_path / "stderr.txt"
    process = cluster.start("default_scope_job.py", [], stderr_path=stderr_path)
    out, _ = process.communicate(timeout=300)
    stderr = stderr_path.read_text()
    assert process.returncode == 0, stderr[-3000:]
    line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT ") :])
    assert set(result) == {"distiller", "regularized", "cached_teacher"}
    for case, values in result.items():
        assert values["moved"] > 0.01, case  # training did change weights
        assert values["max_weight_diff"] < EQUALITY_TOLERANCE, case
    # Python loggers ("WARNING:tensorflow:..."), and warnings the library
    # raises; not TensorFlow's C++ start-up lines ("WARNING: All log
    # messages before absl::InitializeLog()...").
    logged = [
        x
        for x in stderr.splitlines()
        if re.match(r"(WARNING|ERROR):\w", x) or "keras_jacobian/" in x
    ]
    assert not logged, logged


@pytest.mark.slow
def test_empty_replica_matches_one_device_and_bad_labels_raise(tmp_path):
    """A last batch of 1 example on 2 replicas: one replica gets none.

    `evaluate` logged NaN for every distillation loss (a mean over no
    examples) and `fit` failed (Jacobians of an empty batch); now both
    log what one device logs, and train the same weights (the uneven
    step is weighted by each replica's share of the batch). The same job
    checks that out-of-range labels raise on 2 replicas, those of
    `target="label"` and those of the compiled loss.
    """
    stderr_path = tmp_path / "stderr.txt"
    process = cluster.start("uneven_batch_job.py", [], stderr_path=stderr_path)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, stderr_path.read_text()[-3000:]
    line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT ") :])
    errors = result.pop("bad_labels")
    loss_errors = result.pop("loss_labels")
    assert set(result) == {"distiller", "regularized"}
    for case, values in result.items():
        one, mirrored = values["evaluate_one"], values["evaluate_mirrored"]
        assert set(one) == set(mirrored), case
        for key in one:
            assert np.isfinite(mirrored[key]), (case, key)
            np.testing.assert_allclose(
                mirrored[key], one[key], rtol=1e-5, err_msg=f"{case} {key}"
            )
        one, mirrored = values["fit_one"], values["fit_mirrored"]
        assert set(one) == set(mirrored), case
        for key in one:
            assert np.all(np.isfinite(mirrored[key])), (case, key)
            np.testing.assert_allclose(
                mirrored[key], one[key], rtol=1e-5, err_msg=f"{case} {key}"
            )
        assert values["max_weight_diff"] < EQUALITY_TOLERANCE, case
    assert set(errors) == {"fit", "evaluate"}
    for method, message in errors.items():
        assert message is not None, method
        assert "[0, 3)" in message and "7" in message, message
    # The compiled loss: a ValueError, also when the replica that saw the
    # label is not the first; no update. The distiller's labels are
    # checked first for its target="label" term, before the loss.
    for name, start in (
        ("distiller", "ValueError: target='label'"),
        ("regularized", "ValueError: The compiled loss"),
    ):
        for method in ("fit", "evaluate"):
            message = loss_errors[f"{name}_{method}"]
            assert message is not None, (name, method)
            assert message.startswith(start), message
            assert "[0, 3)" in message and "from 7 to 7" in message, message
        assert loss_errors[f"{name}_unchanged"], name


@pytest.mark.slow
def test_determinism_two_runs_bitwise_equal(tmp_path):
    runs = [("1", "a"), ("1", "b"), ("2", "c")]
    processes = [
        cluster.start(
            "determinism_job.py", [seed, str(tmp_path / f"{name}.npz")]
        )
        for seed, name in runs
    ]
    assert cluster.wait_all(processes, timeout=300) == [0, 0, 0]
    a, b, c = (np.load(tmp_path / f"{name}.npz") for _, name in runs)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    # Another seed gives other weights: the comparison can fail.
    assert any(not np.array_equal(a[key], c[key]) for key in a)
    # As docs/distributed.md says: no XLA while op determinism is on.
    assert not a["jit_compile"]
