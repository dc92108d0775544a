"""A teacher-free Jacobian-norm penalty for robustness to input noise."""

import keras
import tensorflow as tf

from keras_jacobian import batch_statistics
from keras_jacobian import jacobians
from keras_jacobian import kinks
from keras_jacobian import label_range
from keras_jacobian import probes
from keras_jacobian import randomness
from keras_jacobian import steps
from keras_jacobian import traced
from keras_jacobian import transforms
from keras_jacobian import validation
from keras_jacobian.saving import SavingMixin
from keras_jacobian.steps import LossStepsMixin
from keras_jacobian.terms import projections
from keras_jacobian.terms.cotangents import output_size
from keras_jacobian.terms.cotangents import select_cotangents

TARGETS = ("random", "all")


@keras.saving.register_keras_serializable(package="keras_jacobian")
class JacobianRegularizedModel(
    label_range.CheckedStepsMixin, SavingMixin, LossStepsMixin, keras.Model
):
    """Trains a model with its compiled loss plus a Jacobian-norm penalty.

    The loss is `compiled_loss + weight * mean_batch ||J(x)||_F^2`, where
    `J(x) = d model(x) / dx` is the input Jacobian of the model's output
    (logits). Under Gaussian input noise of variance `sigma^2`, squared-error
    training satisfies `E||y - f(x + xi)||^2 ~= ||y - f(x)||^2 +
    sigma^2 ||J||_F^2` (Bishop 1995; Srinivas & Fleuret 2018, section 1), so
    the penalty trains for robustness to input noise without sampling it.
    For a linear model it is weight decay; for a network it is not.

    With `target="random"` (default) the squared norm is estimated from
    `num_projections` random unit vectors `v` (orthonormal per example) as
    `classes / num_projections * sum_r ||v_r^T J||^2`, an unbiased estimate
    at the cost of one extra second-order pass per projection (Hoffman et
    al. 2019: one projection is enough in practice). `target="all"`
    computes it exactly, one row per class, vectorised.

    `estimator` chooses how `target="all"` is computed: `"exact"` (the
    default), `"vjp"` (random output projections, as `target="random"`),
    `"jvp"`, `"finite_difference"` or `"forward_difference"`:
    `D * mean_r ||J v_r||^2` for
    `num_projections` random input directions `v` uniform on the unit
    sphere of the `D` input values, an unbiased estimate, with `J v` from
    forward mode or from central differences
    `(F(x + eps v) - F(x - eps v)) / (2 eps)` (no second-order autodiff:
    ordinary backprop through one batch of `2 R` shifted copies; see
    `JacobianMatching` for the step `eps` and its error), or from
    one-sided differences `(F(x + eps v) - F(x)) / eps` that reuse the
    forward pass of the task loss (one batch of `R` shifted copies: the
    fastest). The difference estimators refuse a model with kinks (ReLU,
    max pooling, ...: their weight gradients are wrong there; see
    `keras_jacobian.kinks`).

    Logs `loss` (the total), `task_loss` (the compiled loss),
    `jacobian_penalty` (the estimate of `||J||_F^2`) and the compiled
    metrics. `call` returns the model's output.

    Args:
        model: the Keras model to train, returning logits (a final
            softmax is refused: apply it outside the model).
        weight: penalty weight (a `keras.Variable`, see `weight_variable`).
        target: `"random"` or `"all"`.
        estimator: `None` (`"vjp"` for `"random"`, `"exact"` for
            `"all"`), `"exact"`, `"vjp"`, `"jvp"`, `"finite_difference"`
            or `"forward_difference"`.
        step_size: the finite-difference step length in input units;
            `None` for the default step relative to each example's norm.
        num_projections: random vectors per example for `"random"` and
            every estimator but `"exact"`.
        seed: seed for the random projections.
        check_differentiable: check at construction that the model's input
            gradient is differentiable with respect to its kernels (on
            every replica inside `strategy.scope()`; build `model` inside
            the same scope).
        **kwargs: passed to `keras.Model`.

    Example:

    ```python
    robust = keras_jacobian.JacobianRegularizedModel(model, weight=0.01)
    robust.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    robust.fit(x, y, epochs=5)
    ```
    """

    def __init__(
        self,
        model,
        weight=0.01,
        target="random",
        num_projections=1,
        seed=None,
        check_differentiable=True,
        estimator=None,
        step_size=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(model, keras.Model):
            raise ValueError(
                f"`model` must be a keras.Model. Received: model={model!r}"
            )
        validation.check_strategy_scope(
            model, "model", "JacobianRegularizedModel"
        )
        weight = validation.check_number(weight, "weight")
        if target not in TARGETS:
            raise ValueError(
                f"`target` must be one of {TARGETS}. Received: "
                f"target={target!r}"
            )
        num_projections = validation.check_count(
            num_projections, "num_projections"
        )
        estimator = validation.check_estimator(target, estimator, step_size)
        input_shape, dtype = validation.input_spec(model, "model")
        if target == "all" and estimator == "exact":
            _check_known_output_size(model)
        validation.check_float_input(dtype, "model", model.name)
        validation.check_token_inputs(model, "model")
        try:
            outputs = model.outputs
        except (AttributeError, ValueError):
            outputs = None
        if outputs:
            validation.check_logits_output(outputs[0], "model")
        traced.check_logits(model, input_shape, dtype, "model")
        self.precision = jacobians.network_precision(model)
        batch_statistics.install(model)
        self._random_state = randomness.RandomState()
        if estimator in jacobians.INPUT_ESTIMATORS:
            self._random_state = randomness.replayed_states(
                model, input_shape, dtype, "model", True, estimator
            )
        # Every estimator needs an output differentiable in the input;
        # only reverse-mode rows are differentiated again.
        if check_differentiable:
            probes.probe_input_gradients(
                model,
                input_shape,
                "model",
                second_order=estimator not in jacobians.INPUT_ESTIMATORS,
            )
        if estimator in jacobians.DIFFERENCE_ESTIMATORS:
            # Kinks first: their message covers roundings as well.
            kinks.check_smooth(model, input_shape, dtype, "model", estimator)
            self.precision = traced.network_precision(
                model, input_shape, dtype, True, "model", estimator
            )
            validation.check_step_size(
                step_size, self.precision, input_shape, "model"
            )
        else:
            if estimator == "jvp":
                transforms.check_forward_mode(model, "model")
            transforms.check_transforms(
                model, input_shape, dtype, True, "model", estimator == "jvp"
            )
        self.model = model
        self.target = target
        self.num_projections = num_projections
        self.estimator = estimator
        self.step_size = None if step_size is None else float(step_size)
        self.seed = seed
        self.check_differentiable = check_differentiable
        self.weight_variable = keras.Variable(
            float(weight),
            dtype="float32",
            trainable=False,
            name="jacobian_weight",
        )
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.task_loss_tracker = keras.metrics.Mean(name="task_loss")
        self.penalty_tracker = keras.metrics.Mean(name="jacobian_penalty")
        # Every variable exists now; a built model can be saved and backed
        # up (`save_weights`, `BackupAndRestore`) before or after `fit`.
        self.built = True

    def call(self, inputs, training=False):
        return self.model(inputs, training=training)

    def jacobian_penalty(self, x, training=False):
        """Per-example estimate of `||J(x)||_F^2` and the logits.

        Returns:
            A tuple `(penalty, logits)`: float32 `(batch,)` and the model's
            output.
        """
        tape, logits, x = self._forward(x, training)
        return self._penalty(tape, logits, x, training), logits

    def _forward(self, x, training):
        x = tf.convert_to_tensor(x)
        if not x.dtype.is_floating:
            x = tf.cast(x, keras.config.floatx())
        projected = self.estimator in jacobians.INPUT_ESTIMATORS
        # The random draws and BatchNorm statistics of the pass, replayed
        # in the extra passes of the input-direction estimators.
        replay = self._random_state.record() if projected else None
        tape, logits, held = batch_statistics.first_pass(
            lambda inputs: self.model(inputs, training=training),
            x,
            watch=not projected,
        )
        if projected:
            return (replay, held), logits, x
        return tape, logits, x

    def _penalty(self, tape, logits, x, training):
        if self.estimator in jacobians.INPUT_ESTIMATORS:
            return self._projected_penalty(logits, x, training, tape)
        cotangents = select_cotangents(
            "random" if self.estimator == "vjp" else self.target,
            logits,
            None,
            None,
            self.num_projections,
            self.seed_generator,
        )
        rows = jacobians.flatten_rows(
            jacobians.vjp_rows(tape, logits, x, cotangents)
        )
        squared = tf.reduce_sum(tf.square(rows), axis=[1, 2])
        if self.estimator == "vjp":
            size = tf.cast(output_size(logits), squared.dtype)
            squared *= size / self.num_projections
        return squared

    def _projected_penalty(self, logits, x, training, state):
        """`D * mean_r ||J v_r||^2` along random input directions."""
        replay, held = state
        directions = jacobians.input_directions(
            x, self.num_projections, self.seed_generator
        )
        derivatives = jacobians.directional_derivatives(
            self.estimator,
            held.replayed(
                steps.without_updates(
                    self.model,
                    lambda inputs: self.model(inputs, training=training),
                )
            ),
            x,
            directions,
            step_size=self.step_size,
            precision=projections.precision_of(x, logits, self.precision),
            outputs=logits,
            replay=replay,
        )
        # The distance to a zero Jacobian: D * mean_r ||J v_r||^2.
        squared = tf.reduce_sum(tf.square(derivatives), axis=-1)
        size = tf.cast(jacobians.input_size(x), squared.dtype)
        return size * tf.reduce_mean(squared, axis=0)

    def _step_losses(self, x, y, sample_weight, training):
        tape, logits, x = self._forward(x, training)
        batch = tf.shape(x)[0]
        # Skipped at weight 0, and on a replica left without examples
        # (Jacobians of an empty batch fail in TensorFlow).
        per_example = tf.cond(
            (self.weight_variable > 0.0) & (batch > 0),
            lambda: tf.cast(
                self._penalty(tape, logits, x, training), "float32"
            ),
            lambda: tf.zeros([batch], "float32"),
        )
        penalty = steps.reduce_per_example(per_example, sample_weight)
        task = self.supervised_loss(y, logits, sample_weight)
        total = task + self.weight_variable * penalty
        logged = [
            (self.task_loss_tracker, task),
            (self.penalty_tracker, penalty),
        ]
        return logits, logged, total

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "model": keras.saving.serialize_keras_object(self.model),
                "weight": float(
                    keras.ops.convert_to_numpy(self.weight_variable)
                ),
                "target": self.target,
                "num_projections": self.num_projections,
                "estimator": self.estimator,
                "step_size": self.step_size,
                "seed": self.seed,
                "check_differentiable": self.check_differentiable,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)


def _check_known_output_size(model):
    outputs = getattr(model, "outputs", None) or []
    shapes = [tuple(o.shape[1:]) for o in outputs]
    if any(None in shape for shape in shapes):
        raise ValueError(
            "target='all' with estimator='exact' takes one row (backward "
            "pass) per output value, so it needs an output of known size. "
            f"Received: model output {(None,) + shapes[0]}. Use "
            "estimator='vjp' (or 'jvp'), an unbiased estimate of the same "
            "Frobenius norm."
        )
