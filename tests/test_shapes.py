"""Inputs of unknown spatial size: fully convolutional networks.

Every value is checked against full Jacobians from a plain
`tf.GradientTape` and NumPy, on batches whose height and width are
unknown when the step is traced (a dataset of images of varying size).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_jacobian as kj
from keras_jacobian import jacobians
from keras_jacobian import probes

ESTIMATORS = ("exact", "vjp") + jacobians.INPUT_ESTIMATORS
SIZES = ((8, 8), (6, 10))

# Generator data sets (unknown sizes) end an epoch by running out, which
# Keras warns about.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Your input ran out of data:UserWarning"
)


def fcn(seed, strides=2, prefix="", classes=3, dtype="float64"):
    """Conv, strided conv, global average pooling, dense; any image size."""
    inputs = keras.Input((None, None, 1), dtype=dtype)
    h = inputs
    for i, stride in enumerate((1, strides)):
        h = keras.layers.Conv2D(
            3,
            3,
            strides=stride,
            padding="same",
            activation="tanh",
            kernel_initializer=keras.initializers.GlorotUniform(seed + i),
            bias_initializer=keras.initializers.RandomNormal(seed=seed + 5),
            dtype=dtype,
            name=f"{prefix}conv{i + 1}",
        )(h)
    h = keras.layers.GlobalAveragePooling2D(dtype=dtype)(h)
    outputs = keras.layers.Dense(
        classes,
        kernel_initializer=keras.initializers.GlorotUniform(seed + 7),
        dtype=dtype,
    )(h)
    return keras.Model(inputs, outputs)


def batch(shape, n=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n,) + shape + (1,))


def unknown_sizes(batches):
    """A dataset whose element shapes are unknown but for the channels."""
    image = tf.TensorSpec((None, None, None, 1), "float64")
    spec = image
    if isinstance(batches[0], dict):
        spec = {key: image for key in batches[0]}
    elif isinstance(batches[0], tuple):
        spec = (image, tf.TensorSpec((None, 3), "float64"))
    return tf.data.Dataset.from_generator(
        lambda: iter(batches), output_signature=spec
    )


def full_jacobians(model, x):
    """(batch, classes, D) input Jacobians with a plain tape."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = model(x, training=False)
    jac = tape.batch_jacobian(out, x).numpy()
    return jac.reshape(x.shape[0], out.shape[-1], -1)


def evaluate(model, x):
    """The logs of one evaluation step traced with unknown sizes."""
    if not model.compiled:
        model.compile(optimizer="sgd")
    state = model.seed_generator.state.numpy()
    logs = model.evaluate(unknown_sizes([x]), verbose=0, return_dict=True)
    model.seed_generator.state.assign(state)
    return logs


def expected_matching(estimator, teacher, student, x, targets):
    """The term's value from full Jacobians and the term's own draws."""
    diff = full_jacobians(teacher, x) - full_jacobians(student, x)
    n, classes, size = diff.shape
    if estimator == "exact":
        values = np.sum(diff**2, axis=(1, 2))
    elif estimator == "vjp":
        u = targets["cotangents"].numpy()
        rows = np.einsum("brk,bkd->brd", u, diff)
        values = classes / u.shape[1] * np.sum(rows**2, axis=(1, 2))
    else:
        v = targets["directions"].numpy().reshape(n, -1, size)
        moved = np.einsum("bkd,brd->brk", diff, v)
        values = size * np.mean(np.sum(moved**2, axis=-1), axis=-1)
    return np.mean(values)


# The term leaves the last bias untrained (Keras warns about it).
@pytest.mark.filterwarnings("ignore:Gradients do not exist:UserWarning")
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_jacobian_matching_trains_and_is_exact_at_unknown_sizes(estimator):
    teacher, student = fcn(0), fcn(10)
    term = kj.JacobianMatching(
        "all",
        estimator=estimator,
        normalize=False,
        num_projections=None if estimator == "exact" else 2,
    )
    distiller = kj.Distiller(
        teacher, student, [term], seed=1, supervised_loss_weight=1.0
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.01))
    before = student.get_weights()
    history = distiller.fit(
        unknown_sizes([batch(s, seed=i) for i, s in enumerate(SIZES)]),
        verbose=0,
    )
    assert np.all(np.isfinite(history.history["loss"]))
    assert any(
        not np.allclose(a, b) for a, b in zip(before, student.get_weights())
    )
    for shape in SIZES:
        x = batch(shape, seed=5)
        logs = evaluate(distiller, x)
        targets = distiller.teacher_targets(tf.constant(x))[0]
        expected = expected_matching(estimator, teacher, student, x, targets)
        # One-sided differences: error ~2e-4 relative at the float32 step
        # of the global dtype policy.
        rtol = 1e-3 if estimator == "forward_difference" else 1e-4
        np.testing.assert_allclose(
            logs["jacobian_matching_loss"], expected, rtol=rtol
        )


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_regularized_model_is_exact_at_unknown_sizes(estimator):
    model = fcn(0)
    robust = kj.JacobianRegularizedModel(
        model, weight=0.1, target="all", estimator=estimator, seed=2
    )
    robust.compile(optimizer="sgd", loss="mse")
    labels = np.zeros((3, 3))
    data = [(batch(s, seed=i), labels) for i, s in enumerate(SIZES)]
    history = robust.fit(unknown_sizes(data), verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    for shape in SIZES:
        x = batch(shape, seed=6)
        state = robust.seed_generator.state.numpy()
        logs = robust.evaluate(
            unknown_sizes([(x, labels)]), verbose=0, return_dict=True
        )
        robust.seed_generator.state.assign(state)
        jac = full_jacobians(model, x)
        n, classes, size = jac.shape
        if estimator == "exact":
            expected = np.sum(jac**2, axis=(1, 2))
        elif estimator == "vjp":
            u = kj.jacobians.unit_vectors(
                (n, 1, classes), robust.seed_generator
            ).numpy()
            rows = np.einsum("brk,bkd->brd", u, jac)
            expected = classes * np.sum(rows**2, axis=(1, 2))
        else:
            v = jacobians.input_directions(
                tf.constant(x), 1, robust.seed_generator
            ).numpy()
            v = v.reshape(1, n, size)
            moved = np.einsum("bkd,rbd->rbk", jac, v)
            expected = size * np.mean(np.sum(moved**2, axis=-1), axis=0)
        rtol = 1e-3 if estimator == "forward_difference" else 1e-4
        np.testing.assert_allclose(
            logs["jacobian_penalty"], np.mean(expected), rtol=rtol
        )


def block_sum(rows, factor):
    """Sums `factor x factor` blocks of `(..., H, W, C)` rows."""
    *lead, h, w, c = rows.shape
    blocks = rows.reshape(*lead, h // factor, factor, w // factor, factor, c)
    return blocks.sum(axis=(-4, -2))


@pytest.mark.parametrize("normalize", [False, True])
def test_teacher_at_twice_the_resolution_with_unknown_sizes(normalize):
    teacher, student = fcn(0), fcn(10)
    term = kj.JacobianMatching("all", estimator="exact", normalize=normalize)
    distiller = kj.Distiller(
        teacher, student, [term], supervised_loss_weight=1.0
    )
    for h, w in SIZES:
        xs = batch((h, w), seed=3)
        # The teacher sees the same images, upsampled by 2.
        xt = np.repeat(np.repeat(xs, 2, axis=1), 2, axis=2)
        logs = evaluate(distiller, {"student": xs, "teacher": xt})
        t = full_jacobians(teacher, xt).reshape(3, 3, 2 * h, 2 * w, 1)
        t = block_sum(t, 2).reshape(3, 3, -1)
        s = full_jacobians(student, xs)
        if normalize:
            t /= np.linalg.norm(t, axis=-1, keepdims=True)
            s /= np.linalg.norm(s, axis=-1, keepdims=True)
            expected = np.mean(np.sum((t - s) ** 2, axis=-1))
        else:
            expected = np.mean(np.sum((t - s) ** 2, axis=(1, 2)))
        np.testing.assert_allclose(
            logs["jacobian_matching_loss"], expected, rtol=1e-4
        )


def test_input_directions_refuse_two_resolutions_when_the_step_runs():
    term = kj.JacobianMatching("all", estimator="forward_difference")
    distiller = kj.Distiller(
        fcn(0), fcn(10), [term], supervised_loss_weight=1.0
    )
    xs = batch((8, 8))
    xt = batch((16, 16))
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="same input directions"
    ):
        evaluate(distiller, {"student": xs, "teacher": xt})


def attention_map(model, layer, x):
    features = keras.Model(model.input, model.get_layer(layer).output)
    return np.mean(features(x).numpy() ** 2, axis=-1)


def pool(maps, factor):
    n, h, w = maps.shape
    return maps.reshape(n, h // factor, factor, w // factor, factor).mean(
        axis=(2, 4)
    )


def unit(rows):
    rows = rows.reshape(len(rows), -1)
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def test_attention_transfer_resizes_maps_of_unknown_size():
    # The teacher's map is twice the student's: pooled to the student's.
    teacher = fcn(0, strides=2, prefix="t_")
    student = fcn(10, strides=4, prefix="s_")
    term = kj.AttentionTransfer([("t_conv2", "s_conv2")])
    distiller = kj.Distiller(
        teacher, student, [term], supervised_loss_weight=1.0
    )
    for shape in SIZES[:1] + ((12, 16),):
        x = batch(shape, seed=4)
        logs = evaluate(distiller, x)
        t = unit(pool(attention_map(teacher, "t_conv2", x), 2))
        s = unit(attention_map(student, "s_conv2", x))
        np.testing.assert_allclose(
            logs["attention_transfer_loss"],
            np.mean(np.sum((t - s) ** 2, axis=-1)),
            rtol=1e-4,
        )


def map_rows(model, layer, x, factor, positions=None):
    """Input gradients of the (pooled) attention map's largest entries."""
    features = keras.Model(model.input, model.get_layer(layer).output)
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        maps = tf.reduce_mean(tf.square(features(x)), axis=-1)
        n, h, w = maps.shape
        maps = tf.reshape(maps, (n, h // factor, factor, w // factor, factor))
        flat = tf.reshape(tf.reduce_mean(maps, axis=(2, 4)), (n, -1))
        if positions is None:
            positions = np.argmax(flat.numpy(), axis=-1)
        picked = tf.gather(flat, positions, batch_dims=1)
    return tape.gradient(picked, x).numpy(), positions


def test_attention_jacobian_matching_with_maps_of_unknown_size():
    teacher = fcn(0, strides=2, prefix="t_")
    student = fcn(10, strides=4, prefix="s_")
    term = kj.AttentionJacobianMatching([("t_conv2", "s_conv2")])
    distiller = kj.Distiller(
        teacher, student, [term], supervised_loss_weight=1.0
    )
    for shape in SIZES[:1] + ((12, 16),):
        x = batch(shape, seed=4)
        logs = evaluate(distiller, x)
        t, positions = map_rows(teacher, "t_conv2", x, 2)
        s, _ = map_rows(student, "s_conv2", x, 1, positions)
        np.testing.assert_allclose(
            logs["attention_jacobian_matching_loss"],
            np.mean(np.sum((unit(t) - unit(s)) ** 2, axis=-1)),
            rtol=1e-4,
        )


def test_feature_distillation_resizes_features_of_unknown_size():
    teacher = fcn(0, strides=2, prefix="t_")
    student = fcn(10, strides=4, prefix="s_")
    term = kj.FeatureDistillation(
        teacher_layer_name="t_conv2", student_layer_name="s_conv2"
    )
    distiller = kj.Distiller(
        teacher, student, [term], supervised_loss_weight=1.0
    )
    x = batch((12, 16), seed=4)
    logs = evaluate(distiller, x)
    t = keras.Model(teacher.input, teacher.get_layer("t_conv2").output)(x)
    s = keras.Model(student.input, student.get_layer("s_conv2").output)(x)
    n, h, w, c = t.shape
    t = t.numpy().reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    np.testing.assert_allclose(
        logs["feature_distillation_loss"],
        np.mean((t - s.numpy()) ** 2),
        rtol=1e-4,
    )


def test_caching_refuses_maps_resized_to_an_unknown_student_size():
    term = kj.AttentionTransfer([("t_conv2", "s_conv2")])
    distiller = kj.Distiller(
        fcn(0, prefix="t_"),
        fcn(10, strides=4, prefix="s_"),
        [term],
        supervised_loss_weight=1.0,
    )
    with pytest.raises(ValueError, match="unknown until the student runs"):
        distiller.teacher_targets(tf.constant(batch((8, 8))))


def valid_net(kernel):
    inputs = keras.Input((None, None, 2))
    h = keras.layers.Conv2D(2, 7, activation="tanh")(inputs)
    h = keras.layers.MaxPooling2D(4)(h)
    h = keras.layers.Conv2D(2, kernel, activation="tanh")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def test_probe_size_fits_the_network():
    # At 32 the second valid convolution would see a 6x6 map.
    assert probes.probe_shape(valid_net(7), (None, None, 2), "x") == (
        64,
        64,
        2,
    )
    assert probes.probe_shape(valid_net(3), (None, 40, 2), "x") == (
        32,
        40,
        2,
    )
    kj.Distiller(
        valid_net(7),
        valid_net(7),
        [kj.JacobianMatching()],
        supervised_loss_weight=1.0,
    )


def test_probe_refuses_a_network_no_probe_size_fits():
    with pytest.raises(ValueError, match="check_differentiable=False"):
        kj.Distiller(
            valid_net(70),
            valid_net(3),
            [kj.JacobianMatching()],
            supervised_loss_weight=1.0,
        )


@pytest.mark.parametrize("estimator", jacobians.INPUT_ESTIMATORS)
def test_regularized_float64_model_with_input_directions(estimator):
    model = fcn(0)
    robust = kj.JacobianRegularizedModel(
        model, target="all", estimator=estimator
    )
    robust.compile(optimizer="sgd", loss="mse")
    logs = robust.evaluate(
        batch((8, 8)), np.zeros((3, 3)), verbose=0, return_dict=True
    )
    assert logs["jacobian_penalty"] > 0


# Per-pixel outputs (segmentation): `(batch, H, W, classes)`.


def seg(seed, size=None, classes=3, dtype="float64"):
    """Per-pixel logits: conv, then a 1x1 conv to the classes."""
    inputs = keras.Input((size, size, 1), dtype=dtype)
    h = keras.layers.Conv2D(
        3,
        3,
        padding="same",
        activation="tanh",
        kernel_initializer=keras.initializers.GlorotUniform(seed),
        bias_initializer=keras.initializers.RandomNormal(seed=seed + 1),
        dtype=dtype,
        name="features",
    )(inputs)
    outputs = keras.layers.Conv2D(
        classes,
        1,
        kernel_initializer=keras.initializers.GlorotUniform(seed + 2),
        bias_initializer=keras.initializers.RandomNormal(seed=seed + 3),
        dtype=dtype,
    )(h)
    return keras.Model(inputs, outputs)


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("loss", ["kd", "squared_logits"])
def test_logits_distillation_averages_pixels_per_example(loss):
    # Batch 4 and width 4: per-pixel losses broadcast against the sample
    # weights along the width without the per-example mean.
    teacher, student = seg(0, size=4), seg(10, size=4)
    term = kj.LogitsDistillation(temperature=2.0, loss=loss)
    distiller = kj.Distiller(
        teacher, student, [term], supervised_loss_weight=1.0
    )
    distiller.compile()
    x = batch((4, 4), n=4)
    weights = np.array([1.0, 0.0, 2.0, 0.5])
    # (Keras drops sample weights given without labels.)
    logs = distiller.evaluate(
        x, np.zeros(4), sample_weight=weights, verbose=0, return_dict=True
    )
    t, s = teacher(x).numpy(), student(x).numpy()
    if loss == "kd":
        p, q = np_softmax(t / 2.0), np_softmax(s / 2.0)
        pixels = 4.0 * np.sum(p * (np.log(p) - np.log(q)), axis=-1)
    else:
        pixels = np.sum((t - s) ** 2, axis=-1)
    expected = np.mean(weights * pixels.mean(axis=(1, 2)))
    np.testing.assert_allclose(
        logs["logits_distillation_loss"], expected, rtol=1e-5
    )


def test_noise_distillation_averages_pixels_per_example():
    teacher, student = seg(0, size=4), seg(10, size=4)
    term = kj.NoiseDistillation(0.1, num_samples=2)
    distiller = kj.Distiller(
        teacher, student, [term], seed=3, supervised_loss_weight=1.0
    )
    distiller.compile()
    x = batch((4, 4), n=4)
    weights = np.array([1.0, 0.0, 2.0, 0.5])
    state = distiller.seed_generator.state.numpy()
    # (Keras drops sample weights given without labels.)
    logs = distiller.evaluate(
        x, np.zeros(4), sample_weight=weights, verbose=0, return_dict=True
    )
    distiller.seed_generator.state.assign(state)
    targets = distiller.teacher_targets(tf.constant(x))[0]
    noisy = targets["noisy_inputs"].numpy()
    errors = np.sum((teacher(noisy).numpy() - student(noisy).numpy()) ** 2, -1)
    per_example = errors.mean(axis=(1, 2)).reshape(2, 4).mean(axis=0)
    np.testing.assert_allclose(
        logs["noise_distillation_loss"],
        np.mean(weights * per_example),
        rtol=1e-5,
    )


def full_dense_jacobians(model, x):
    """(batch, H * W * classes, D) input Jacobians with a plain tape."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = model(x, training=False)
    jac = tape.batch_jacobian(out, x).numpy()
    return jac.reshape(x.shape[0], int(np.prod(out.shape[1:])), -1)


def class_masks(indices, classes):
    """One-hot `(batch, H, W)` class indices, flattened to `(batch, K)`."""
    return np.eye(classes)[indices].reshape(len(indices), -1)


def expected_dense(case, teacher, student, x, labels, targets):
    jt = full_dense_jacobians(teacher, x)
    js = full_dense_jacobians(student, x)
    n, size, d = jt.shape
    logits = teacher(x).numpy()
    if case in ("teacher_top1", "label", "top_k"):
        if case == "teacher_top1":
            picks = [np.argmax(logits, axis=-1)]
        elif case == "label":
            picks = [labels]
        else:
            order = np.argsort(-logits, axis=-1)
            picks = [order[..., 0], order[..., 1]]
        # One row per pick: the sum over pixels of the picked logits.
        v = np.stack([class_masks(p, 3) for p in picks], axis=1)
        t = unit3(np.einsum("brk,bkd->brd", v, jt))
        s = unit3(np.einsum("brk,bkd->brd", v, js))
        return np.mean(np.sum((t - s) ** 2, axis=-1))
    diff = jt - js
    if case == "all":
        return np.mean(np.sum(diff**2, axis=(1, 2)))
    if case in ("random", "default_all"):
        u = targets["cotangents"].numpy().reshape(n, -1, size)
        rows = np.einsum("brk,bkd->brd", u, diff)
        values = size / u.shape[1] * np.sum(rows**2, axis=(1, 2))
        if case == "default_all":
            # Relative to the batch mean of the teacher's squared rows.
            teacher = np.einsum("brk,bkd->brd", u, jt)
            values /= np.mean(np.sum(teacher**2, axis=-1))
        return np.mean(values)
    v = targets["directions"].numpy().reshape(n, -1, d)
    moved = np.einsum("bkd,brd->brk", diff, v)
    values = d * np.mean(np.sum(moved**2, axis=-1), axis=-1)
    return np.mean(values)


def unit3(rows):
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


DENSE_CASES = {
    "teacher_top1": dict(target="teacher_top1"),
    "label": dict(target="label"),
    "top_k": dict(target="top_k", k=2),
    "all": dict(target="all", estimator="exact", normalize=False),
    # One output projection, relative to the teacher's rows.
    "default_all": dict(target="all"),
    "random": dict(target="random", normalize=False, num_projections=2),
    "jvp": dict(target="all", estimator="jvp", normalize=False),
    "finite_difference": dict(
        target="all", estimator="finite_difference", normalize=False
    ),
    "forward_difference": dict(
        target="all", estimator="forward_difference", normalize=False
    ),
}


# The term leaves the last bias untrained (Keras warns about it).
@pytest.mark.filterwarnings("ignore:Gradients do not exist:UserWarning")
@pytest.mark.parametrize("case", list(DENSE_CASES))
def test_jacobian_matching_of_per_pixel_outputs(case):
    # Unknown sizes but for target='all' (one row per output value).
    # One backward pass per output value for 'all': a 3x3 image.
    size = 3 if case == "all" else None
    teacher, student = seg(0, size), seg(10, size)
    term = kj.JacobianMatching(**DENSE_CASES[case])
    distiller = kj.Distiller(
        teacher, student, [term], seed=2, supervised_loss_weight=1.0
    )
    distiller.compile(optimizer="sgd")
    x = batch((size or 4, 4 if size is None else size))
    labels = np.random.default_rng(1).integers(0, 3, size=x.shape[:-1])
    spec = tf.TensorSpec((None, None, None, 1), "float64")
    data = tf.data.Dataset.from_tensors((x, labels)).map(
        lambda a, b: (tf.ensure_shape(a, spec.shape), b)
    )
    distiller.fit(data, verbose=0)
    state = distiller.seed_generator.state.numpy()
    logs = distiller.evaluate(data, verbose=0, return_dict=True)
    distiller.seed_generator.state.assign(state)
    targets = distiller.teacher_targets(tf.constant(x), labels)[0]
    expected = expected_dense(case, teacher, student, x, labels, targets)
    rtol = 1e-3 if case == "forward_difference" else 1e-5
    np.testing.assert_allclose(
        logs["jacobian_matching_loss"], expected, rtol=rtol
    )


@pytest.mark.parametrize("estimator", ["exact", "vjp", "forward_difference"])
def test_regularized_model_of_per_pixel_outputs(estimator):
    model = seg(0, size=4)
    robust = kj.JacobianRegularizedModel(
        model, target="all", estimator=estimator, num_projections=2, seed=1
    )
    robust.compile(loss="mse")
    x = batch((4, 4))
    y = np.zeros((3, 4, 4, 3))
    state = robust.seed_generator.state.numpy()
    logs = robust.evaluate(x, y, verbose=0, return_dict=True)
    robust.seed_generator.state.assign(state)
    jac = full_dense_jacobians(model, x)
    n, size, d = jac.shape
    if estimator == "exact":
        expected = np.sum(jac**2, axis=(1, 2))
    elif estimator == "vjp":
        # The step's draw: two orthonormal vectors per example.
        u = jacobians.orthogonal_directions(n, size, 2, robust.seed_generator)
        rows = np.einsum("rbk,bkd->brd", u.numpy(), jac)
        expected = size / 2 * np.sum(rows**2, axis=(1, 2))
    else:
        v = jacobians.input_directions(tf.constant(x), 2, robust.seed_generator)
        moved = np.einsum("bkd,rbd->rbk", jac, v.numpy().reshape(2, n, d))
        expected = d * np.mean(np.sum(moved**2, axis=-1), axis=0)
    rtol = 1e-3 if estimator == "forward_difference" else 1e-5
    np.testing.assert_allclose(
        logs["jacobian_penalty"], np.mean(expected), rtol=rtol
    )


def test_feature_distillation_of_per_pixel_outputs():
    teacher, student = seg(0), seg(10)
    distiller = kj.Distiller(
        teacher, student, [kj.FeatureDistillation()], supervised_loss_weight=1.0
    )
    x = batch((4, 6))
    logs = evaluate(distiller, x)
    np.testing.assert_allclose(
        logs["feature_distillation_loss"],
        np.mean((teacher(x).numpy() - student(x).numpy()) ** 2),
        rtol=1e-5,
    )


def test_per_pixel_refusals():
    with pytest.raises(ValueError, match="loss='squared'"):
        kj.Distiller(
            seg(0),
            seg(1),
            [kj.JacobianMatching(loss="alignment")],
            supervised_loss_weight=1.0,
        )
    exact = kj.JacobianMatching("all", estimator="exact")
    with pytest.raises(ValueError, match="estimator='vjp'"):
        kj.Distiller(seg(0), seg(1), [exact], supervised_loss_weight=1.0)
    with pytest.raises(ValueError, match="estimator='vjp'"):
        kj.JacobianRegularizedModel(seg(0), target="all")
    with pytest.raises(ValueError, match="same shape"):
        kj.Distiller(
            seg(0, size=8),
            seg(1, size=4),
            [kj.JacobianMatching()],
            supervised_loss_weight=1.0,
        )
    distiller = kj.Distiller(
        seg(0),
        seg(1),
        [kj.JacobianMatching("label")],
        supervised_loss_weight=1.0,
    )
    with pytest.raises(ValueError, match="one label per position"):
        distiller.teacher_targets(tf.constant(batch((4, 4))), np.zeros((3,)))


def test_fully_convolutional_student_shares_the_batch_of_a_fixed_teacher():
    from tests import tiny

    teacher = tiny.conv_net((8, 8, 1), classes=3, dtype="float64", seed=3)
    student = fcn(10)
    term = kj.JacobianMatching("all", estimator="exact", normalize=False)
    terms = [kj.LogitsDistillation(temperature=4.0, loss="kd"), term]
    distiller = kj.Distiller(
        teacher, student, terms, seed=1, supervised_loss_weight=1.0
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.01))
    x = batch((8, 8), n=4, seed=2)
    logs = distiller.evaluate(x, verbose=0, return_dict=True)
    expected = expected_matching("exact", teacher, student, x, None)
    np.testing.assert_allclose(
        logs["jacobian_matching_loss"], expected, rtol=1e-6
    )
    history = distiller.fit(x, epochs=1, batch_size=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
