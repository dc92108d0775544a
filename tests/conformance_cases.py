"""The registry of the conformance test: every term and configuration.

A case is one entry of `REGISTRY`: a name (the pytest id), a factory of
the term (or of the whole model, for `JacobianRegularizedModel`) built
with default arguments apart from those that define the case, and a
reference function computing the expected per-example value
(`tests/conformance_references.py`). `tests/test_conformance.py` runs
every check on every registered case, so a new term gets them all by one
`register` call here.
"""

import dataclasses
from typing import Callable
from typing import Optional

import tensorflow as tf

import keras_jacobian as kj
from tests import conformance_references as ref


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration that every conformance check runs on.

    Attributes:
        name: the pytest id.
        reference: `reference(teacher, student, model, x, y, draws)` ->
            expected per-example values (float64 NumPy).
        term: factory of a fresh term (Distiller cases), else None.
        model: for a case without a term, `model(student)` builds the
            model (default arguments); None for Distiller cases.
        student_filters: width of the student's first convolution.
        read_draws: `read_draws(model, x, y)` returns the random draws
            the next step will use (read through the public API), for
            terms that draw; the check then restores the seed state.
        unbiased: the reference is the expectation over the draws, not
            the value of one draw; value checks average many draws.
        copy_skip: why a student copying the teacher is not defined.
        reuse_skip: why "the same term in two Distillers" is not defined.
        replica_tolerance: largest weight difference, relative to how far
            the weights moved, between 2 replicas and one device.
        weighted_reference: for terms scaled by a weighted mean over the
            batch (`normalize="teacher"`), `weighted_reference(weights)`
            gives the reference under those sample weights; for unbiased
            cases, `True` (no per-example reference: only the weighting's
            invariances are checked).
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
    replica_tolerance: float = 1e-6
    weighted_reference: Optional[Callable] = None

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
        return kj.Distiller(
            teacher, student, [term or self.term()], supervised_loss_weight=1.0
        )

    def networks(self, copy=False, strides=1, student_filters=None):
        """A fresh `(teacher, student)` pair in the current dtype policy.

        `copy=True` gives a student of the teacher's architecture holding
        the teacher's weights.
        """
        teacher = ref.net("t", ref.TEACHER_SEED)
        filters = student_filters or self.student_filters
        student = ref.net("s", ref.STUDENT_SEED, filters, strides)
        if copy:
            student.set_weights(teacher.get_weights())
        return teacher, student


REGISTRY = {}


def register(case):
    if case.name in REGISTRY:
        raise ValueError(f"Case {case.name!r} is registered twice.")
    REGISTRY[case.name] = case
    return case


def _teacher_targets(model, x, y):
    return model.teacher_targets(tf.convert_to_tensor(x), y)[0]


def cotangent_draws(model, x, y):
    return {"cotangents": _teacher_targets(model, x, y)["cotangents"]}


def noise_draws(model, x, y):
    return {"noisy_inputs": _teacher_targets(model, x, y)["noisy_inputs"]}


# JacobianMatching: every target, normalised and raw, squared and
# alignment (alignment needs class-indexed rows, so not "random").


def jacobian_case(
    target,
    normalize=True,
    loss="squared",
    k=None,
    name=None,
    unbiased=False,
    replica_tolerance=1e-6,
    **options,
):
    """A `JacobianMatching` case; `options` go to the constructor."""
    norm = {True: "norm", False: "raw", "teacher": "rel"}[normalize]
    alignment = "_alignment" if loss == "alignment" else ""
    name = name or f"jacobian_{target}_{norm}{alignment}"
    if target == "all":
        options.setdefault("estimator", "exact")
    kwargs = dict(target=target, normalize=normalize, loss=loss, **options)
    if k is not None:
        kwargs["k"] = k
    weighted = None
    if unbiased:
        reference = (
            ref.relative_frobenius if normalize == "teacher" else ref.frobenius
        )
        weighted = True if normalize == "teacher" else None
    else:
        reference = ref.jacobian_matching(target, normalize, loss, k, 1.0)
        if normalize == "teacher":

            def weighted(weights):
                return ref.jacobian_matching(
                    target, normalize, loss, k, 1.0, weights
                )

    return register(
        Case(
            name=name,
            term=lambda: kj.JacobianMatching(**kwargs),
            reference=reference,
            read_draws=cotangent_draws if target == "random" else None,
            unbiased=unbiased,
            replica_tolerance=replica_tolerance,
            weighted_reference=weighted,
        )
    )


for _target in ("teacher_top1", "label", "top_k", "all", "random"):
    _k = 2 if _target == "top_k" else None
    for _normalize in (True, False, "teacher"):
        if _target == "random" and _normalize is True:
            continue  # refused: no projection estimates unit rows
        if _target in ("label", "top_k") and _normalize == "teacher":
            continue  # the same scaling as "teacher_top1" and "all"
        jacobian_case(_target, _normalize, k=_k)
        if _target != "random" and _normalize != "teacher":
            jacobian_case(_target, _normalize, loss="alignment", k=_k)


def estimator_case(estimator, num_projections=1, normalize=False):
    """`JacobianMatching(target="all", estimator=...)`, raw or relative.

    Every estimator but `"exact"` draws projections (input directions
    for `"jvp"` and `"finite_difference"`), so its value is checked as an
    unbiased (finite differences: nearly unbiased) estimate of the raw
    Frobenius term; the gradient, copy, round-trip, replica, precision
    and reuse checks hold the draws fixed like every other case. With
    `normalize="teacher"` the target is the relative error
    `||J_T - J_S||_F^2 / ||J_T||_F^2`; `normalize=True` is refused.
    """
    suffix = "" if num_projections == 1 else f"_{num_projections}"
    suffix += "_rel" if normalize == "teacher" else "_raw"
    # Differences divide float32 round-off, which depends on how the batch
    # is split across replicas, by the relative step c (4e-3 central,
    # 2.4e-4 one-sided): u / c is about 1.5e-5 and 2.5e-4.
    tolerance = {"finite_difference": 1e-4, "forward_difference": 3e-3}
    return jacobian_case(
        "all",
        normalize=normalize,
        name=f"jacobian_{estimator}{suffix}",
        unbiased=estimator != "exact",
        estimator=estimator,
        num_projections=None if estimator == "exact" else num_projections,
        replica_tolerance=tolerance.get(estimator, 1e-6),
    )


# Whole-Jacobian estimators: one line each.
estimator_case("exact")
estimator_case("vjp")
estimator_case("jvp")
estimator_case("jvp", num_projections=4)
estimator_case("finite_difference")
estimator_case("forward_difference")
# The relative error, what `JacobianMatching(target="all")` optimises.
# ("random" is "vjp"; the difference estimators share one scaling.)
estimator_case("jvp", normalize="teacher")
estimator_case("forward_difference", normalize="teacher")


# Output-only terms.

register(
    Case(
        "logits_kl",
        ref.knowledge_distillation(4.0),  # the default temperature
        term=lambda: kj.LogitsDistillation(temperature=4.0, loss="kd"),
    )
)
register(
    Case(
        "logits_mse",
        ref.squared_logits,
        term=lambda: kj.LogitsDistillation(loss="squared_logits"),
    )
)
register(
    Case(
        "noise",
        ref.noise(num_samples=2),
        term=lambda: kj.NoiseDistillation(0.1, num_samples=2),
        read_draws=noise_draws,
    )
)


# Intermediate layers.

register(
    Case(
        "feature",
        ref.feature_mse,
        term=lambda: kj.FeatureDistillation("mse", *ref.PAIR),
    )
)
register(
    Case(
        "feature_adapter",
        ref.feature_mse,
        term=lambda: kj.FeatureDistillation("mse", *ref.PAIR, adapter="conv"),
        student_filters=2,
        copy_skip=(
            "the adapter maps 2 student channels to 3 teacher channels: "
            "no student of the teacher's architecture goes with it"
        ),
    )
)
register(
    Case(
        "attention_transfer",
        ref.attention_transfer,
        term=lambda: kj.AttentionTransfer([ref.PAIR]),
    )
)
for _normalize in (True, False):
    register(
        Case(
            f"attention_jacobian_{'norm' if _normalize else 'raw'}",
            ref.attention_jacobian(_normalize),
            term=lambda n=_normalize: kj.AttentionJacobianMatching(
                [ref.PAIR], normalize=n
            ),
        )
    )


# The teacher-free Jacobian penalty.


def regularized_case(
    target, name=None, unbiased=False, replica_tolerance=1e-6, **options
):
    """A `JacobianRegularizedModel` case; `options` go to the model."""
    return register(
        Case(
            name or f"regularized_{target}",
            ref.penalty,
            model=lambda student: kj.JacobianRegularizedModel(
                student, target=target, **options
            ),
            unbiased=unbiased,
            copy_skip="the regularised model has no teacher to copy",
            reuse_skip="the regularised model has no term object to share",
            replica_tolerance=replica_tolerance,
        )
    )


regularized_case("all")
regularized_case("random", unbiased=True)
# The penalty's estimators, one line each.
regularized_case("all", "regularized_jvp", True, estimator="jvp")
regularized_case(
    "all",
    "regularized_finite_difference",
    True,
    estimator="finite_difference",
)
regularized_case(
    "all",
    "regularized_forward_difference",
    True,
    estimator="forward_difference",
    replica_tolerance=3e-3,
)
