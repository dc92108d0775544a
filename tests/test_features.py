"""Feature distillation, its adapters, and reading layers by name.

Values are checked against NumPy on features read by plain sub-models.
Cost: about 15 s.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_jacobian as kj
from keras_jacobian.terms.attention import AttentionTransfer
from keras_jacobian.terms.features import FeatureDistillation
from tests import tiny


def sequential_net(prefix, filters):
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(
                filters, 3, activation="relu", name=f"{prefix}c1"
            ),
            keras.layers.Flatten(name=f"{prefix}flat"),
            keras.layers.Dense(3, name=f"{prefix}out"),
        ],
        name=f"{prefix}seq",
    )


def features_of(model, name, x):
    return keras.Model(model.inputs[0], model.get_layer(name).output)(
        x, training=False
    ).numpy()


def term_losses(distiller, x):
    distiller.compile(optimizer="sgd")
    return {k: float(v) for k, v in distiller.test_step((x,)).items()}


def batch(size=8, n=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, size, size, 3)).astype("float32")


@pytest.mark.parametrize("loss", ["mse", "mae"])
def test_conv_adapter_value(loss):
    teacher, student = tiny.named_conv_net("t", 5), tiny.named_conv_net("s", 3)
    term = FeatureDistillation(
        teacher_layer_name="tc2",
        student_layer_name="sc2",
        adapter="auto",
        loss=loss,
    )
    distiller = kj.Distiller(
        teacher, student, [term], supervised_loss_weight=1.0
    )
    x = batch()
    got = term_losses(distiller, x)["feature_distillation_loss"]
    term = distiller.distillation_losses[0]
    kernel, bias = [w.numpy() for w in term.adapter_layer.weights]
    assert kernel.shape == (1, 1, 3, 5)
    mapped = features_of(student, "sc2", x) @ kernel[0, 0] + bias
    diff = features_of(teacher, "tc2", x) - mapped
    expected = np.mean(diff**2) if loss == "mse" else np.mean(np.abs(diff))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    adapter_ids = {id(v) for v in term.adapter_layer.trainable_variables}
    assert adapter_ids <= {id(v) for v in distiller.trainable_variables}


def test_dense_adapter_on_feature_vectors():
    teacher, student = tiny.named_conv_net("t", 5), tiny.named_conv_net("s", 3)
    term = FeatureDistillation(
        teacher_layer_name="tpool", student_layer_name="spool", adapter="dense"
    )
    distiller = kj.Distiller(
        teacher, student, [term], supervised_loss_weight=1.0
    )
    x = batch()
    got = term_losses(distiller, x)["feature_distillation_loss"]
    term = distiller.distillation_losses[0]
    kernel, bias = [w.numpy() for w in term.adapter_layer.weights]
    mapped = features_of(student, "spool", x) @ kernel + bias
    expected = np.mean((features_of(teacher, "tpool", x) - mapped) ** 2)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_sequential_models_without_adapter():
    teacher, student = sequential_net("t", 4), sequential_net("s", 4)
    distiller = kj.Distiller(
        teacher,
        student,
        [
            FeatureDistillation(
                teacher_layer_name="tc1", student_layer_name="sc1"
            )
        ],
        supervised_loss_weight=1.0,
    )
    x = batch()
    got = term_losses(distiller, x)["feature_distillation_loss"]
    expected = np.mean(
        (features_of(teacher, "tc1", x) - features_of(student, "sc1", x)) ** 2
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_keras_applications_teacher():
    teacher = keras.applications.MobileNet(
        input_shape=(32, 32, 3), alpha=0.25, weights=None, classes=3
    )
    student = tiny.named_conv_net("s", 4, size=32, first_stride=2)
    layer = "conv_pw_1_relu"  # 16 x 16 x 16 in MobileNet(alpha=0.25)
    terms = [
        FeatureDistillation(
            teacher_layer_name=layer, student_layer_name="sc1", adapter="conv"
        ),
        AttentionTransfer([(layer, "sc1")]),
    ]
    distiller = kj.Distiller(
        teacher, student, terms, supervised_loss_weight=1.0
    )
    x = batch(size=32, n=2)
    got = term_losses(distiller, x)
    t_feat = features_of(teacher, layer, x)
    s_feat = features_of(student, "sc1", x)
    assert t_feat.shape == (2, 16, 16, 16) and s_feat.shape == (2, 16, 16, 4)
    adapter = distiller.distillation_losses[0].adapter_layer
    kernel, bias = [w.numpy() for w in adapter.weights]
    mapped = s_feat @ kernel[0, 0] + bias
    np.testing.assert_allclose(
        got["feature_distillation_loss"],
        np.mean((t_feat - mapped) ** 2),
        rtol=1e-5,
    )
    t_map = np.mean(t_feat**2, axis=-1).reshape(2, -1)
    s_map = np.mean(s_feat**2, axis=-1).reshape(2, -1)
    t_map /= np.linalg.norm(t_map, axis=1, keepdims=True)
    s_map /= np.linalg.norm(s_map, axis=1, keepdims=True)
    np.testing.assert_allclose(
        got["attention_transfer_loss"],
        np.mean(np.sum((t_map - s_map) ** 2, axis=1)),
        rtol=1e-4,
    )


def test_spatial_mismatch_resizes_teacher_features():
    teacher = tiny.named_conv_net("t", 3)
    student = tiny.named_conv_net("s", 3, first_stride=2)
    distiller = kj.Distiller(
        teacher,
        student,
        [
            FeatureDistillation(
                teacher_layer_name="tc1", student_layer_name="sc1"
            )
        ],
        supervised_loss_weight=1.0,
    )
    x = batch()
    got = term_losses(distiller, x)["feature_distillation_loss"]
    t_feat = features_of(teacher, "tc1", x)
    pooled = t_feat.reshape(3, 4, 2, 4, 2, 3).mean(axis=(2, 4))
    expected = np.mean((pooled - features_of(student, "sc1", x)) ** 2)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


# Conversion from Keras' own term.


def test_from_keras_feature_distillation_matches_keras_value():
    teacher, student = tiny.named_conv_net("t", 3), tiny.named_conv_net("s", 3)
    keras_term = keras.distillation.FeatureDistillation(
        loss="mse", teacher_layer_name="tc2", student_layer_name="sc2"
    )
    distiller = kj.Distiller(
        teacher, student, [keras_term], supervised_loss_weight=1.0
    )
    converted = distiller.distillation_losses[0]
    assert isinstance(converted, FeatureDistillation)
    assert (converted.teacher_layer_name, converted.student_layer_name) == (
        "tc2",
        "sc2",
    )
    x = batch()
    got = term_losses(distiller, x)["feature_distillation_loss"]
    expected = keras_term.compute_loss(
        tf.constant(features_of(teacher, "tc2", x)),
        tf.constant(features_of(student, "sc2", x)),
    )
    np.testing.assert_allclose(got, float(expected), rtol=1e-5)


def test_from_keras_defaults_and_other_keras_losses():
    term = FeatureDistillation.from_keras(
        keras.distillation.FeatureDistillation(loss="mae")
    )
    assert (term.teacher_layer_name, term.student_layer_name, term.loss) == (
        "output",
        "output",
        "mae",
    )
    # Any other Keras loss keeps its Keras value: cosine similarity is
    # -sum(t * s) / (|t| |s|) per position, averaged.
    teacher, student = tiny.named_conv_net("t", 3), tiny.named_conv_net("s", 3)
    keras_term = keras.distillation.FeatureDistillation(
        loss="cosine_similarity",
        teacher_layer_name="tc2",
        student_layer_name="sc2",
    )
    distiller = kj.Distiller(teacher, student, [keras_term])
    assert isinstance(distiller.distillation_losses[0], FeatureDistillation)
    x = batch()
    t, s = features_of(teacher, "tc2", x), features_of(student, "sc2", x)
    norm = np.linalg.norm
    cosine = -np.sum(t * s, -1) / (norm(t, axis=-1) * norm(s, axis=-1))
    got = term_losses(distiller, x)["feature_distillation_loss"]
    np.testing.assert_allclose(got, np.mean(cosine), rtol=1e-5)


# Errors.


def test_channel_mismatch_without_adapter_names_the_fix():
    teacher, student = tiny.named_conv_net("t", 5), tiny.named_conv_net("s", 3)
    with pytest.raises(ValueError, match="adapter='auto'"):
        kj.Distiller(
            teacher,
            student,
            [
                FeatureDistillation(
                    teacher_layer_name="tc2", student_layer_name="sc2"
                )
            ],
            supervised_loss_weight=1.0,
        )


def test_bad_layer_name_lists_available_names():
    teacher, student = tiny.named_conv_net("t", 3), tiny.named_conv_net("s", 3)
    with pytest.raises(ValueError, match=r"no layer named 'nope'.*'sc1'"):
        kj.Distiller(
            teacher,
            student,
            [
                FeatureDistillation(
                    teacher_layer_name="tc1", student_layer_name="nope"
                )
            ],
            supervised_loss_weight=1.0,
        )


def test_subclassed_model_is_refused_with_a_fix():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(3, 3, name="conv")
            self.pool = keras.layers.GlobalAveragePooling2D()
            self.head = keras.layers.Dense(3)

        def call(self, x):
            return self.head(self.pool(self.conv(x)))

    teacher = Subclassed()
    teacher(batch())
    student = tiny.named_conv_net("s", 3)
    with pytest.raises(ValueError, match="Functional"):
        kj.Distiller(
            teacher,
            student,
            [
                FeatureDistillation(
                    teacher_layer_name="conv", student_layer_name="sc1"
                )
            ],
            supervised_loss_weight=1.0,
        )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            {"teacher_layer_name": "tc1", "student_layer_name": "spool"},
            "same rank",
        ),
        (
            {
                "teacher_layer_name": "tpool",
                "student_layer_name": "spool",
                "adapter": "conv",
            },
            "adapter='dense'",
        ),
        (
            {
                "teacher_layer_name": "tc1",
                "student_layer_name": "sc1",
                "adapter": "dense",
            },
            "adapter='conv'",
        ),
    ],
)
def test_shape_errors(kwargs, match):
    teacher, student = tiny.named_conv_net("t", 5), tiny.named_conv_net("s", 3)
    with pytest.raises(ValueError, match=match):
        kj.Distiller(
            teacher,
            student,
            [FeatureDistillation(**kwargs)],
            supervised_loss_weight=1.0,
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"teacher_layer_name": "", "student_layer_name": "s"},
        {"teacher_layer_name": "t", "student_layer_name": 3},
        {
            "teacher_layer_name": "t",
            "student_layer_name": "s",
            "adapter": "linear",
        },
        {"teacher_layer_name": "t", "student_layer_name": "s", "loss": "nope"},
    ],
)
def test_argument_errors(kwargs):
    with pytest.raises(ValueError, match="Received"):
        FeatureDistillation(**kwargs)


def test_config_round_trip():
    term = FeatureDistillation(
        teacher_layer_name="a",
        student_layer_name="b",
        adapter="conv",
        loss="mae",
        name="f",
    )
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(term)
    )
    assert restored.get_config() == term.get_config()


def test_layer_names_follow_keras_distillation():
    term = kj.FeatureDistillation(
        teacher_layer_name="tc1", student_layer_name="sc1"
    )
    assert (term.teacher_layer_name, term.student_layer_name) == ("tc1", "sc1")
    # None names the output, as in keras.distillation.FeatureDistillation.
    default = kj.FeatureDistillation()
    assert default.teacher_endpoints == ("output",)
    assert default.student_endpoints == ("output",)
    config = term.get_config()
    assert config["teacher_layer_name"] == "tc1"
    assert "teacher_layer" not in config


def test_former_layer_arguments_still_work_with_a_warning():
    with pytest.warns(DeprecationWarning, match="teacher_layer_name"):
        term = kj.FeatureDistillation(teacher_layer="tc1", student_layer="sc1")
    assert (term.teacher_layer_name, term.student_layer_name) == ("tc1", "sc1")
    # A 0.1.0 config (saved `.keras` files) still loads.
    with pytest.warns(DeprecationWarning):
        restored = kj.FeatureDistillation.from_config(
            {"name": "f", "teacher_layer": "tc1", "student_layer": "sc1"}
        )
    assert restored.teacher_layer_name == "tc1"
    with pytest.raises(ValueError, match="only"):
        kj.FeatureDistillation(teacher_layer_name="a", teacher_layer="b")
