"""The `Distiller`: a Keras model that trains a student from a teacher."""

import keras
import tensorflow as tf

from keras_jacobian import _compat
from keras_jacobian import batch_statistics
from keras_jacobian import construction
from keras_jacobian import jacobians
from keras_jacobian import label_range
from keras_jacobian import loss_weights
from keras_jacobian import steps
from keras_jacobian import validation
from keras_jacobian.construction import TASK
from keras_jacobian.saving import SavingMixin
from keras_jacobian.steps import LossStepsMixin
from keras_jacobian.terms.base import OUTPUT
from keras_jacobian.terms.base import DistillationTerm
from keras_jacobian.terms.base import StepContext
from keras_jacobian.terms.base import TermList
from keras_jacobian.terms.conversion import convert_term


def _as_list(value):
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


@keras.saving.register_keras_serializable(package="keras_jacobian")
class Distiller(
    construction.BuildOnFirstBatchMixin,
    label_range.CheckedStepsMixin,
    SavingMixin,
    LossStepsMixin,
    keras.Model,
):
    """Trains a student network from a frozen teacher, Jacobians included.

    Each training step runs the teacher (frozen, in inference mode) and
    the student once on the batch, inside nested `tf.GradientTape`s: an
    inner tape that watches the input, from which the terms read input
    Jacobian rows of both networks, and an outer tape over the student's
    weights, so that the student's Jacobian rows are themselves
    differentiated (double backprop) and Jacobian terms train the student.

    The loss is Keras' convex mix (as in `keras.distillation.Distiller`)

        w * compiled_loss(y, student(x))
        + (1 - w) * sum_i distillation_loss_weights[i] * term_i

    with `w = student_loss_weight`, or, given `supervised_loss_weight=s`
    instead, `s * compiled_loss + sum_i distillation_loss_weights[i] *
    term_i`; plus the student's regularisation losses. The compiled loss
    is the one given to `compile(loss=...)`; with no `loss`, with labels
    absent, or at weight 0, the student learns from the teacher alone.
    Every term is averaged over the batch and scaled once for
    `tf.distribute` replicas, so N replicas train the same model as one
    device with the same global batch.

    Weights are `keras.Variable`s (`distiller.term_weights`,
    `distiller.student_loss_weight_variable`, which holds `w` or `s`; set
    them through `student_loss_weight`, `supervised_loss_weight` and
    `distillation_loss_weights`): callbacks may change them
    between steps without retracing. A term whose weight is 0 is skipped
    at run time (`tf.cond`), so it costs nothing; so is the compiled loss
    while its weight is 0 (and every term at `student_loss_weight=1`).

    The distiller trains its own copies of the terms, made from their
    configurations (`get_config`): one term object may be passed to
    several distillers, each of which builds and trains its own copy (its
    adapter, for example). The copies are `distiller.distillation_losses`;
    a repeated name gets a suffix there (`"logits_distillation_1"`), not
    in the objects passed in.

    `fit` and `evaluate` log `loss` (the total), `student_loss` (the
    compiled loss, unweighted), `distillation_loss` (`sum_i d_i term_i`,
    as in Keras), one `"<term name>_loss"` per term, `total_loss` and the
    compiled metrics on the student's predictions; `evaluate` computes the
    same terms on the evaluation data. `call` (and `predict`) return the
    student's output.

    Inputs: a tensor fed to both networks, or a dict
    `{"student": x_s, "teacher": x_t}` when the networks take the same
    images at different resolutions (resize in the input pipeline). A
    dict may also carry `"teacher_targets"` precomputed by
    `cache_teacher`, in which case the teacher is not run.

    Per-example Jacobians are exact when the student has no cross-example
    coupling; a BatchNorm layer in training mode couples the examples of
    a batch through its statistics, so its "per-example" rows then include
    that coupling, as in every framework. With few images and short runs,
    check a BatchNorm student's moving statistics: on digits the Jacobian
    term moved the mean of the last BatchNorm input faster than the moving
    averages (momentum 0.99) follow, and the student collapsed at
    inference (15% validation accuracy, 51% with the statistics recomputed
    on its training images; `examples/distill.py --student_batch_norm`,
    docs/reproducing.md). Recompute them after training, or prefer
    students without BatchNorm (or with LayerNorm or GroupNorm).

    Args:
        teacher: a Keras model returning logits (a final softmax is
            refused when a term reads logits). It is frozen
            (`trainable=False`) and always called with `training=False`.
        student: a Keras model returning logits, not probabilities
            (or, with
            `distillation_output`, a task output and a head that mimics the
            teacher), with weights of its own: the teacher is frozen, so a
            student that is the teacher or shares its trainable layers is
            refused (start it from the teacher with
            `keras.models.clone_model` and `set_weights`). A subclassed
            model is accepted when no term reads an intermediate layer.
            Unbuilt networks are built on the first batch, as in Keras.
        distillation_losses: a term or a list of terms
            (`LogitsDistillation`, `JacobianMatching`, `NoiseDistillation`,
            ...), or `keras.distillation.DistillationLoss`es (Keras' own
            terms, or subclasses), which keep their Keras meaning.
        distillation_loss_weights: one float per term; default 1.0 each.
        student_loss_weight: Keras' mix `w` in `[0, 1]`, default 0.5.
        supervised_loss_weight: instead of `student_loss_weight`, an
            independent weight `>= 0` of the compiled loss.
        distillation_output: for a student with two outputs, the name of
            the layer whose output mimics the teacher; the other output is
            the task output that `call` returns and the compiled loss uses.
        seed: seed of the random draws of the terms (projections, noise).
        check_differentiable: run both networks once at construction to
            check that input gradients exist (twice for the student) when a
            term needs them (on every replica inside `strategy.scope()`);
            turn off to save time on very large models. Build the student
            inside the same `strategy.scope()` as the `Distiller` (the
            teacher may come from anywhere).
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Example:

    ```python
    distiller = keras_jacobian.Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=[
            keras_jacobian.LogitsDistillation(temperature=4.0, loss="kd"),
            keras_jacobian.JacobianMatching(target="teacher_top1"),
        ],
        distillation_loss_weights=[1.0, 1.0],
        supervised_loss_weight=1.0,
    )
    distiller.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    distiller.fit(x_train, y_train, epochs=10)
    student = distiller.student  # the trained student, a plain Keras model
    ```
    """

    def __init__(
        self,
        teacher,
        student,
        distillation_losses,
        distillation_loss_weights=None,
        student_loss_weight=None,
        distillation_output=None,
        seed=None,
        check_differentiable=True,
        supervised_loss_weight=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for role, model in (("teacher", teacher), ("student", student)):
            if not isinstance(model, keras.Model):
                raise ValueError(
                    f"`{role}` must be a keras.Model. Received: "
                    f"{role}={model!r}"
                )
        validation.check_strategy_scope(student, "student", "Distiller")
        terms = [convert_term(t).copy() for t in _as_list(distillation_losses)]
        weights = validation.check_term_weights(
            terms, distillation_loss_weights
        )
        self._convex = loss_weights.convex(
            student_loss_weight, supervised_loss_weight
        )
        supervised = loss_weights.supervised_weight(
            student_loss_weight, supervised_loss_weight
        )
        validation.check_label_terms(terms, distillation_output)
        self._teacher_trainable = teacher.trainable
        teacher.trainable = False
        self.teacher = teacher
        self.student = student
        self._unique_term_names(terms)
        # Set past Keras' tracking, which would make it a mutable list: the
        # terms hold no Keras state (their layers are `term_layers`).
        object.__setattr__(self, "distillation_losses", TermList(terms))
        self.distillation_output = distillation_output
        self.seed = seed
        self.check_differentiable = check_differentiable

        self.term_weights = [
            keras.Variable(
                w, dtype="float32", trainable=False, name=f"{t.name}_weight"
            )
            for t, w in zip(terms, weights)
        ]
        self.student_loss_weight_variable = keras.Variable(
            float(supervised),
            dtype="float32",
            trainable=False,
            name="student_loss_weight",
        )
        self._given_weights = (supervised, list(weights))
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(
            name="distillation_loss"
        )
        self.term_trackers = [
            keras.metrics.Mean(name=f"{t.name}_loss") for t in terms
        ]
        self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
        self.regularization_loss_tracker = keras.metrics.Mean(
            name="regularization_loss"
        )
        if construction.is_built(teacher) and construction.is_built(student):
            construction.construct(self)
            # Every variable exists now; a built model can be saved and
            # backed up (`save_weights`, `BackupAndRestore`) before or
            # after `fit`.
            self.built = True

    metrics = property(loss_weights.logged_metrics)

    # Keras' names of the loss weights (see `loss_weights`).

    student_loss_weight = loss_weights.student_loss_weight
    supervised_loss_weight = loss_weights.supervised_loss_weight
    distillation_loss_weights = loss_weights.distillation_loss_weights

    @property
    def _teacher_feature_extractor(self):
        """Keras' name of the teacher's endpoint model."""
        return self.teacher_endpoints

    @property
    def _student_feature_extractor(self):
        """Keras' name of the student's endpoint model."""
        return self.student_endpoints

    # Construction helpers.

    @staticmethod
    def _unique_term_names(terms):
        """Renames repeated names; the terms are the distiller's copies."""
        seen = {}
        for term in terms:
            if term.name in seen:
                seen[term.name] += 1
                term.name = f"{term.name}_{seen[term.name]}"
            else:
                seen[term.name] = 0

    def teacher_endpoints_output(self):
        """A model returning the teacher's distillation output only."""
        return construction.endpoints_output(self.teacher_endpoints)

    def student_endpoints_output(self):
        """A model returning the student's distillation output only."""
        return construction.endpoints_output(self.student_endpoints)

    # Forward passes.

    def call(self, inputs, training=False):
        x = inputs["student"] if construction.is_role_dict(inputs) else inputs
        if self.student_task is not None:
            return self.student_task(x, training=training)
        return self.student(x, training=training)

    def _split_inputs(self, x):
        return construction.split_inputs(self, x)

    def _teacher_forward(self, x):
        return self.teacher_endpoints(x, training=False)

    def _student_forward(self, x, training):
        outputs = dict(self.student_endpoints(x, training=training))
        return outputs

    def _context(
        self,
        forward,
        x,
        y,
        input_shape,
        sample_weight=None,
        precision=None,
        random_state=None,
        keep=None,
    ):
        replay = None if random_state is None else random_state.record()
        tape, outputs, held = batch_statistics.first_pass(
            forward, x, self.needs_input_gradients
        )
        again = held.replayed(
            forward if keep is None else steps.without_updates(keep, forward)
        )
        return StepContext(
            inputs=x,
            outputs=outputs,
            tape=tape,
            labels=y,
            seed=self.seed_generator,
            forward=again,
            input_shape=input_shape,
            sample_weight=sample_weight,
            precision=precision,
            replay=replay,
        )

    def teacher_targets(self, x, y=None):
        """The teacher's targets of every term for a batch.

        Args:
            x: the teacher's input batch.
            y: labels, for terms that use them (e.g. `target="label"`).

        Returns:
            A list with one dict of per-example tensors per term.
        """
        ctx = self._context(
            self._teacher_forward,
            tf.nest.map_structure(tf.convert_to_tensor, x),
            y,
            self.teacher_input_shape,
            precision=self.teacher_precision,
            random_state=self._teacher_random_state,
        )
        return [term.teacher_targets(ctx) for term in self.distillation_losses]

    def cache_teacher(
        self,
        data,
        batch_size=None,
        shuffle=False,
        seed=None,
        check_random=True,
    ):
        """Precomputes the teacher's targets; see `caching.cache_teacher`."""
        from keras_jacobian import caching

        return caching.cache_teacher(
            self,
            data,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            check_random=check_random,
        )

    def _step_losses(self, x, y, sample_weight, training):
        """Forward passes and every loss, inside the caller's tape."""
        xs, xt, cached = self._split_inputs(x)
        if self._label_monitor is not None and y is not None:
            y = self._label_monitor.guard(y, self)
        tctx = None
        if cached is None:
            tctx = self._context(
                self._teacher_forward,
                xt,
                y,
                self.teacher_input_shape,
                precision=self.teacher_precision,
                random_state=self._teacher_random_state,
            )
        sctx = self._context(
            lambda inputs: self._student_forward(inputs, training),
            xs,
            y,
            self.student_input_shape,
            sample_weight,
            precision=self.student_precision,
            random_state=self._student_random_state,
            keep=self.student,
        )
        if tctx is not None:
            tctx.student_shapes = {
                name: tf.nest.map_structure(jacobians.known_shape, tensor)
                for name, tensor in sctx.outputs.items()
            }
        batch = tf.shape(tf.nest.flatten(xs)[0])[0]
        term_values = []
        for i, term in enumerate(self.distillation_losses):

            def compute(i=i, term=term):
                targets = (
                    cached[i]
                    if cached is not None
                    else term.teacher_targets(tctx)
                )
                return tf.cast(term.per_example_loss(targets, sctx), "float32")

            if term.synchronizes and steps.num_replicas() > 1:
                # A collective across replicas cannot sit in a tf.cond.
                per_example = compute()
            else:
                # Skipped at weight 0, and on a replica left without
                # examples (Jacobians of an empty batch fail in TensorFlow).
                per_example = tf.cond(
                    loss_weights.runs(self, i) & (batch > 0),
                    compute,
                    lambda: tf.zeros([batch], "float32"),
                )
            term_values.append(
                steps.reduce_per_example(
                    per_example, None if term.per_batch else sample_weight
                )
            )
        if self.student_task is not None:
            y_pred = sctx.outputs[TASK]
        else:
            y_pred = sctx.outputs[OUTPUT]
        weight = self.student_loss_weight_variable
        student_loss = tf.zeros((), "float32")
        if y is not None and _compat.compiled_loss(self) is not None:
            # At weight 0 the compiled loss is not computed at all.
            student_loss = tf.cond(
                weight > 0.0,
                lambda: self.supervised_loss(
                    y, y_pred, sample_weight, regularization=False
                ),
                lambda: tf.zeros((), "float32"),
            )
        logged, total = loss_weights.combine(self, student_loss, term_values)
        return y_pred, logged, total

    # Configuration.

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "student": keras.saving.serialize_keras_object(self.student),
                "distillation_losses": [
                    keras.saving.serialize_keras_object(t)
                    for t in self.distillation_losses
                ],
                "distillation_loss_weights": list(
                    self.distillation_loss_weights
                ),
                "student_loss_weight": self.student_loss_weight,
                "supervised_loss_weight": self.supervised_loss_weight,
                "distillation_output": self.distillation_output,
                "seed": self.seed,
                "check_differentiable": self.check_differentiable,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # The teacher is frozen: the optimizer it was trained with (saved
        # with it when it was compiled) has nothing to train here, and
        # compiling it would build that optimizer without variables, so
        # Keras would skip loading its saved state with a warning.
        teacher = dict(config["teacher"])
        teacher.pop("compile_config", None)
        config["teacher"] = teacher
        for key in ("teacher", "student"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        config["distillation_losses"] = [
            keras.saving.deserialize_keras_object(t)
            for t in config["distillation_losses"]
        ]
        if (
            "supervised_loss_weight" not in config
            and "check_differentiable" in config
        ):
            # Saved by 0.1.0, whose `student_loss_weight` was independent
            # of the terms' weights. A configuration of Keras' `Distiller`
            # (no `check_differentiable`) keeps Keras' convex mix.
            config["supervised_loss_weight"] = config.pop(
                "student_loss_weight", 1.0
            )
        return cls(**config)


__all__ = ["Distiller", "DistillationTerm"]
