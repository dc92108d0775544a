"""Tiny networks, data and the conformance test's reference values.

Each reference computes the per-example value a term should have, in
NumPy from plain `tf.GradientTape` vector-Jacobian products of the
networks, following the documented definition of the term, never with
the library's helpers. Signature of every reference:
`reference(teacher, student, model, x, y, draws) -> (batch,) float64`,
where `model` is the model under test (read only for its learned
adapter) and `draws` the random draws of the step (or None).

Networks: 6x6x2 inputs, two tanh convolutions, 3 classes, batch 4;
weights are set from a seeded NumPy generator, so every process and
every strategy starts from the same values.
"""

import keras
import numpy as np
import tensorflow as tf

INPUT_SHAPE = (6, 6, 2)
CLASSES = 3
BATCH = 4
TEACHER_SEED = 1
STUDENT_SEED = 2
# Layers read by the feature and attention terms.
PAIR = ("t_conv1", "s_conv1")
# Floor of the student's probability in the alignment loss (documented).
PROBABILITY_FLOOR = 1e-4


def net(prefix, seed, filters=3, strides=1):
    """A tanh conv net `prefix_conv1 -> prefix_conv2 -> prefix_logits`."""
    inputs = keras.Input(INPUT_SHAPE)
    h = keras.layers.Conv2D(
        filters,
        3,
        strides=strides,
        padding="same",
        activation="tanh",
        name=f"{prefix}_conv1",
    )(inputs)
    h = keras.layers.Conv2D(
        3,
        3,
        strides=2,
        padding="same",
        activation="tanh",
        name=f"{prefix}_conv2",
    )(h)
    h = keras.layers.Flatten(name=f"{prefix}_flat")(h)
    outputs = keras.layers.Dense(CLASSES, name=f"{prefix}_logits")(h)
    model = keras.Model(inputs, outputs, name=f"{prefix}_net")
    rng = np.random.default_rng(seed)
    model.set_weights(
        [rng.normal(scale=0.3, size=w.shape) for w in model.get_weights()]
    )
    return model


def data(n=BATCH, seed=0):
    """Inputs `(n, 6, 6, 2)` in the current floatx and int labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n,) + INPUT_SHAPE).astype(keras.config.floatx())
    y = rng.integers(0, CLASSES, size=(n,)).astype("int32")
    return x, y


# Plain-tape Jacobians and NumPy helpers.


def _np(t):
    return np.asarray(t, dtype="float64")


def rows(fn, x, cotangents):
    """`(batch, rows, D)` rows `v_r^T d fn(x) / dx`, one tape pass each.

    `fn(x)` is flattened to `(batch, K)` and `cotangents` is
    `(batch, rows, K)`; the examples of these networks are independent, so
    one backward pass of the batch gives every example's row.
    """
    x = tf.convert_to_tensor(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        out = fn(x)
        out = tf.reshape(out, [tf.shape(out)[0], -1])
    result = [
        tape.gradient(out, x, output_gradients=tf.cast(v, out.dtype))
        for v in np.moveaxis(np.asarray(cotangents), 1, 0)
    ]
    return np.stack([_np(r).reshape(len(r), -1) for r in result], axis=1)


def jacobian(fn, x, outputs=CLASSES):
    """`(batch, outputs, D)` full Jacobian of `fn(x)`, plain tape."""
    eye = np.eye(outputs)
    return rows(fn, x, np.tile(eye[None], (len(x), 1, 1)))


def logits(model, x):
    return _np(model(x, training=False))


def features(model, layer, x):
    sub = keras.Model(model.input, model.get_layer(layer).output)
    return sub(x, training=False)


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_unit(vectors):
    norms = np.sqrt(np.sum(vectors**2, axis=-1, keepdims=True))
    return vectors / np.maximum(norms, 1e-30)


def probabilities(model, temperature):
    return lambda x: tf.nn.softmax(model(x, training=False) / temperature)


def attention_map(model, layer):
    """`x -> mean_c A_c^2`, flattened: the spatial attention map."""
    sub = keras.Model(model.input, model.get_layer(layer).output)

    def fn(x):
        a = tf.cast(sub(x, training=False), "float64")
        return tf.reshape(tf.reduce_mean(a**2, axis=-1), [tf.shape(x)[0], -1])

    return fn


# References, one per family.


def selected(target, teacher_logits, y, k, draws):
    """`(batch, rows, classes)` output-space vectors picking the rows."""
    eye = np.eye(CLASSES)
    if target == "teacher_top1":
        return eye[np.argmax(teacher_logits, axis=-1)][:, None]
    if target == "label":
        return eye[np.asarray(y).reshape(-1)][:, None]
    if target == "top_k":
        return eye[np.argsort(-teacher_logits, axis=-1)[:, :k]]
    if target == "all":
        return np.tile(eye[None], (len(teacher_logits), 1, 1))
    return _np(draws["cotangents"])


def jacobian_matching(target, normalize, loss, k, temperature, weights=None):
    """`JacobianMatching`: rows `v^T J` of logits or probabilities.

    `weights`: the sample weights of the batch mean of `normalize="teacher"`.
    """

    def reference(teacher, student, model, x, y, draws):
        if loss == "squared":
            jt, js = jacobian(teacher, x), jacobian(student, x)
        else:
            jt = jacobian(probabilities(teacher, temperature), x)
            js = jacobian(probabilities(student, temperature), x)
        v = selected(target, logits(teacher, x), y, k, draws)
        t = np.einsum("brc,bcd->brd", v, jt)
        s = np.einsum("brc,bcd->brd", v, js)
        if normalize == "teacher":
            # Relative to the batch mean of the teacher's squared norm of
            # the same rows (estimated like the distance for projections).
            # The teacher's mean squared row norm (for projections, the
            # mean of ||u^T J_T||^2, an estimate of ||J_T||^2 / K).
            norms = np.sum(t**2, axis=(1, 2)) / v.shape[1]
            norm = np.average(norms, weights=weights)
            raw = jacobian_matching(target, False, loss, k, temperature)
            return raw(teacher, student, model, x, y, draws) / norm
        if normalize:
            t, s = np_unit(t), np_unit(s)
        if loss == "alignment":
            if normalize:
                return np.mean(1.0 - np.sum(t * s, axis=-1), axis=-1)
            # The proposition's cross term -t.s / p completed to a square,
            # so that the teacher is the minimum.
            p = np_softmax(logits(student, x) / temperature)
            p_selected = np.maximum(
                np.sum(v * p[:, None], axis=-1), PROBABILITY_FLOOR
            )
            squared = np.sum((t - s) ** 2, axis=-1)
            return np.sum(squared / (2.0 * p_selected), axis=-1)
        distances = np.sum((t - s) ** 2, axis=-1)
        if normalize:
            return np.mean(distances, axis=-1)
        scale = CLASSES / v.shape[1] if target == "random" else 1.0
        return scale * np.sum(distances, axis=-1)

    return reference


def frobenius(teacher, student, model, x, y, draws):
    """`||J_T - J_S||_F^2`: what every estimator of the raw term targets."""
    return np.sum((jacobian(teacher, x) - jacobian(student, x)) ** 2, (1, 2))


def relative_frobenius(teacher, student, model, x, y, draws):
    """`||J_T - J_S||_F^2 / (mean_batch ||J_T||_F^2 / K)`: every
    estimator's target under `normalize="teacher"`."""
    norm = np.mean(np.sum(jacobian(teacher, x) ** 2, (1, 2))) / CLASSES
    return frobenius(teacher, student, model, x, y, draws) / norm


def knowledge_distillation(temperature):
    """`T^2 KL(softmax(t / T) || softmax(s / T))`."""

    def reference(teacher, student, model, x, y, draws):
        p = np_softmax(logits(teacher, x) / temperature)
        q = np_softmax(logits(student, x) / temperature)
        kl = np.sum(p * (np.log(p) - np.log(q)), axis=-1)
        return temperature**2 * kl

    return reference


def squared_logits(teacher, student, model, x, y, draws):
    return np.sum((logits(teacher, x) - logits(student, x)) ** 2, axis=-1)


def noise(num_samples):
    """Mean over the drawn noisy copies of `||T(x + xi) - S(x + xi)||^2`."""

    def reference(teacher, student, model, x, y, draws):
        noisy = draws["noisy_inputs"]
        errors = squared_logits(teacher, student, model, noisy, None, None)
        return np.mean(errors.reshape(num_samples, len(x)), axis=0)

    return reference


def feature_mse(teacher, student, model, x, y, draws):
    """Mean squared error of the features, through the learned adapter."""
    t = _np(features(teacher, PAIR[0], x))
    s = _np(features(student, PAIR[1], x))
    adapter = model.distillation_losses[0].adapter_layer
    if adapter is not None:
        kernel, bias = (_np(w) for w in adapter.get_weights())
        s = s @ kernel[0, 0] + bias
    return np.mean((t - s).reshape(len(x), -1) ** 2, axis=-1)


def attention_transfer(teacher, student, model, x, y, draws):
    t = np_unit(_np(attention_map(teacher, PAIR[0])(x)))
    s = np_unit(_np(attention_map(student, PAIR[1])(x)))
    return np.sum((t - s) ** 2, axis=-1)


def attention_jacobian(normalize):
    """Rows of the maps' entry where the teacher's map peaks."""

    def reference(teacher, student, model, x, y, draws):
        t_map = attention_map(teacher, PAIR[0])
        positions = np.argmax(_np(t_map(x)), axis=-1)
        one_hot = np.eye(int(np.prod(INPUT_SHAPE[:2])))[positions][:, None]
        t = rows(t_map, x, one_hot)[:, 0]
        s = rows(attention_map(student, PAIR[1]), x, one_hot)[:, 0]
        if normalize:
            t, s = np_unit(t), np_unit(s)
        return np.sum((t - s) ** 2, axis=-1)

    return reference


def penalty(teacher, student, model, x, y, draws):
    """`||J_S||_F^2` of the regularised model."""
    return np.sum(jacobian(student, x) ** 2, axis=(1, 2))
