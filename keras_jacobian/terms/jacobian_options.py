"""The options of `JacobianMatching`: checked, and their defaults resolved.

`resolve_options` turns the constructor's arguments into the values the
term keeps (`None` becomes the estimator, projection count and
normalisation that fit the target), refusing combinations that cannot
be computed, with a message saying what to use instead.
"""

from keras_jacobian import validation
from keras_jacobian.terms import whole

TARGETS = ("teacher_top1", "label", "top_k", "all", "random")
CLASS_INDEXED = ("teacher_top1", "label", "top_k", "all")
# What `JacobianMatching(target="all")` means when nothing else is given.
RECOMMENDED = {
    "estimator": "vjp",
    "num_projections": 1,
    "normalize": whole.TEACHER,
}
LOSSES = ("squared", "alignment")


def resolve_options(
    target,
    k,
    num_projections,
    normalize,
    loss,
    temperature,
    estimator,
    step_size,
):
    """Checks `JacobianMatching`'s arguments and resolves their defaults.

    Returns:
        A dict with the resolved `target`, `k`, `num_projections`,
        `normalize`, `loss`, `temperature`, `estimator` and `step_size`.

    Raises:
        ValueError: for an unknown value or a combination that cannot be
            computed, saying what to use instead.
    """
    if target not in TARGETS:
        raise ValueError(
            f"`target` must be one of {TARGETS}. Received: target={target!r}"
        )
    if target == "top_k":
        if k is None:
            raise ValueError(
                f"target='top_k' needs an integer `k` >= 1. Received: k={k!r}"
            )
        k = validation.check_count(k, "k")
    elif k is not None:
        raise ValueError(
            f"`k` is only used with target='top_k'. Received: k={k!r} "
            f"with target={target!r}. Remove `k` or set "
            "target='top_k'."
        )
    if num_projections is not None:
        num_projections = validation.check_count(
            num_projections, "num_projections"
        )
    if loss not in LOSSES:
        raise ValueError(
            f"`loss` must be one of {LOSSES}. Received: loss={loss!r}"
        )
    if loss == "alignment" and target == "random":
        raise ValueError(
            "loss='alignment' weights each class's row by 1 / p_S of "
            "that class, which random projections do not have. Use a "
            "class-indexed target ('teacher_top1', 'label', 'top_k', "
            "'all') with loss='alignment'."
        )
    temperature = validation.check_number(
        temperature, "temperature", strict=True
    )
    if normalize is not None:
        normalize = whole.check_normalize(normalize)
    if target == "all" and estimator is None:
        # Unit rows and the alignment loss are computed exactly only.
        if normalize is True or loss == "alignment":
            estimator = "exact"
        else:
            estimator = RECOMMENDED["estimator"]
            if num_projections is None:
                num_projections = RECOMMENDED["num_projections"]
    estimator = check_estimator_options(target, estimator, loss, step_size)
    if num_projections is not None and estimator == "exact":
        raise ValueError(
            "`num_projections` is the number of random vectors of the "
            "estimators 'vjp', 'jvp' and the differences; "
            "estimator='exact' computes every selected row and draws "
            f"none. Received: num_projections={num_projections} with "
            f"target={target!r}, estimator='exact'. Remove "
            "`num_projections`, or estimate the whole Jacobian with "
            "target='all', estimator='vjp' (or 'jvp')."
        )
    normalize = check_normalize(target, estimator, normalize, loss)
    return {
        "target": target,
        "k": k,
        "num_projections": 1 if num_projections is None else num_projections,
        "normalize": normalize,
        "loss": loss,
        "temperature": float(temperature),
        "estimator": estimator,
        "step_size": None if step_size is None else float(step_size),
    }


def check_estimator_options(target, estimator, loss, step_size):
    """The shared rules, then those of matching a teacher's rows."""
    estimator = validation.check_estimator(target, estimator, step_size)
    if estimator != "exact" and target not in ("all", "random"):
        raise ValueError(
            f"estimator={estimator!r} estimates the whole Jacobian "
            "(every class), so it needs target='all'. Received: "
            f"target={target!r}. Use target='all', or estimator='exact' "
            "(or None) for selected rows."
        )
    if estimator != "exact" and loss == "alignment":
        raise ValueError(
            "loss='alignment' weights each class's row by 1 / p_S of that "
            f"class, which estimator={estimator!r} does not compute. Use "
            "estimator='exact' with loss='alignment'."
        )
    return estimator


def check_normalize(target, estimator, normalize, loss):
    """Resolves `normalize=None` and checks it against the estimator."""
    if normalize is None:
        if target in ("all", "random") and loss != "alignment":
            return RECOMMENDED["normalize"]
        return True
    normalize = whole.check_normalize(normalize)
    if normalize is True and estimator != "exact":
        raise ValueError(
            "normalize=True unit-normalises every class row of both "
            "networks; the student's row norms are not linear in its "
            "Jacobian, so no projection estimates that loss without bias "
            f"and estimator={estimator!r} cannot compute it. Use "
            "normalize='teacher' (the error relative to the teacher's "
            "mean squared row norm) or normalize=False, or "
            "estimator='exact'."
        )
    if normalize == whole.TEACHER and loss == "alignment":
        raise ValueError(
            "normalize='teacher' scales squared distances; "
            "loss='alignment' has its own weights 1 / p_S. Use "
            "normalize=True or False with loss='alignment'."
        )
    return normalize


def check_same_inputs(teacher_input, student_input):
    if tuple(teacher_input[1:]) != tuple(student_input[1:]):
        raise ValueError(
            "Input-direction estimators ('jvp', 'finite_difference', "
            "'forward_difference') move "
            "both networks along the same input directions, so their "
            f"input shapes must agree. Received: teacher {teacher_input}, "
            f"student {student_input}. Use estimator='exact' or 'vjp' for "
            "networks at different resolutions."
        )
