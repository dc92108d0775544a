"""The registry of the conformance test: every term and configuration.

A case is one entry of `REGISTRY`: a name (the pytest id), a factory of
the term (or of the whole model, for `JacobianRegularizedModel`) built
with default arguments apart from those that define the case, and a
reference function computing the expected per-example value in NumPy
from plain `tf.GradientTape` Jacobians of the tiny networks below, never
with the library's helpers. `tests/test_conformance.py` runs every check
on every registered case, so a new term gets them all by one `register`
call here.

Networks: 6x6x2 inputs, two tanh convolutions, 3 classes, batch 4;
weights are set from a seeded NumPy generator, so every process and
every strategy starts from the same values.
"""

import dataclasses
import inspect
from typing import Callable
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

import keras_jacobian as kj

INPUT_SHAPE = (6, 6, 2)
CLASSES = 3
BATCH = 4
TEACHER_SEED = 1
STUDENT_SEED = 2
# Layers read by the feature and attention terms.
PAIR = ("t_conv1", "s_conv1")


# Networks and data.


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


# The registry.


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration that every conformance check runs on.

    Attributes:
        name: the pytest id.
        term: factory of a fresh term (Distiller cases), else None.
        model: for a case without a term, `model(student)` builds the
            model (default arguments); None for Distiller cases.
        reference: `reference(teacher, student, model, x, y, draws)` ->
            expected per-example values (float64 NumPy), computed here.
        student_filters: width of the student's first convolution.
        read_draws: `read_draws(model, x, y)` returns the random draws
            the next step will use (read through the public API), for
            terms that draw; the check then restores the seed state.
        unbiased: the reference is the expectation over the draws, not
            the value of one draw; value checks average many draws.
        copy_skip: why a student copying the teacher is not defined.
        reuse_skip: why "the same term in two Distillers" is not defined.
    """

    name: str
    reference: Callable
    term: Optional[Callable] = None
    model: Optional[Callable] = None
    student_filters: int = 3
    read_draws: Optional[Callable] = None
    unbiased: bool = False
    copy_skip: Optional[str] = None
    reuse_skip: Optional[str] = None

    @property
    def loss_key(self):
        """The logged metric holding the term's value."""
        if self.term is None:
            return "jacobian_penalty"
        return f"{self.term().name}_loss"

    def build(self, teacher, student, term=None):
        """The model under test, with default constructor arguments."""
        if self.term is None:
            return self.model(student)
        return kj.Distiller(teacher, student, [term or self.term()])

    def networks(self, copy=False, strides=1, student_filters=None):
        """A fresh `(teacher, student)` pair in the current dtype policy.

        `copy=True` gives a student of the teacher's architecture holding
        the teacher's weights.
        """
        teacher = net("t", TEACHER_SEED)
        filters = student_filters or self.student_filters
        student = net("s", STUDENT_SEED, filters=filters, strides=strides)
        if copy:
            student.set_weights(teacher.get_weights())
        return teacher, student


REGISTRY = {}


def register(case):
    if case.name in REGISTRY:
        raise ValueError(f"Case {case.name!r} is registered twice.")
    REGISTRY[case.name] = case
    return case


def accepts(cls, argument):
    """Whether `cls(...)` takes `argument` (options that may not exist)."""
    return argument in inspect.signature(cls.__init__).parameters


# Plain-tape Jacobians and NumPy helpers.


def _np(t):
    return np.asarray(t, dtype="float64")


def rows(fn, x, cotangents):
    """`(batch, rows, D)` rows `v_r^T d fn(x) / dx`, one plain tape pass each.

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


def np_unit(rows):
    norms = np.sqrt(np.sum(rows**2, axis=-1, keepdims=True))
    return rows / np.maximum(norms, 1e-30)


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


def jacobian_matching_reference(target, normalize, loss, k, temperature):
    def reference(teacher, student, model, x, y, draws):
        if loss == "squared":
            jt, js = jacobian(teacher, x), jacobian(student, x)
        else:
            jt = jacobian(probabilities(teacher, temperature), x)
            js = jacobian(probabilities(student, temperature), x)
        v = selected(target, logits(teacher, x), y, k, draws)
        t = np.einsum("brc,bcd->brd", v, jt)
        s = np.einsum("brc,bcd->brd", v, js)
        if normalize:
            t, s = np_unit(t), np_unit(s)
        if loss == "alignment":
            inner = np.sum(t * s, axis=-1)
            if normalize:
                return np.mean(1.0 - inner, axis=-1)
            p = np_softmax(logits(student, x) / temperature)
            p_selected = np.sum(v * p[:, None], axis=-1)
            return -np.sum(inner / np.maximum(p_selected, 1e-4), axis=-1)
        distances = np.sum((t - s) ** 2, axis=-1)
        if normalize:
            return np.mean(distances, axis=-1)
        scale = CLASSES / v.shape[1] if target == "random" else 1.0
        return scale * np.sum(distances, axis=-1)

    return reference


def frobenius_reference(teacher, student, model, x, y, draws):
    """`||J_T - J_S||_F^2`: what every estimator of the raw term targets."""
    return np.sum((jacobian(teacher, x) - jacobian(student, x)) ** 2, (1, 2))


def cotangent_draws(model, x, y):
    targets = model.teacher_targets(tf.convert_to_tensor(x), y)
    return {"cotangents": targets[0]["cotangents"]}


def jacobian_case(
    target,
    normalize=True,
    loss="squared",
    k=None,
    temperature=1.0,
    name=None,
    unbiased=False,
    **options,
):
    """A `JacobianMatching` case; `options` go to the constructor."""
    norm = "norm" if normalize else "raw"
    name = name or f"jacobian_{target}_{norm}" + (
        "_alignment" if loss == "alignment" else ""
    )
    kwargs = dict(target=target, normalize=normalize, loss=loss, **options)
    if k is not None:
        kwargs["k"] = k
    if loss == "alignment" and temperature != 1.0:
        kwargs["temperature"] = temperature
    random = target == "random" or "estimator" in options
    reference = (
        frobenius_reference
        if unbiased
        else jacobian_matching_reference(
            target, normalize, loss, k, temperature
        )
    )
    return register(
        Case(
            name=name,
            term=lambda: kj.JacobianMatching(**kwargs),
            reference=reference,
            read_draws=cotangent_draws if random and not unbiased else None,
            unbiased=unbiased,
        )
    )


for _target in ("teacher_top1", "label", "top_k", "all", "random"):
    for _normalize in (True, False):
        jacobian_case(_target, _normalize, k=2 if _target == "top_k" else None)
        if _target != "random":  # alignment needs class-indexed rows
            jacobian_case(
                _target,
                _normalize,
                loss="alignment",
                k=2 if _target == "top_k" else None,
            )

# Whole-Jacobian estimators: one line per estimator once the option exists.
# Their draws are input directions, so the values are checked as unbiased
# (or, for finite differences, nearly unbiased) estimates of the raw
# Frobenius term; the gradient, copy, round-trip, replica and precision
# checks use the same fixed draws as every other case.
if accepts(kj.JacobianMatching, "estimator"):
    jacobian_case("all", False, estimator="exact", name="estimator_exact_raw")
    for _estimator in ("vjp", "jvp", "finite_difference"):
        jacobian_case(
            "all",
            False,
            estimator=_estimator,
            name=f"estimator_{_estimator}_raw",
            unbiased=True,
        )


def kd_reference(temperature):
    def reference(teacher, student, model, x, y, draws):
        p = np_softmax(logits(teacher, x) / temperature)
        q = np_softmax(logits(student, x) / temperature)
        kl = np.sum(p * (np.log(p) - np.log(q)), axis=-1)
        return temperature**2 * kl

    return reference


def mse_reference(teacher, student, model, x, y, draws):
    return np.sum((logits(teacher, x) - logits(student, x)) ** 2, axis=-1)


register(
    Case("logits_kl", kd_reference(4.0), term=lambda: kj.LogitsDistillation())
)
register(
    Case(
        "logits_mse",
        mse_reference,
        term=lambda: kj.LogitsDistillation("mse"),
    )
)

NOISE_SAMPLES = 2


def noise_reference(teacher, student, model, x, y, draws):
    noisy = draws["noisy_inputs"]
    errors = np.sum((logits(teacher, noisy) - logits(student, noisy)) ** 2, -1)
    return np.mean(errors.reshape(NOISE_SAMPLES, len(x)), axis=0)


def noise_draws(model, x, y):
    targets = model.teacher_targets(tf.convert_to_tensor(x), y)
    return {"noisy_inputs": targets[0]["noisy_inputs"]}


register(
    Case(
        "noise",
        noise_reference,
        term=lambda: kj.NoiseDistillation(0.1, num_samples=NOISE_SAMPLES),
        read_draws=noise_draws,
    )
)


def feature_reference(teacher, student, model, x, y, draws):
    t = _np(features(teacher, PAIR[0], x))
    s = _np(features(student, PAIR[1], x))
    adapter = model.distillation_losses[0].adapter_layer
    if adapter is not None:
        kernel, bias = (_np(w) for w in adapter.get_weights())
        s = s @ kernel[0, 0] + bias
    return np.mean((t - s).reshape(len(x), -1) ** 2, axis=-1)


register(
    Case(
        "feature",
        feature_reference,
        term=lambda: kj.FeatureDistillation(*PAIR),
    )
)
register(
    Case(
        "feature_adapter",
        feature_reference,
        term=lambda: kj.FeatureDistillation(*PAIR, adapter="conv"),
        student_filters=2,
        copy_skip=(
            "the adapter maps 2 student channels to 3 teacher channels: "
            "no student of the teacher's architecture goes with it"
        ),
    )
)


def attention_transfer_reference(teacher, student, model, x, y, draws):
    t = np_unit(_np(attention_map(teacher, PAIR[0])(x)))
    s = np_unit(_np(attention_map(student, PAIR[1])(x)))
    return np.sum((t - s) ** 2, axis=-1)


def attention_jacobian_reference(normalize):
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


register(
    Case(
        "attention_transfer",
        attention_transfer_reference,
        term=lambda: kj.AttentionTransfer([PAIR]),
    )
)
for _normalize in (True, False):
    register(
        Case(
            f"attention_jacobian_{'norm' if _normalize else 'raw'}",
            attention_jacobian_reference(_normalize),
            term=lambda n=_normalize: kj.AttentionJacobianMatching(
                [PAIR], normalize=n
            ),
        )
    )


def penalty_reference(teacher, student, model, x, y, draws):
    return np.sum(jacobian(student, x) ** 2, axis=(1, 2))


NO_TEACHER = "the regularised model has no teacher to copy"
NO_TERM = "the regularised model has no term object to share"


def regularized_case(target, name=None, unbiased=False, **options):
    """A `JacobianRegularizedModel` case; `options` go to the model."""
    return register(
        Case(
            name or f"regularized_{target}",
            penalty_reference,
            model=lambda student: kj.JacobianRegularizedModel(
                student, target=target, **options
            ),
            unbiased=unbiased,
            copy_skip=NO_TEACHER,
            reuse_skip=NO_TERM,
        )
    )


regularized_case("all")
regularized_case("random", unbiased=True)
if accepts(kj.JacobianRegularizedModel, "estimator"):
    for _estimator in ("jvp", "finite_difference"):
        regularized_case(
            "all",
            name=f"regularized_{_estimator}",
            unbiased=True,
            estimator=_estimator,
        )
