"""Proposition 1 of Srinivas & Fleuret (2018), checked numerically.

`E||T(x+xi) - S(x+xi)||^2 ~= ||T(x) - S(x)||^2 + sigma^2 ||J_T - J_S||_F^2`.
"""

import numpy as np
import pytest

import keras_jacobian as kj
from tests import tiny


def evaluate(teacher, student, terms, x):
    distiller = kj.Distiller(
        teacher, student, terms, seed=7, supervised_loss_weight=1.0
    )
    distiller.compile()
    return distiller.evaluate(x, batch_size=len(x), verbose=0, return_dict=True)


def test_linear_jacobian_term_is_weight_distance():
    rng = np.random.default_rng(0)
    wt, ws = rng.normal(size=(2, 6, 4))
    bt, bs = rng.normal(size=(2, 4))
    teacher = tiny.linear_net(wt, bt, name="t")
    student = tiny.linear_net(ws, bs, name="s")
    x = rng.normal(size=(5, 6))
    logs = evaluate(
        teacher,
        student,
        [kj.JacobianMatching("all", estimator="exact", normalize=False)],
        x,
    )
    np.testing.assert_allclose(
        logs["jacobian_matching_loss"], np.sum((wt - ws) ** 2), rtol=1e-6
    )


def test_linear_noise_proposition_holds():
    rng = np.random.default_rng(1)
    wt, ws = rng.normal(size=(2, 3, 2))
    bt, bs = rng.normal(size=(2, 2))
    teacher = tiny.linear_net(wt, bt, name="t")
    student = tiny.linear_net(ws, bs, name="s")
    x = rng.normal(size=(4, 3))
    sigma = 0.7
    logs = evaluate(
        teacher,
        student,
        [
            kj.LogitsDistillation(loss="squared_logits"),
            kj.JacobianMatching("all", estimator="exact", normalize=False),
            kj.NoiseDistillation(sigma, num_samples=200_000),
        ],
        x,
    )
    # Closed form, for a linear map: E||d + dW^T xi||^2 = ||d||^2 +
    # sigma^2 ||dW||_F^2, exactly.
    d = x @ (wt - ws) + (bt - bs)
    closed = np.mean(np.sum(d**2, axis=-1)) + sigma**2 * np.sum((wt - ws) ** 2)
    expansion = (
        logs["logits_distillation_loss"]
        + sigma**2 * logs["jacobian_matching_loss"]
    )
    np.testing.assert_allclose(expansion, closed, rtol=1e-6)
    np.testing.assert_allclose(
        logs["noise_distillation_loss"], closed, rtol=0.01
    )


@pytest.mark.slow
def test_nonlinear_noise_matches_first_order_as_sigma_shrinks():
    teacher = tiny.mlp(seed=0, name="t")
    student = tiny.mlp(seed=10, name="s")
    x = np.array([[0.3, -0.2, 0.5]])
    # Shift the student's output bias so both networks agree at x: the
    # first-order cross term then vanishes and the Monte Carlo error is
    # small relative to the sigma^2 term being checked.
    gap = teacher.predict(x, verbose=0) - student.predict(x, verbose=0)
    kernel, bias = student.get_layer("logits").get_weights()
    student.get_layer("logits").set_weights([kernel, bias + gap[0]])
    errors = []
    for sigma in (1.0, 0.5, 0.05):
        logs = evaluate(
            teacher,
            student,
            [
                kj.LogitsDistillation(loss="squared_logits"),
                kj.JacobianMatching("all", estimator="exact", normalize=False),
                kj.NoiseDistillation(sigma, num_samples=100_000),
            ],
            x,
        )
        self_check = logs["logits_distillation_loss"]
        assert self_check < 1e-12
        first_order = sigma**2 * logs["jacobian_matching_loss"]
        errors.append(
            abs(logs["noise_distillation_loss"] - first_order) / first_order
        )
    # The relative error of the first-order expansion is O(sigma^2): large
    # at sigma = 1, down to the Monte Carlo error (~0.5%) at sigma = 0.05.
    assert errors[-1] < 0.02, errors
    assert errors[0] > 4 * errors[2], errors
