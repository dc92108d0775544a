"""Models and the registry of named training-step variants to time.

A variant is a function `build(setup) -> (model, batch)` that returns a
compiled Keras model and the batch one of its training steps consumes,
registered with a name and the name of the variant it is compared with
(its baseline). To add one (e.g. a new term), write:

```python
@register_variant("attention", baseline="activation")
def _attention(setup):
    terms = [LogitsDistillation(), AttentionTransfer(ATTENTION_PAIRS)]
    return setup.distiller(terms), setup.batch
```
"""

import collections

import keras

from keras_jacobian.distiller import Distiller
from keras_jacobian.experiments import models
from keras_jacobian.regularized import JacobianRegularizedModel
from keras_jacobian.terms.attention import AttentionJacobianMatching
from keras_jacobian.terms.attention import AttentionTransfer
from keras_jacobian.terms.jacobian import JacobianMatching
from keras_jacobian.terms.logits import LogitsDistillation
from keras_jacobian.terms.noise import NoiseDistillation

ACTIVATION = "activation"
# Early layers: the paper found shallow attention maps easier to match.
ATTENTION_PAIRS = [("block1_out", "block1_out")]
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


def build_models(kind, input_shape, num_classes):
    """The (teacher, student) pair named `kind`.

    `"vgg"`: the library's VGG-9 teacher and VGG-4 student
    (`keras_jacobian.experiments.models`, width 64) without BatchNorm and
    dropout and with a flattening head, layers the PyTorch reference rebuilds
    one to one; `"tiny"`: the same at width 4, for tests.
    """
    widths = {"vgg": 64, "tiny": 4}
    if kind not in widths:
        raise ValueError(
            f"`--models` must be 'vgg' or 'tiny'. Received: {kind!r}"
        )
    options = dict(
        width=widths[kind], batch_norm=False, dropout=0.0, pooling="flatten"
    )
    return (
        models.vgg9(input_shape, num_classes, **options),
        models.vgg4(input_shape, num_classes, **options),
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
            supervised_loss_weight=1.0,
        )
        return self.compile(model, jit_compile)

    def cached_batch(self, model):
        x, y = self.batch
        # A tuple: tf.data would read a list as one tensor.
        targets = tuple(model.teacher_targets(x, y))
        return ({"student": x, "teacher_targets": targets}, y)


def _kd():
    return LogitsDistillation(temperature=4.0, loss="kd")


@register_variant(ACTIVATION, baseline=ACTIVATION)
def _activation(setup):
    return setup.distiller([_kd()]), setup.batch


def _jacobian_variant(name, fraction=1.0, default=True, **kwargs):
    @register_variant(name, fraction=fraction, default=default)
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
_jacobian_variant("jacobian_all", fraction=0.2, target="all", estimator="exact")
# `JacobianMatching(target="all")` with its defaults (one output
# projection, relative to the teacher's rows).
_jacobian_variant("jacobian_all_default", target="all")
_jacobian_variant("jacobian_random1", target="random", num_projections=1)
_jacobian_variant("jacobian_random4", target="random", num_projections=4)

# The whole Jacobian along random input directions (docs:
# docs/performance-projections.md). The benchmark's students have ReLU
# and max pooling: the difference estimators refuse them (their weight
# gradients are wrong there, keras_jacobian/kinks.py), so their variants
# run only when named, and record the refusal.
ESTIMATOR_NAMES = (
    ("forward_difference", "fwd"),
    ("finite_difference", "fd"),
    ("jvp", "jvp"),
)
for _estimator, _short in ESTIMATOR_NAMES:
    for _count in (1, 4):
        _jacobian_variant(
            f"jacobian_{_short}{_count}",
            target="all",
            estimator=_estimator,
            num_projections=_count,
            normalize=False,
            default=_estimator == "jvp",
        )


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
    model = JacobianRegularizedModel(setup.fresh_student(), weight=0.01, seed=0)
    return setup.compile(model), setup.batch


def _regularized_variant(name, default=True, **kwargs):
    @register_variant(name, baseline=PLAIN, default=default)
    def build(setup):
        model = JacobianRegularizedModel(
            setup.fresh_student(),
            weight=0.01,
            seed=0,
            **kwargs,
        )
        return setup.compile(model), setup.batch

    return build


for _estimator, _short in ESTIMATOR_NAMES:
    for _count in (1, 4):
        _regularized_variant(
            f"regularized_{_short}{_count}",
            target="all",
            estimator=_estimator,
            num_projections=_count,
            default=_estimator == "jvp",
        )


# XLA: not run by default (see docs/performance.md).


@register_variant("activation_xla", default=False)
def _activation_xla(setup):
    return setup.distiller([_kd()], jit_compile=True), setup.batch


@register_variant("jacobian_top1_xla", baseline="activation_xla", default=False)
def _top1_xla(setup):
    terms = [_kd(), JacobianMatching("teacher_top1")]
    return setup.distiller(terms, jit_compile=True), setup.batch


@register_variant("jacobian_fwd1_xla", baseline="activation_xla", default=False)
def _fwd1_xla(setup):
    term = JacobianMatching(
        "all", estimator="forward_difference", normalize=False
    )
    return setup.distiller([_kd(), term], jit_compile=True), setup.batch


@register_variant("attention_transfer")
def _attention_transfer(setup):
    term = AttentionTransfer(ATTENTION_PAIRS)
    return setup.distiller([_kd(), term]), setup.batch


@register_variant("attention_jacobian")
def _attention_jacobian(setup):
    term = AttentionJacobianMatching(ATTENTION_PAIRS)
    return setup.distiller([_kd(), term]), setup.batch
