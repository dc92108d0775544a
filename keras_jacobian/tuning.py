"""Hyper-parameter search for distillation with keras-tuner."""

import inspect

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from keras_jacobian.distiller import Distiller
from keras_jacobian.terms.jacobian import JacobianMatching
from keras_jacobian.terms.logits import LogitsDistillation

TUNERS = ("random", "bayesian", "hyperband")
OBJECTIVE = "val_accuracy"


def _check_kwargs(kwargs):
    """Refuses unknown arguments, naming the renamed one."""
    if "student_loss_weights" in kwargs:
        raise TypeError(
            "`DistillerHyperModel` takes `supervised_loss_weights`: choices "
            "of the cross-entropy's weight, independent of the terms' "
            "weights (`Distiller(supervised_loss_weight=...)`). Keras' "
            "`student_loss_weight` is a convex mix `w * CE + (1 - w) * "
            "terms`, which the search does not use. Rename the argument. "
            f"Received: student_loss_weights={kwargs['student_loss_weights']!r}"
        )
    if kwargs:
        raise TypeError(
            "`DistillerHyperModel` got unexpected keyword arguments. "
            f"Received: {sorted(kwargs)}"
        )


class DistillerHyperModel(kt.HyperModel):
    """A keras-tuner `HyperModel` that builds one `Distiller` per trial.

    Searches the loss of Srinivas & Fleuret (2018),
    `supervised_loss_weight * CE + activation_weight * KD +
    jacobian_weight * JacobianMatching`, over:

    - `supervised_loss_weight`: weight of the cross-entropy on labels,
      independent of the terms' weights (`Distiller(
      supervised_loss_weight=...)`, not Keras' convex mix
      `student_loss_weight`), in `supervised_loss_weights` (0 trains from
      the teacher alone);
    - `use_activation`, then (when true) `activation_weight` (log scale in
      `weight_range`) and `temperature` (in `temperatures`);
    - `use_jacobian`, then (when true) `jacobian_weight` (log scale in
      `weight_range`) and `jacobian_target` (in `jacobian_targets`).

    Log-scale sampling cannot reach 0, so each term is switched off by its
    own boolean; the weight and the settings of a term switched off are
    inactive (`None` in the trial's values). A term switched off is left out
    of the `Distiller`; when both are off, the activation term is kept with
    weight 0 (a `Distiller` needs one term).

    Each trial builds a fresh student with `student_builder`, wraps it with
    the (shared, frozen) teacher, compiles it with Adam, sparse categorical
    cross-entropy on logits and the `"accuracy"` metric, and builds it with a
    dummy call, so that `tuner.get_best_models()` can reload it. The
    objective is the student's validation accuracy,
    `kt.Objective("val_accuracy", "max")`. keras-tuner clears the Keras
    session before each trial (the dtype policy too), so the policy is set
    inside `build`.

    Args:
        teacher: a trained Keras model returning logits.
        student_builder: a callable returning a new, untrained student; it is
            given the trial's `HyperParameters` when it takes an argument
            (so that it may define hyper-parameters of its own).
        learning_rate: Adam learning rate.
        activation_loss: `LogitsDistillation`'s `loss`: `"kd"` (Hinton's
            KD, the default), `"squared_logits"` (logit matching) or a
            Keras loss (with its Keras meaning).
        supervised_loss_weights: choices of the cross-entropy weight,
            numbers `>= 0`.
        weight_range: `(low, high)`, the log-scale range of the activation
            and Jacobian weights.
        temperatures: choices of the KD temperature.
        jacobian_targets: choices of `JacobianMatching(target=...)`.
        jacobian_normalize: `JacobianMatching(normalize=...)`; `None`
            for each target's default.
        dtype_policy: a Keras dtype policy name set in every trial, or
            `None` to keep the default.
        seed: seed of the distiller's random draws.
        name: name of the hyper-model.

    Returns:
        `build(hp)` returns a compiled, built `Distiller`.

    Example:

    ```python
    hypermodel = keras_jacobian.tuning.DistillerHyperModel(
        teacher,
        lambda: keras_jacobian.experiments.models.vgg4((8, 8, 1), 10, width=16),
    )
    tuner = keras_jacobian.tuning.build_tuner(
        "random", hypermodel, directory="/tmp/tune", max_trials=10
    )
    tuner.search(train_ds, validation_data=val_ds, epochs=10)
    print(keras_jacobian.tuning.best_values(tuner))
    ```
    """

    def __init__(
        self,
        teacher,
        student_builder,
        *,
        learning_rate=1e-3,
        activation_loss="kd",
        supervised_loss_weights=(0.0, 0.5, 1.0),
        weight_range=(1e-2, 1e2),
        temperatures=(1.0, 2.0, 4.0, 8.0),
        jacobian_targets=("teacher_top1", "label", "random"),
        jacobian_normalize=None,
        dtype_policy=None,
        seed=None,
        name=None,
        **kwargs,
    ):
        _check_kwargs(kwargs)
        super().__init__(name=name, tunable=True)
        if not isinstance(teacher, keras.Model):
            raise ValueError(
                "Expected `teacher` to be a keras.Model. Received: "
                f"teacher={teacher!r}."
            )
        if not callable(student_builder):
            raise ValueError(
                "Expected `student_builder` to be a callable returning a new "
                f"student keras.Model. Received: {student_builder!r}. Pass "
                "e.g. `lambda: keras_jacobian.experiments.models.vgg4(shape, "
                "classes)`."
            )
        low, high = (float(v) for v in weight_range)
        if not 0 < low < high:
            raise ValueError(
                "Expected `weight_range=(low, high)` with 0 < low < high "
                f"(log-scale sampling). Received: {weight_range!r}. Terms "
                "are switched off by their own boolean hyper-parameter."
            )
        if not supervised_loss_weights or min(supervised_loss_weights) < 0:
            raise ValueError(
                "Expected non-negative `supervised_loss_weights`. Received: "
                f"supervised_loss_weights={supervised_loss_weights!r}."
            )
        if not temperatures or min(temperatures) <= 0:
            raise ValueError(
                f"Expected positive `temperatures`. Received: {temperatures!r}."
            )
        if not jacobian_targets:
            raise ValueError(
                "Expected at least one of `jacobian_targets`, e.g. "
                "('teacher_top1',)."
            )
        for target in jacobian_targets:
            JacobianMatching(target=target)  # Validates the name early.
        LogitsDistillation(loss=activation_loss)
        self.teacher = teacher
        self.student_builder = student_builder
        self.learning_rate = float(learning_rate)
        self.activation_loss = activation_loss
        self.supervised_loss_weights = [
            float(w) for w in supervised_loss_weights
        ]
        self.weight_range = (low, high)
        self.temperatures = [float(t) for t in temperatures]
        self.jacobian_targets = list(jacobian_targets)
        self.jacobian_normalize = jacobian_normalize
        self.dtype_policy = dtype_policy
        self.seed = seed

    def _student(self, hp):
        try:
            params = inspect.signature(self.student_builder).parameters
        except (TypeError, ValueError):
            params = {}
        if params:
            return self.student_builder(hp)
        return self.student_builder()

    def fit(self, hp, model, *args, **kwargs):
        """Trains `model`; the search's `val_accuracy` needs validation data.

        Raises `keras_tuner.errors.FatalValueError` (which stops the
        search instead of failing the trial quietly) when
        `validation_data` is missing or empty (and no `validation_split`).
        """
        if not kwargs.get("validation_split"):
            _check_validation_data(kwargs.get("validation_data"))
        return model.fit(*args, **kwargs)

    def build(self, hp):
        if self.dtype_policy is not None:
            keras.config.set_dtype_policy(self.dtype_policy)
        low, high = self.weight_range
        supervised_loss_weight = hp.Choice(
            "supervised_loss_weight",
            self.supervised_loss_weights,
            default=max(self.supervised_loss_weights),
        )
        one = 1.0 if low <= 1.0 <= high else None
        terms, weights = [], []
        use_activation = hp.Boolean("use_activation", default=True)
        with hp.conditional_scope("use_activation", [True]):
            activation_weight = hp.Float(
                "activation_weight", low, high, sampling="log", default=one
            )
            temperature = hp.Choice("temperature", self.temperatures)
        use_jacobian = hp.Boolean("use_jacobian", default=True)
        with hp.conditional_scope("use_jacobian", [True]):
            jacobian_weight = hp.Float(
                "jacobian_weight", low, high, sampling="log", default=one
            )
            jacobian_target = hp.Choice(
                "jacobian_target", self.jacobian_targets
            )
        if use_activation:
            terms.append(
                LogitsDistillation(
                    temperature=float(temperature), loss=self.activation_loss
                )
            )
            weights.append(float(activation_weight))
        if use_jacobian:
            terms.append(
                JacobianMatching(
                    target=jacobian_target, normalize=self.jacobian_normalize
                )
            )
            weights.append(float(jacobian_weight))
        if not terms:
            terms.append(LogitsDistillation(loss=self.activation_loss))
            weights.append(0.0)
        student = self._student(hp)
        distiller = Distiller(
            self.teacher,
            student,
            terms,
            distillation_loss_weights=weights,
            supervised_loss_weight=float(supervised_loss_weight),
            seed=self.seed,
        )
        distiller.compile(
            optimizer=keras.optimizers.Adam(self.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        # Built now when the sizes are known (a student of unknown
        # spatial size takes the teacher's, else builds on its first batch).
        shape = list(student.input_shape[1:])
        known = getattr(self.teacher, "input_shape", None)
        if isinstance(known, tuple) and len(known) == len(shape) + 1:
            shape = [
                s if s is not None else t for s, t in zip(shape, known[1:])
            ]
        if None not in shape:
            distiller(np.zeros([1] + shape, "float32"))
        return distiller


def _num_examples(data):
    """Examples in `validation_data`, or None when it cannot be counted."""
    if isinstance(data, tf.data.Dataset):
        count = int(data.cardinality())
        return None if count < 0 else count
    if isinstance(data, (tuple, list)) and data:
        data = data[0]
    while isinstance(data, dict) and data:
        data = next(iter(data.values()))
    shape = getattr(data, "shape", None)
    if shape is not None and len(shape):
        return shape[0]
    return None


def _check_validation_data(data):
    fix = (
        "Pass `validation_data=(x_val, y_val)` (or a dataset) with at least "
        "one example, or `validation_split`, to `tuner.search(...)`: the "
        f"search maximises `{OBJECTIVE}`."
    )
    if data is None:
        raise kt.errors.FatalValueError(
            f"Expected `validation_data`. Received none. {fix}"
        )
    if _num_examples(data) == 0:
        raise kt.errors.FatalValueError(
            f"Expected non-empty `validation_data`. Received 0 examples. {fix}"
        )


def build_tuner(
    kind,
    hypermodel,
    directory,
    project_name="distill",
    *,
    max_trials=10,
    max_epochs=10,
    overwrite=False,
    seed=None,
    **kwargs,
):
    """Builds a keras-tuner tuner by name, maximising `val_accuracy`.

    Args:
        kind: `"random"` (`kt.RandomSearch`), `"bayesian"`
            (`kt.BayesianOptimization`) or `"hyperband"` (`kt.Hyperband`).
        hypermodel: a `kt.HyperModel`, e.g. `DistillerHyperModel`.
        directory: results directory; with `overwrite=False` an existing
            search there is resumed (finished trials are not run again).
        project_name: subdirectory of the search.
        max_trials: trials of random search and Bayesian optimisation.
        max_epochs: epochs of the longest Hyperband trial.
        overwrite: start afresh, deleting a previous search.
        seed: seed of the tuner's sampling.
        **kwargs: other arguments of the tuner class.

    Returns:
        A `kt.Tuner`.

    Example:

    ```python
    tuner = build_tuner("bayesian", hypermodel, "/tmp/tune", max_trials=20)
    ```
    """
    objective = kt.Objective(OBJECTIVE, "max")
    common = dict(
        objective=objective,
        directory=directory,
        project_name=project_name,
        overwrite=overwrite,
        seed=seed,
        **kwargs,
    )
    if kind == "random":
        return kt.RandomSearch(hypermodel, max_trials=max_trials, **common)
    if kind == "bayesian":
        return kt.BayesianOptimization(
            hypermodel, max_trials=max_trials, **common
        )
    if kind == "hyperband":
        return kt.Hyperband(hypermodel, max_epochs=max_epochs, **common)
    raise ValueError(f"Expected a tuner in {TUNERS}. Received: kind={kind!r}.")


def best_values(tuner):
    """The best trial's active hyper-parameters and its objective.

    Args:
        tuner: a `kt.Tuner` that has run (or resumed) a search.

    Returns:
        A dict with `"values"` (active hyper-parameters of the best trial,
        inactive ones left out), `"score"` (its `val_accuracy`),
        `"trial_id"` and `"num_trials"` (finished trials).
    """
    trials = tuner.oracle.get_best_trials(1)
    if not trials:
        raise ValueError(
            "Expected a finished trial. Received a tuner with none: run "
            "`tuner.search(...)` first."
        )
    best = trials[0]
    if best.score is None:
        raise ValueError(
            "Expected a trial that finished with a score. Received a tuner "
            f"whose best trial ({best.trial_id}) has none: it failed"
            + (
                f" ({best.message.strip().splitlines()[-1]})"
                if best.message
                else ""
            )
            + ". Fix the error the search printed and run it again."
        )
    hp = best.hyperparameters
    values = {
        name: value for name, value in hp.values.items() if hp.is_active(name)
    }
    finished = [
        t
        for t in tuner.oracle.trials.values()
        if t.status == kt.engine.trial.TrialStatus.COMPLETED
    ]
    return {
        "values": values,
        "score": best.score,
        "trial_id": best.trial_id,
        "num_trials": len(finished),
    }
