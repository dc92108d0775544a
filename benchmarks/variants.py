"""Models and the registry of named training-step variants to time.

A variant is a function `build(setup) -> (model, batch)` that returns a
compiled Keras model and the batch one of its training steps consumes,
registered with a name and the name of the variant it is compared with
(its baseline). To add one (e.g. a new term), write:

```python
@register_variant("attention", baseline="activation")
def _attention(setup):
    terms = [LogitsDistillation(), AttentionTransfer(["block2_out"])]
    return setup.distiller(terms), setup.batch
```
"""

import collections

import keras
from keras import layers

from keras_jacobian.distiller import Distiller
from keras_jacobian.regularized import JacobianRegularizedModel
from keras_jacobian.terms.jacobian import JacobianMatching
from keras_jacobian.terms.logits import LogitsDistillation
from keras_jacobian.terms.noise import NoiseDistillation

ACTIVATION = "activation"
PLAIN = "plain"

Variant = collections.namedtuple(
    "Variant", ["name", "baseline", "build", "default", "step_fraction"]
)
VARIANTS = {}


def register_variant(name, baseline=ACTIVATION, default=True, fraction=1.0):
    """Registers `build(setup) -> (model, batch)` under `name`.

    Args:
        name: the variant's name in the table.
        baseline: the variant whose step time is the ratio's denominator.
        default: run when `--variants` is not given.
        fraction: share of `--steps` to time per round (for very slow
            variants); at least one step is timed per round.
    """

    def wrap(build):
        VARIANTS[name] = Variant(name, baseline, build, default, fraction)
        return build

    return wrap


# Models. The library's reference models replace these with one line in
# `build_models` (`--models=library`).


def _conv_blocks(x, blocks):
    for i, widths in enumerate(blocks, start=1):
        for j, width in enumerate(widths, start=1):
            last = j == len(widths)
            x = layers.Conv2D(
                width, 3, padding="same", name=f"block{i}_conv{j}"
            )(x)
            x = layers.Activation(
                "relu", name=f"block{i}_out" if last else f"block{i}_relu{j}"
            )(x)
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    return layers.Flatten(name="flatten")(x)


def vgg9(input_shape, num_classes, width=64):
    """VGG-9: 7 convolutions (w-w, 2w-2w, 4w-4w-4w) and 2 dense layers."""
    inputs = keras.Input(input_shape, name="input")
    x = _conv_blocks(
        inputs,
        [[width] * 2, [2 * width] * 2, [4 * width] * 3],
    )
    x = layers.Dense(8 * width, activation="relu", name="fc1")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="vgg9")


def vgg4(input_shape, num_classes, width=32):
    """VGG-4: 3 convolutions (w, 2w, 4w) and 1 dense layer."""
    inputs = keras.Input(input_shape, name="input")
    x = _conv_blocks(inputs, [[width], [2 * width], [4 * width]])
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="vgg4")


def build_models(kind, input_shape, num_classes):
    """The (teacher, student) pair named `kind`.

    `"vgg"`: the VGG-9 teacher and VGG-4 student defined here;
    `"library"`: `keras_jacobian.models.vgg9` / `vgg4`; `"tiny"`: narrow
    versions for tests.
    """
    if kind == "library":
        from keras_jacobian import models

        return (
            models.vgg9(input_shape, num_classes),
            models.vgg4(input_shape, num_classes),
        )
    if kind == "vgg":
        return vgg9(input_shape, num_classes), vgg4(input_shape, num_classes)
    if kind == "tiny":
        return (
            vgg9(input_shape, num_classes, width=4),
            vgg4(input_shape, num_classes, width=4),
        )
    raise ValueError(
        f"`--models` must be 'vgg', 'library' or 'tiny'. Received: {kind!r}"
    )


class Setup:
    """What variants build from: the models, one batch, the options."""

    def __init__(
        self, teacher, student, batch, jit_compile=False, run_eagerly=False
    ):
        self.teacher = teacher
        self.student = student
        self.batch = batch
        self.jit_compile = jit_compile
        self.run_eagerly = run_eagerly

    def fresh_student(self):
        clone = keras.models.clone_model(self.student)
        clone.set_weights(self.student.get_weights())
        return clone

    def compile(self, model, jit_compile=None):
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=(
                self.jit_compile if jit_compile is None else jit_compile
            ),
            run_eagerly=self.run_eagerly,
        )
        return model

    def distiller(self, terms, weights=None, jit_compile=None):
        model = Distiller(
            self.teacher,
            self.fresh_student(),
            terms,
            distillation_loss_weights=weights,
            seed=0,
            check_differentiable=False,
        )
        return self.compile(model, jit_compile)

    def cached_batch(self, model):
        x, y = self.batch
        # A tuple: tf.data would read a list as one tensor.
        targets = tuple(model.teacher_targets(x, y))
        return ({"student": x, "teacher_targets": targets}, y)


def _kd():
    return LogitsDistillation("kl", temperature=4.0)


@register_variant(ACTIVATION, baseline=ACTIVATION)
def _activation(setup):
    return setup.distiller([_kd()]), setup.batch


def _jacobian_variant(name, fraction=1.0, **kwargs):
    @register_variant(name, fraction=fraction)
    def build(setup):
        return (
            setup.distiller([_kd(), JacobianMatching(**kwargs)]),
            setup.batch,
        )

    return build


_jacobian_variant("jacobian_top1", target="teacher_top1")
_jacobian_variant("jacobian_label", target="label")
_jacobian_variant("jacobian_top5", target="top_k", k=5)
_jacobian_variant("jacobian_top10", target="top_k", k=10)
_jacobian_variant("jacobian_all", fraction=0.2, target="all")
_jacobian_variant("jacobian_random1", target="random", num_projections=1)
_jacobian_variant("jacobian_random4", target="random", num_projections=4)


@register_variant("noise")
def _noise(setup):
    terms = [_kd(), NoiseDistillation(stddev=0.1)]
    return setup.distiller(terms), setup.batch


@register_variant("jacobian_weight0")
def _weight0(setup):
    terms = [_kd(), JacobianMatching("teacher_top1")]
    return setup.distiller(terms, weights=[1.0, 0.0]), setup.batch


@register_variant("cached_activation")
def _cached_activation(setup):
    model = setup.distiller([_kd()])
    return model, setup.cached_batch(model)


@register_variant("cached_jacobian_top1")
def _cached_top1(setup):
    model = setup.distiller([_kd(), JacobianMatching("teacher_top1")])
    return model, setup.cached_batch(model)


@register_variant(PLAIN, baseline=PLAIN)
def _plain(setup):
    return setup.compile(setup.fresh_student()), setup.batch


@register_variant("regularized_random1", baseline=PLAIN)
def _regularized(setup):
    model = JacobianRegularizedModel(
        setup.fresh_student(), weight=0.01, seed=0, check_differentiable=False
    )
    return setup.compile(model), setup.batch


# XLA: not run by default (see docs/performance.md).


@register_variant("activation_xla", default=False)
def _activation_xla(setup):
    return setup.distiller([_kd()], jit_compile=True), setup.batch


@register_variant("jacobian_top1_xla", baseline="activation_xla", default=False)
def _top1_xla(setup):
    terms = [_kd(), JacobianMatching("teacher_top1")]
    return setup.distiller(terms, jit_compile=True), setup.batch


def _register_attention():
    """Registers the attention terms when the library has them."""
    try:
        from keras_jacobian.terms import attention
    except ImportError:
        return
    for class_name in ("AttentionTransfer", "AttentionJacobianMatching"):
        term_class = getattr(attention, class_name, None)
        if term_class is None:
            continue

        def build(setup, term_class=term_class):
            term = term_class(["block2_out"])
            return setup.distiller([_kd(), term]), setup.batch

        register_variant(class_name.lower())(build)


_register_attention()
