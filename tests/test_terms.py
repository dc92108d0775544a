"""Every term's value against an independent NumPy or plain-tape result."""

import types

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

import keras_jacobian as kj
from keras_jacobian import jacobians
from tests import tiny


def full_jacobians(model, x):
    """(batch, classes, D) input Jacobians with a plain tape."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = model(x, training=False)
    jac = tape.batch_jacobian(out, x)
    return jac.numpy().reshape(x.shape[0], out.shape[-1], -1)


def evaluate_terms(teacher, student, terms, x, y=None, **kwargs):
    kwargs.setdefault("supervised_loss_weight", 1.0)
    distiller = kj.Distiller(teacher, student, terms, **kwargs)
    distiller.compile()
    return distiller.evaluate(
        x, y, batch_size=len(x), verbose=0, return_dict=True
    )


def np_normalize(rows):
    norms = np.sqrt(np.sum(rows**2, axis=-1, keepdims=True))
    return np.where(norms > 0, rows / np.maximum(norms, 1e-30), 0.0)


def np_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class LogitsTest(parameterized.TestCase):
    @parameterized.named_parameters(("t1", 1.0), ("t4", 4.0), ("t10", 10.0))
    def test_kd_value_with_temperature_squared(self, temperature):
        teacher = tiny.conv_net(seed=0, name="t")
        student = tiny.conv_net(seed=10, name="s")
        x = tiny.images()
        logs = evaluate_terms(
            teacher,
            student,
            [kj.LogitsDistillation(temperature=temperature, loss="kd")],
            x,
        )
        p = np_softmax(teacher.predict(x, verbose=0) / temperature)
        q = np_softmax(student.predict(x, verbose=0) / temperature)
        expected = temperature**2 * np.mean(
            np.sum(p * (np.log(p) - np.log(q)), axis=-1)
        )
        np.testing.assert_allclose(
            logs["logits_distillation_loss"], expected, rtol=1e-4
        )

    def test_kd_is_zero_for_identical_networks(self):
        teacher = tiny.conv_net(seed=0, name="t")
        student = tiny.conv_net(seed=0, name="s")
        term = kj.LogitsDistillation(temperature=4.0, loss="kd")
        self.assertEqual((term.loss, term.temperature), ("kd", 4.0))
        logs = evaluate_terms(teacher, student, [term], tiny.images())
        self.assertAlmostEqual(logs["logits_distillation_loss"], 0.0, 6)

    def test_mse_sums_over_classes(self):
        teacher = tiny.conv_net(seed=0, name="t")
        student = tiny.conv_net(seed=10, name="s")
        x = tiny.images()
        logs = evaluate_terms(
            teacher, student, [kj.LogitsDistillation(loss="squared_logits")], x
        )
        diff = teacher.predict(x, verbose=0) - student.predict(x, verbose=0)
        expected = np.mean(np.sum(diff**2, axis=-1))
        np.testing.assert_allclose(
            logs["logits_distillation_loss"], expected, rtol=1e-5
        )

    def test_keras_terms_keep_their_keras_values(self):
        # Keras' LogitsDistillation with a KL name (no softmax, no T^2),
        # with Keras' mean squared error, and with a KLDivergence()
        # instance (Hinton's KD): converted, each gives the value that
        # Keras' own compute_loss gives on the same logits.
        teacher = tiny.conv_net(seed=0, name="t")
        student = tiny.conv_net(seed=10, name="s")
        x = tiny.images()
        t = teacher.predict(x, verbose=0)
        s = student.predict(x, verbose=0)
        for loss in ("kl_divergence", "mse", keras.losses.KLDivergence()):
            term = keras.distillation.LogitsDistillation(3.0, loss)
            theirs = float(term.compute_loss(t, s))
            ours = evaluate_terms(teacher, student, [term], x)
            np.testing.assert_allclose(
                ours["logits_distillation_loss"], theirs, rtol=1e-5
            )


class JacobianRowsTest(parameterized.TestCase):
    def test_rows_match_finite_differences_and_batch_jacobian(self):
        model = tiny.conv_net(dtype="float64", seed=3)
        x = tf.constant(tiny.images(3).astype("float64"))
        rng = np.random.default_rng(1)
        v = rng.normal(size=(3, 2, 5))
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            out = model(x)
        rows = jacobians.vjp_rows(tape, out, x, tf.constant(v)).numpy()
        one = jacobians.vjp_rows(tape, out, x, tf.constant(v[:, :1])).numpy()
        full = full_jacobians(model, x.numpy())
        expected = np.einsum("brk,bkd->brd", v, full)
        np.testing.assert_allclose(rows.reshape(3, 2, -1), expected, 1e-10)
        np.testing.assert_allclose(one[:, 0], rows[:, 0], rtol=1e-10)
        # Central finite differences on a few input coordinates.
        eps = 1e-6
        flat = x.numpy().reshape(3, -1)
        for d in (0, 17, 40, 63):
            step = np.zeros_like(flat)
            step[:, d] = eps
            plus = model((flat + step).reshape(x.shape), training=False).numpy()
            minus = model(
                (flat - step).reshape(x.shape), training=False
            ).numpy()
            fd = np.einsum("brk,bk->br", v, (plus - minus) / (2 * eps))
            np.testing.assert_allclose(
                rows.reshape(3, 2, -1)[:, :, d], fd, rtol=1e-6, atol=1e-9
            )

    def test_zero_rows_normalise_to_zero_without_nan(self):
        rows = tf.zeros((2, 1, 5))
        with tf.GradientTape() as tape:
            tape.watch(rows)
            out = jacobians.normalize_rows(rows)
            total = tf.reduce_sum(tf.square(out - 1.0))
        grad = tape.gradient(total, rows)
        self.assertTrue(np.all(out.numpy() == 0))
        self.assertTrue(np.all(np.isfinite(grad.numpy())))

    def test_unit_vectors_are_isotropic(self):
        v = jacobians.unit_vectors((20000, 5), seed=3).numpy()
        np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 1.0, 1e-5)
        second_moment = v.T @ v / len(v)
        np.testing.assert_allclose(second_moment, np.eye(5) / 5, atol=0.01)


class JacobianMatchingTest(parameterized.TestCase):
    def setUp(self):
        super().setUp()
        self.teacher = tiny.conv_net(seed=0, name="t")
        self.student = tiny.conv_net(seed=10, name="s")
        self.x = tiny.images(6)
        self.y = np.array([0, 1, 2, 3, 4, 0])
        self.jt = full_jacobians(self.teacher, self.x)
        self.js = full_jacobians(self.student, self.x)
        self.logits = self.teacher.predict(self.x, verbose=0)

    def value(self, term, y=None):
        logs = evaluate_terms(self.teacher, self.student, [term], self.x, y)
        return logs["jacobian_matching_loss"]

    def normalised_distance(self, classes):
        b = np.arange(len(self.x))[:, None]
        t = np_normalize(self.jt[b, classes])
        s = np_normalize(self.js[b, classes])
        return np.mean(np.mean(np.sum((t - s) ** 2, axis=-1), axis=-1))

    def test_teacher_top1(self):
        top1 = np.argmax(self.logits, axis=-1)[:, None]
        np.testing.assert_allclose(
            self.value(kj.JacobianMatching()),
            self.normalised_distance(top1),
            rtol=1e-4,
        )

    def test_label(self):
        labels = self.y[:, None]
        np.testing.assert_allclose(
            self.value(kj.JacobianMatching("label"), self.y),
            self.normalised_distance(labels),
            rtol=1e-4,
        )

    def test_label_one_hot(self):
        one_hot = np.eye(5)[self.y]
        np.testing.assert_allclose(
            self.value(kj.JacobianMatching("label"), one_hot),
            self.normalised_distance(self.y[:, None]),
            rtol=1e-4,
        )

    def test_top_k(self):
        top3 = np.argsort(-self.logits, axis=-1)[:, :3]
        np.testing.assert_allclose(
            self.value(kj.JacobianMatching("top_k", k=3)),
            self.normalised_distance(top3),
            rtol=1e-4,
        )

    def test_all_unnormalised_is_frobenius(self):
        expected = np.mean(np.sum((self.jt - self.js) ** 2, axis=(1, 2)))
        np.testing.assert_allclose(
            self.value(
                kj.JacobianMatching("all", estimator="exact", normalize=False)
            ),
            expected,
            rtol=1e-4,
        )

    def test_random_is_unbiased(self):
        exact = np.mean(np.sum((self.jt - self.js) ** 2, axis=(1, 2)))
        # 2,000 copies of the batch: each copy draws its own projection, so
        # the batch mean averages 2,000 one-projection estimates.
        copies = np.tile(self.x, (2000, 1, 1, 1))
        logs = evaluate_terms(
            self.teacher,
            self.student,
            [kj.JacobianMatching("random", normalize=False)],
            copies,
        )
        np.testing.assert_allclose(
            logs["jacobian_matching_loss"], exact, rtol=0.05
        )

    def test_random_projections_are_drawn_anew_each_step(self):
        distiller = kj.Distiller(
            self.teacher,
            self.student,
            [kj.JacobianMatching("random", normalize=False)],
            supervised_loss_weight=1.0,
        )
        distiller.compile()
        values = [
            distiller.evaluate(self.x, verbose=0, return_dict=True)[
                "jacobian_matching_loss"
            ]
            for _ in range(3)
        ]
        self.assertEqual(len(set(values)), 3)

    def test_alignment_value(self):
        temperature = 2.0
        term = kj.JacobianMatching(
            "teacher_top1",
            normalize=False,
            loss="alignment",
            temperature=temperature,
        )
        x = tf.constant(self.x)

        def prob_jacobians(model):
            with tf.GradientTape() as tape:
                tape.watch(x)
                p = tf.nn.softmax(model(x, training=False) / temperature)
            jac = tape.batch_jacobian(p, x).numpy()
            return jac.reshape(len(self.x), 5, -1), p.numpy()

        jt, _ = prob_jacobians(self.teacher)
        js, ps = prob_jacobians(self.student)
        top1 = np.argmax(self.logits, axis=-1)
        b = np.arange(len(self.x))
        # The proposition's -(grad p_T . grad p_S) / p_S, completed to a
        # square so that it is bounded below.
        squared = np.sum((jt[b, top1] - js[b, top1]) ** 2, axis=-1) / 2
        expected = np.mean(squared / np.maximum(ps[b, top1], 1e-4))
        np.testing.assert_allclose(self.value(term), expected, rtol=1e-4)

    def test_alignment_normalised_is_one_minus_cosine(self):
        term = kj.JacobianMatching("teacher_top1", loss="alignment")
        x = tf.constant(self.x)

        def rows(model):
            with tf.GradientTape() as tape:
                tape.watch(x)
                p = tf.nn.softmax(model(x, training=False))
            return tape.batch_jacobian(p, x).numpy().reshape(6, 5, -1)

        top1 = np.argmax(self.logits, axis=-1)
        b = np.arange(6)
        t = np_normalize(rows(self.teacher)[b, top1])
        s = np_normalize(rows(self.student)[b, top1])
        expected = np.mean(1.0 - np.sum(t * s, axis=-1))
        np.testing.assert_allclose(self.value(term), expected, rtol=1e-4)


def test_logits_distillation_keras_names_keep_keras_meaning():
    t = np.array([[2.0, -1.0, 0.5], [0.3, 0.2, -2.0]], "float32")
    s = np.array([[0.1, 0.3, -0.2], [1.0, -0.5, 0.4]], "float32")
    temperature = 3.0

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def keras_kl(a, b):
        # keras.losses.kl_divergence clips both to [1e-7, 1].
        a, b = np.clip(a, 1e-7, 1), np.clip(b, 1e-7, 1)
        return np.sum(a * np.log(a / b), axis=-1)

    p, q = softmax(t / temperature), softmax(s / temperature)
    kd = temperature**2 * np.sum(p * (np.log(p) - np.log(q)), axis=-1)
    cases = [
        ("kl_divergence", keras_kl(t / temperature, s / temperature)),
        ("kld", keras_kl(t / temperature, s / temperature)),
        ("mean_squared_error", np.mean(((t - s) / temperature) ** 2, -1)),
        ("mse", np.mean(((t - s) / temperature) ** 2, -1)),
        (keras.losses.KLDivergence(), kd),
        ("kd", kd),
        ("squared_logits", np.sum((t - s) ** 2, axis=-1)),
    ]
    for loss, expected in cases:
        term = kj.LogitsDistillation(temperature=temperature, loss=loss)
        ctx = types.SimpleNamespace(outputs={"output": tf.constant(s)})
        value = term.per_example_loss({"logits": tf.constant(t)}, ctx)
        np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5)
        np.testing.assert_allclose(
            float(term.compute_loss(t, s)), np.mean(expected), rtol=1e-5
        )
