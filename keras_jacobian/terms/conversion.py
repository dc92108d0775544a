"""Accepts Keras' own distillation losses where their meaning fits."""

import keras

from keras_jacobian.terms.base import DistillationTerm


def _keras_distillation_module():
    return getattr(keras, "distillation", None)


def convert_term(term):
    """Returns a `DistillationTerm` for `term`, or raises a clear error.

    `keras.distillation.LogitsDistillation` with a KL-divergence loss means
    knowledge distillation; it becomes `LogitsDistillation("kl",
    temperature)`, which applies the softmax and the `T^2` factor that the
    string form of Keras' term skips. Other Keras terms are refused with
    the equivalent to use.
    """
    if isinstance(term, DistillationTerm):
        return term
    module = _keras_distillation_module()
    if module is not None and isinstance(term, module.LogitsDistillation):
        from keras_jacobian.terms.logits import LogitsDistillation

        loss = term.loss
        name = getattr(loss, "name", None) or getattr(loss, "__name__", "")
        if isinstance(loss, keras.losses.KLDivergence) or name in (
            "kl_divergence",
            "kld",
        ):
            return LogitsDistillation("kl", temperature=term.temperature)
        raise ValueError(
            "keras.distillation.LogitsDistillation is accepted with a "
            "KL-divergence loss only (it then means Hinton's knowledge "
            f"distillation). Received loss={loss!r}. For squared error "
            "between logits use keras_jacobian.LogitsDistillation('mse')."
        )
    if module is not None and isinstance(term, module.FeatureDistillation):
        feature = _feature_distillation()
        if feature is not None:
            return feature.from_keras(term)
        raise ValueError(
            "keras.distillation.FeatureDistillation is not supported here; "
            "use keras_jacobian.FeatureDistillation."
        )
    raise ValueError(
        "Each distillation loss must be a keras_jacobian term "
        "(LogitsDistillation, JacobianMatching, NoiseDistillation, ...) or "
        "keras.distillation.LogitsDistillation with a KL loss. Received: "
        f"{term!r}"
    )


def _feature_distillation():
    try:
        from keras_jacobian.terms.features import FeatureDistillation
    except ImportError:
        return None
    return FeatureDistillation
