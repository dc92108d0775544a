"""Bad input fails early with a message that names the fix."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_jacobian as kj
from keras_jacobian import label_range
from tests import tiny


def test_different_channels():
    with pytest.raises(ValueError, match="same rank and number of channels"):
        kj.Distiller(
            tiny.conv_net((8, 8, 1)),
            tiny.conv_net((8, 8, 3)),
            [kj.LogitsDistillation(temperature=4.0, loss="kd")],
            supervised_loss_weight=1.0,
        )


def test_different_resolutions_need_two_inputs():
    distiller = kj.Distiller(
        tiny.conv_net((8, 8, 1)),
        tiny.conv_net((6, 6, 1)),
        [kj.LogitsDistillation(temperature=4.0, loss="kd")],
        supervised_loss_weight=1.0,
    )
    distiller.compile(optimizer="adam")
    with pytest.raises(ValueError, match="'teacher': x_t"):
        distiller.fit(tiny.images(4), epochs=1, verbose=0)


@pytest.mark.parametrize(
    "term",
    [kj.JacobianMatching(), kj.JacobianMatching("random")],
)
def test_class_count_mismatch(term):
    with pytest.raises(ValueError, match="same number of classes"):
        kj.Distiller(
            tiny.conv_net(classes=5),
            tiny.conv_net(classes=4),
            [term],
            supervised_loss_weight=1.0,
        )


def test_logits_class_count_mismatch():
    with pytest.raises(ValueError, match="same size"):
        kj.Distiller(
            tiny.conv_net(classes=5),
            tiny.conv_net(classes=4),
            [kj.LogitsDistillation(temperature=4.0, loss="kd")],
            supervised_loss_weight=1.0,
        )


def test_k_larger_than_classes():
    with pytest.raises(ValueError, match="cannot exceed the number"):
        kj.Distiller(
            tiny.conv_net(),
            tiny.conv_net(),
            [kj.JacobianMatching("top_k", 6)],
            supervised_loss_weight=1.0,
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target": "top2"}, "must be one of"),
        ({"target": "top_k"}, "needs an integer `k`"),
        ({"k": 3}, "only used with target='top_k'"),
        ({"num_projections": 0}, "num_projections"),
        ({"loss": "cosine"}, "must be one of"),
        ({"target": "random", "loss": "alignment"}, "class-indexed"),
        ({"temperature": 0}, "positive"),
    ],
)
def test_bad_jacobian_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kj.JacobianMatching(**kwargs)


def test_bad_logit_and_noise_arguments():
    with pytest.raises(ValueError, match="must be a Keras loss.*'kd'"):
        kj.LogitsDistillation(loss="ce")
    # The first argument is the temperature, as in Keras.
    with pytest.raises(ValueError, match="temperature"):
        kj.LogitsDistillation("kd")
    with pytest.raises(ValueError, match="positive"):
        kj.LogitsDistillation(temperature=-1, loss="kd")
    with pytest.raises(ValueError, match="stddev"):
        kj.NoiseDistillation(0)
    with pytest.raises(ValueError, match="num_samples"):
        kj.NoiseDistillation(0.1, num_samples=0)


def test_weight_count_mismatch():
    with pytest.raises(ValueError, match="one weight per term"):
        kj.Distiller(
            tiny.conv_net(),
            tiny.conv_net(),
            [
                kj.LogitsDistillation(temperature=4.0, loss="kd"),
                kj.JacobianMatching(),
            ],
            distillation_loss_weights=[1.0],
            supervised_loss_weight=1.0,
        )


def test_integer_inputs_have_no_jacobian():
    def token_model():
        inputs = keras.Input((5,), dtype="int32")
        h = keras.layers.Embedding(10, 4)(inputs)
        h = keras.layers.Flatten()(h)
        return keras.Model(inputs, keras.layers.Dense(3)(h))

    for term in (kj.JacobianMatching(), kj.NoiseDistillation(1e-3)):
        # Noise added to token ids used to change the tokens, silently.
        with pytest.raises(ValueError, match="token inputs"):
            kj.Distiller(
                token_model(),
                token_model(),
                [term],
                supervised_loss_weight=1.0,
            )
    # Output-only terms work on token models.
    kj.Distiller(
        token_model(),
        token_model(),
        [kj.LogitsDistillation(temperature=4.0, loss="kd")],
        supervised_loss_weight=1.0,
    )


def test_noise_is_refused_for_token_ids_cast_from_a_float_input():
    def cast_token_model(name):
        inputs = keras.Input((5,))
        ids = keras.layers.Lambda(
            lambda t: keras.ops.cast(t, "int32"), output_shape=(5,)
        )(inputs)
        h = keras.layers.Flatten()(keras.layers.Embedding(10, 4)(ids))
        return keras.Model(inputs, keras.layers.Dense(3)(h), name=name)

    # The noise changes the ids the embedding looks up.
    x = np.tile(np.arange(5, dtype="float32"), (64, 1))
    noisy = x + np.random.default_rng(0).normal(0, 0.3, x.shape)
    assert np.mean(noisy.astype("int32") != x.astype("int32")) > 0.1
    for teacher, student, role in (
        (cast_token_model("tokens"), _plain_model(5), "teacher"),
        (_plain_model(5), cast_token_model("tokens"), "student"),
    ):
        with pytest.raises(
            ValueError, match=f"{role} 'tokens' casts its input to integers"
        ):
            kj.Distiller(
                teacher,
                student,
                [kj.NoiseDistillation(0.3)],
                supervised_loss_weight=1.0,
            )
    # Casts to integers without a lookup (an int8-quantized network
    # quantizes its layers' inputs) leave the input continuous.
    quantized = _plain_model(5)
    quantized.quantize("int8")
    kj.Distiller(
        quantized,
        _plain_model(5),
        [kj.NoiseDistillation(0.3)],
        supervised_loss_weight=1.0,
    )


def _plain_model(features):
    inputs = keras.Input((features,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def test_integer_images_name_the_float_input_that_works():
    def image_model(dtype, seed, name=None):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((4, 4, 1), dtype=dtype)
        h = keras.layers.Rescaling(1 / 255)(inputs)
        h = keras.layers.Flatten()(h)
        return keras.Model(inputs, keras.layers.Dense(3)(h), name=name)

    with pytest.raises(
        ValueError, match="teacher 'pixels' takes uint8.*uint8 pixels.*Input"
    ):
        kj.Distiller(
            image_model("uint8", 0, "pixels"),
            image_model("uint8", 1),
            [kj.JacobianMatching()],
            supervised_loss_weight=1.0,
        )
    # The fix the message gives: a float input, fed the uint8 batches.
    distiller = kj.Distiller(
        image_model("float32", 0),
        image_model("float32", 1),
        [kj.JacobianMatching()],
        supervised_loss_weight=1.0,
    )
    distiller.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    pixels = np.random.default_rng(0).integers(0, 256, (4, 4, 4, 1))
    history = distiller.fit(
        pixels.astype("uint8"), np.arange(4) % 3, epochs=1, verbose=0
    )
    assert np.isfinite(history.history["loss"][-1])


def test_resizing_inside_the_model_is_reported():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(2, 3, activation="tanh", name="conv")(inputs)
    h = keras.layers.Resizing(12, 12, interpolation="bilinear")(h)
    h = keras.layers.Conv2D(2, 3, activation="tanh")(h)
    h = keras.layers.Flatten()(h)
    student = keras.Model(inputs, keras.layers.Dense(5)(h))
    with pytest.raises(ValueError, match="Resize in the input pipeline"):
        kj.Distiller(
            tiny.conv_net(),
            student,
            [kj.JacobianMatching()],
            supervised_loss_weight=1.0,
        )


def test_output_without_input_gradient_is_reported():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Lambda(lambda t: keras.ops.stop_gradient(t))(inputs)
    h = keras.layers.Flatten()(h)
    student = keras.Model(inputs, keras.layers.Dense(5)(h))
    with pytest.raises(ValueError, match="no gradient with respect to"):
        kj.Distiller(
            tiny.conv_net(),
            student,
            [kj.JacobianMatching()],
            supervised_loss_weight=1.0,
        )


def test_subclassed_model_is_reported():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.flat = keras.layers.Flatten()
            self.dense = keras.layers.Dense(5)

        def call(self, x):
            return self.dense(self.flat(x))

    net = Net()
    net(np.zeros((1, 8, 8, 1), "float32"))
    # Output terms work on a subclassed model; intermediate layers do not.
    kj.Distiller(
        tiny.conv_net(),
        net,
        [kj.LogitsDistillation(temperature=4.0, loss="kd")],
        supervised_loss_weight=1.0,
    )
    with pytest.raises(ValueError, match="Functional model"):
        kj.Distiller(
            tiny.conv_net(),
            net,
            [
                kj.FeatureDistillation(
                    teacher_layer_name="conv1", student_layer_name="dense"
                )
            ],
            supervised_loss_weight=1.0,
        )


def test_not_a_term():
    with pytest.raises(ValueError, match="keras_jacobian term"):
        kj.Distiller(
            tiny.conv_net(), tiny.conv_net(), ["kl"], supervised_loss_weight=1.0
        )


# A student of zeros has no gradient for its last bias through the Jacobian
# term alone, which Keras warns about; that is the point of the test.
@pytest.mark.filterwarnings("ignore:Gradients do not exist:UserWarning")
def test_zero_jacobian_gives_no_nan():
    student = tiny.conv_net(seed=3)
    for layer in student.layers:
        if layer.weights:
            layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    distiller = kj.Distiller(
        tiny.conv_net(),
        student,
        [kj.JacobianMatching()],
        supervised_loss_weight=1.0,
    )
    distiller.compile(optimizer="sgd")
    history = distiller.fit(tiny.images(4), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    for w in student.get_weights():
        assert np.all(np.isfinite(w))


# Token models, counts, softmax outputs and labels.

ESTIMATORS = ("exact", "jvp", "finite_difference", "forward_difference")


def token_model(dtype, nested=False):
    inputs = keras.Input((5,), dtype=dtype)
    embed = keras.layers.Embedding(10, 4, name="tokens")
    if nested:
        embed = keras.Sequential([embed], name="embedder")
    h = keras.layers.Flatten()(embed(inputs))
    return keras.Model(inputs, keras.layers.Dense(3)(h))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_token_models_are_refused_by_every_estimator(estimator):
    term = kj.JacobianMatching(
        "all",
        estimator=estimator,
        normalize=False,
        num_projections=None if estimator == "exact" else 1,
    )
    cases = [
        ("int32", False, "int32 inputs"),
        ("float32", False, r"embedding layer\(s\) \['tokens'\]"),
        ("float32", True, r"embedding layer\(s\) \['tokens'\]"),
    ]
    # With default arguments, and with the gradient probe off: the
    # refusal does not rely on the probe.
    for options in ({}, {"check_differentiable": False}):
        for dtype, nested, message in cases:
            # Before this check, the difference estimators accepted these
            # and trained to inf or NaN.
            with pytest.raises(ValueError, match=message) as info:
                kj.Distiller(
                    token_model(dtype, nested),
                    token_model(dtype, nested),
                    [term],
                    **options,
                )
            assert "embedding output" in str(info.value)
            with pytest.raises(ValueError, match=message):
                kj.JacobianRegularizedModel(
                    token_model(dtype, nested),
                    target="all",
                    estimator=estimator,
                    **options,
                )


def test_token_models_are_refused_by_the_gradient_probe():
    # The embedding hides behind a cast: only the probe sees it.
    def hidden_token_model():
        inputs = keras.Input((5,))
        ids = keras.layers.Lambda(lambda t: keras.ops.cast(t, "int32"))(inputs)
        h = keras.layers.Flatten()(keras.layers.Embedding(10, 4)(ids))
        return keras.Model(inputs, keras.layers.Dense(3)(h))

    term = kj.JacobianMatching("all", estimator="forward_difference")
    with pytest.raises(ValueError, match="floating-point input"):
        kj.Distiller(
            hidden_token_model(),
            hidden_token_model(),
            [term],
            supervised_loss_weight=1.0,
        )
    with pytest.raises(ValueError, match="floating-point input"):
        kj.JacobianRegularizedModel(
            hidden_token_model(), target="all", estimator="jvp"
        )


def test_position_embeddings_are_not_token_inputs():
    inputs = keras.Input((4, 3))
    positions = keras.layers.Lambda(lambda t: keras.ops.arange(4))(inputs)
    h = inputs + keras.layers.Embedding(4, 3)(positions)
    h = keras.layers.Flatten()(keras.layers.Dense(3, activation="tanh")(h))
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    kj.JacobianRegularizedModel(
        model, target="all", estimator="forward_difference"
    )


@pytest.mark.parametrize("bad", [True, False, 2**31, 1.0, "2"])
def test_counts_refuse_bools_floats_and_sizes_beyond_int32(bad):
    with pytest.raises(ValueError, match="num_projections.*int32"):
        kj.JacobianMatching("random", num_projections=bad)
    with pytest.raises(ValueError, match="num_projections.*int32"):
        kj.JacobianRegularizedModel(tiny.conv_net(), num_projections=bad)
    with pytest.raises(ValueError, match="num_samples.*int32"):
        kj.NoiseDistillation(0.1, num_samples=bad)
    with pytest.raises(ValueError, match="`k`"):
        kj.JacobianMatching("top_k", k=bad)


def test_counts_accept_numpy_integers():
    term = kj.JacobianMatching("random", num_projections=np.int64(3))
    assert term.num_projections == 3 and type(term.num_projections) is int
    assert kj.JacobianMatching("top_k", k=np.int32(2)).k == 2
    assert kj.JacobianMatching("random", num_projections=2**31 - 1)


def softmax_student(kind):
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Flatten(name="features")(inputs)
    if kind == "dense":
        outputs = keras.layers.Dense(5, activation="softmax", name="d")(h)
    elif kind == "layer":
        outputs = keras.layers.Softmax(name="s")(keras.layers.Dense(5)(h))
    elif kind == "op":
        outputs = keras.ops.softmax(keras.layers.Dense(5)(h))
    else:  # a softmax model nested as the last layer
        inner = keras.Sequential(
            [keras.Input((64,)), keras.layers.Dense(5, activation="softmax")]
        )
        outputs = inner(h)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("kind", ["dense", "layer", "op", "nested"])
def test_softmax_outputs_are_refused_where_logits_are_read(kind):
    for term in (
        kj.LogitsDistillation(temperature=4.0, loss="kd"),
        kj.JacobianMatching(),
        kj.NoiseDistillation(0.1),
    ):
        with pytest.raises(ValueError, match="logits are expected") as info:
            kj.Distiller(
                tiny.conv_net(),
                softmax_student(kind),
                [term],
                supervised_loss_weight=1.0,
            )
        assert "Remove the final activation" in str(info.value)
        with pytest.raises(ValueError, match="teacher.*softmax"):
            kj.Distiller(
                softmax_student(kind),
                tiny.conv_net(),
                [term],
                supervised_loss_weight=1.0,
            )
    with pytest.raises(ValueError, match="logits are expected"):
        kj.JacobianRegularizedModel(softmax_student(kind))
    # Terms that read features only do not care about the output.
    kj.Distiller(
        tiny.conv_net(),
        softmax_student(kind),
        [
            kj.FeatureDistillation(
                teacher_layer_name="logits",
                student_layer_name="features",
                adapter="dense",
            )
        ],
        supervised_loss_weight=1.0,
    )


def test_keras_applications_softmax_names_classifier_activation():
    def mobilenet(**kwargs):
        return keras.applications.MobileNet(
            input_shape=(32, 32, 3),
            alpha=0.25,
            weights=None,
            classes=5,
            **kwargs,
        )

    student = tiny.conv_net((32, 32, 3))
    with pytest.raises(ValueError, match="classifier_activation=None"):
        kj.Distiller(
            mobilenet(),
            student,
            [kj.LogitsDistillation(temperature=4.0, loss="kd")],
            supervised_loss_weight=1.0,
        )
    kj.Distiller(
        mobilenet(classifier_activation=None),
        student,
        [kj.LogitsDistillation(temperature=4.0, loss="kd")],
        supervised_loss_weight=1.0,
    )


def test_num_projections_with_the_exact_estimator_is_refused():
    for kwargs in (
        dict(target="all", estimator="exact"),
        dict(target="teacher_top1"),
        dict(target="label", estimator="exact"),
    ):
        with pytest.raises(ValueError, match="estimator='exact'.*draws"):
            kj.JacobianMatching(num_projections=4, **kwargs)


@pytest.mark.parametrize(
    "estimator, limit", [("vjp", 5), ("jvp", 64), ("forward_difference", 64)]
)
def test_more_projections_than_the_exact_value_needs_are_refused(
    estimator, limit
):
    # tiny.conv_net: 8x8x1 inputs (64 values), 5 classes.
    teacher = tiny.conv_net(seed=0, name="t")
    student = tiny.conv_net(seed=1, name="s")
    ok = kj.JacobianMatching("all", estimator=estimator, num_projections=limit)
    kj.Distiller(teacher, student, [ok])
    for count in (limit + 1, 10**9):
        term = kj.JacobianMatching(
            "all", estimator=estimator, num_projections=count
        )
        with pytest.raises(ValueError, match=f"at most {limit}"):
            kj.Distiller(teacher, student, [term])


def _whole_loss(estimator, x, normalize="teacher"):
    teacher = tiny.conv_net(seed=0, name="t")
    student = tiny.conv_net(seed=1, name="s")
    term = kj.JacobianMatching(
        "all", estimator=estimator, normalize=normalize, num_projections=2
    )
    distiller = kj.Distiller(teacher, student, [term], seed=0)
    distiller.compile()
    logs = distiller.evaluate(x, batch_size=len(x), verbose=0, return_dict=True)
    return logs["jacobian_matching_loss"]


@pytest.mark.parametrize("estimator", ["vjp", "jvp", "forward_difference"])
def test_a_nan_input_gives_a_nan_relative_loss_not_zero(estimator):
    x = tiny.images(4)
    x[1, 2, 3, 0] = np.nan
    assert np.isnan(_whole_loss(estimator, x))


@pytest.mark.parametrize(
    "estimator", ["forward_difference", "finite_difference"]
)
def test_difference_steps_of_huge_inputs_do_not_overflow(estimator):
    # ||x||^2 of inputs near 1e19 overflows float32; tanh saturates there,
    # so every Jacobian is zero.
    x = tiny.images(4) * 1e19
    for normalize in (False, "teacher"):
        got = _whole_loss(estimator, x, normalize)
        assert np.isfinite(got), got
        assert got == pytest.approx(_whole_loss("jvp", x, normalize), abs=1e-6)


class CustomSoftmax(keras.layers.Layer):
    """Logits, then a softmax the layer's class does not show."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(5)

    def call(self, x):
        return keras.activations.softmax(self.dense(x))


class Attention(keras.layers.Layer):
    """Self-attention over the rows of its input: a softmax inside."""

    def call(self, x):
        scores = keras.ops.matmul(x, keras.ops.transpose(x, (0, 2, 1)))
        return keras.ops.matmul(keras.ops.softmax(scores), x)


def _exp_over_sum(z):
    return keras.ops.exp(z) / keras.ops.sum(
        keras.ops.exp(z), axis=-1, keepdims=True
    )


def hidden_softmax_student(kind):
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Flatten()(inputs)
    if kind == "custom layer":
        return keras.Model(inputs, CustomSoftmax()(h))
    if kind == "Dense(activation=tf.nn.softmax)":
        return keras.Model(
            inputs, keras.layers.Dense(5, activation=tf.nn.softmax)(h)
        )
    if kind == "keras.ops exp / sum(exp)":
        return keras.Model(inputs, _exp_over_sum(keras.layers.Dense(5)(h)))
    if kind == "TimeDistributed":
        steps = keras.layers.Dense(5)(keras.layers.Reshape((1, 64))(h))
        softmax = keras.layers.Lambda(keras.ops.softmax)
        per_step = keras.layers.TimeDistributed(softmax)(steps)
        return keras.Model(inputs, keras.layers.Reshape((5,))(per_step))
    logits = keras.layers.Dense(5)(h)
    last = {
        "Lambda(keras.ops.softmax)": keras.layers.Lambda(keras.ops.softmax),
        "Lambda(tf.nn.softmax)": keras.layers.Lambda(tf.nn.softmax),
        "exp / sum(exp)": keras.layers.Lambda(_exp_over_sum),
    }[kind]
    return keras.Model(inputs, last(logits))


@pytest.mark.parametrize(
    "kind",
    [
        "Lambda(keras.ops.softmax)",
        "Lambda(tf.nn.softmax)",
        "custom layer",
        "exp / sum(exp)",
        "Dense(activation=tf.nn.softmax)",
        "keras.ops exp / sum(exp)",
        "TimeDistributed",
    ],
)
def test_softmax_in_lambda_or_custom_layer_is_refused(kind):
    term = kj.LogitsDistillation(temperature=4.0, loss="kd")
    with pytest.raises(ValueError, match="logits are expected") as info:
        kj.Distiller(
            tiny.conv_net(),
            hidden_softmax_student(kind),
            [term],
            supervised_loss_weight=1.0,
        )
    assert "student model's output ends in a softmax (operation" in str(
        info.value
    )
    with pytest.raises(ValueError, match="teacher.*softmax"):
        kj.Distiller(
            hidden_softmax_student(kind),
            tiny.conv_net(),
            [term],
            supervised_loss_weight=1.0,
        )
    with pytest.raises(ValueError, match="logits are expected"):
        kj.JacobianRegularizedModel(hidden_softmax_student(kind))


def test_softmax_before_the_last_operation_is_accepted():
    inputs = keras.Input((8, 8, 1))
    rows = keras.layers.Reshape((8, 8))(inputs)
    h = keras.layers.Flatten()(Attention()(rows))
    attention = keras.Model(inputs, keras.layers.Dense(5)(h))
    h = keras.layers.Flatten()(inputs)
    probabilities = keras.layers.Lambda(keras.ops.softmax)(
        keras.layers.Dense(6)(h)
    )
    dense_after = keras.Model(inputs, keras.layers.Dense(5)(probabilities))
    for student in (attention, dense_after, tiny.conv_net()):
        kj.Distiller(
            tiny.conv_net(),
            student,
            [kj.LogitsDistillation(temperature=4.0, loss="kd")],
            supervised_loss_weight=1.0,
        )
        kj.JacobianRegularizedModel(student)


def test_outputs_of_keras_layers_are_not_traced(monkeypatch):
    # Tracing costs seconds for large networks; the layers say enough.
    from keras_jacobian import traced

    def refuse(*args):
        raise AssertionError("traced")

    monkeypatch.setattr(traced, "final_softmax", refuse)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(5, 8)(inputs)
    reshaped = keras.layers.Activation("linear")(keras.layers.Flatten()(h))
    for student in (tiny.conv_net(), keras.Model(inputs, reshaped)):
        kj.Distiller(
            tiny.conv_net(),
            student,
            [kj.LogitsDistillation(temperature=4.0, loss="kd")],
            supervised_loss_weight=1.0,
        )


# Labels of a sparse compiled loss.


def _supervised(kind, weight=0.01):
    """A Distiller or a JacobianRegularizedModel, and the network trained."""
    if kind == "distiller":
        model = kj.Distiller(
            tiny.conv_net(seed=0),
            tiny.conv_net(seed=1),
            [kj.LogitsDistillation(temperature=2.0, loss="kd")],
            supervised_loss_weight=1.0,
        )
        return model, model.student
    model = kj.JacobianRegularizedModel(tiny.conv_net(seed=1), weight=weight)
    return model, model.model


@pytest.mark.parametrize("mode", ["graph", "xla", "eager"])
@pytest.mark.parametrize("kind", ["distiller", "regularized"])
def test_out_of_range_labels_of_the_compiled_loss_raise(kind, mode):
    # Under XLA the loss, then the weights, were NaN without an error;
    # without XLA TensorFlow raised an InvalidArgumentError.
    model, network = _supervised(kind)
    model.compile(
        optimizer="sgd",
        loss="sparse_categorical_crossentropy"
        if mode == "xla"
        else tiny.sparse_ce(),
        jit_compile=mode == "xla",
        run_eagerly=mode == "eager",
    )
    x = tiny.images(4)
    before = network.get_weights()
    for method in ("fit", "evaluate"):
        with pytest.raises(
            ValueError,
            match=r"compiled loss sparse_categorical_crossentropy needs "
            r"class indices in \[0, 5\).*ignore_class=-1.*2 label.*-1.*5",
        ):
            getattr(model, method)(
                x, np.array([0, 5, -1, 2]), batch_size=4, verbose=0
            )
    after = network.get_weights()
    assert all(np.all(np.isfinite(w)) for w in after)
    if mode != "xla":  # stopped before the update
        for a, b in zip(before, after):
            np.testing.assert_array_equal(a, b)
    # The record is cleared: valid labels train.
    history = model.fit(x, np.array([0, 4, 1, 2]), batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def _cross_entropy(logits, labels):
    logits = logits.astype("float64")
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels]


@pytest.mark.parametrize("form", ["int", "float", "column", "ignored"])
def test_valid_sparse_labels_under_xla_give_keras_loss(form):
    model, network = _supervised("regularized", weight=0.0)
    labels = np.array([0, 4, 1, 2])
    loss = tiny.sparse_ce()
    if form == "ignored":
        labels = np.array([0, -1, 1, 2])
        loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=-1
        )
    given = {
        "int": labels,
        "float": labels.astype("float32"),
        "column": labels[:, None],
        "ignored": labels,
    }[form]
    model.compile(optimizer="sgd", loss=loss, jit_compile=True)
    x = tiny.images(4)
    logs = model.evaluate(x, given, batch_size=4, verbose=0, return_dict=True)
    logits = keras.ops.convert_to_numpy(network(x))
    valid = labels >= 0
    expected = _cross_entropy(logits[valid], labels[valid]).mean()
    np.testing.assert_allclose(logs["task_loss"], expected, rtol=1e-5)


@pytest.mark.parametrize("loss", [None, "mse", "one_hot"])
def test_losses_without_class_indices_are_not_checked_under_xla(loss):
    model, network = _supervised("distiller")
    compiled = {
        None: None,
        "mse": "mse",
        "one_hot": keras.losses.CategoricalCrossentropy(from_logits=True),
    }[loss]
    model.compile(optimizer="sgd", loss=compiled, jit_compile=True)
    x = tiny.images(4)
    labels = np.array([0, 4, 1, 2])
    one_hot = np.eye(5, dtype="float32")[labels]
    logs = model.evaluate(x, one_hot, batch_size=4, verbose=0, return_dict=True)
    logits = keras.ops.convert_to_numpy(network(x)).astype("float64")
    expected = {
        None: 0.0,
        "mse": np.mean((logits - one_hot) ** 2),
        "one_hot": _cross_entropy(logits, labels).mean(),
    }[loss]
    np.testing.assert_allclose(logs["student_loss"], expected, rtol=1e-5)


def test_sparse_crossentropy_losses_are_recognised():
    sparse = label_range.sparse_crossentropy
    name = "sparse_categorical_crossentropy"
    for loss in (
        name,
        [name],
        {"logits": name},
        keras.losses.sparse_categorical_crossentropy,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ):
        assert sparse(loss) == (name, None), loss
    ignoring = keras.losses.SparseCategoricalCrossentropy(
        ignore_class=-1, name="scce"
    )
    assert sparse(ignoring) == ("scce", -1)
    for loss in (
        None,
        "mse",
        "categorical_crossentropy",
        keras.losses.CategoricalCrossentropy(from_logits=True),
        [name, name],
        lambda y, p: keras.ops.mean(p),
    ):
        assert sparse(loss) is None, loss


@pytest.mark.parametrize("bad", [float("nan"), -1.0])
def test_term_weight_assigned_to_the_variable_is_checked_in_the_step(bad):
    # The setters refuse such weights; a direct `assign` used to skip the
    # term silently (NaN and negative weights compare as not > 0).
    distiller = kj.Distiller(
        tiny.conv_net(classes=3, filters=2, seed=0),
        tiny.conv_net(classes=3, filters=2, seed=1),
        [kj.LogitsDistillation(), kj.JacobianMatching()],
        distillation_loss_weights=[1.0, 1.0],
        supervised_loss_weight=1.0,
    )
    distiller.compile(optimizer="sgd", loss=tiny.sparse_ce())
    distiller.term_weights[1].assign(bad)
    x, y = tiny.images(n=4), np.arange(4) % 3
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="finite number >= 0"
    ):
        distiller.fit(x, y, batch_size=2, epochs=1, verbose=0)


def test_kink_and_top_k_refusals_name_the_model_and_the_fix():
    def relu_net(name):
        inputs = keras.Input((5,))
        h = keras.layers.Dense(8, activation="relu")(inputs)
        return keras.Model(inputs, keras.layers.Dense(3)(h), name=name)

    # It named the internal 'my_relu_endpoints'.
    with pytest.raises(ValueError, match="student 'my_relu' has kinks"):
        kj.Distiller(
            relu_net("teacher"),
            relu_net("my_relu"),
            [kj.JacobianMatching("all", estimator="forward_difference")],
        )
    with pytest.raises(ValueError, match=r"k=9\. Pass k <= 3"):
        kj.Distiller(
            relu_net("teacher"),
            relu_net("student"),
            [kj.JacobianMatching("top_k", k=9)],
        )
