"""The `Distiller`: a Keras model that trains a student from a teacher."""

import keras
import tensorflow as tf

from keras_jacobian import _compat
from keras_jacobian import endpoints
from keras_jacobian import jacobians
from keras_jacobian import kinks
from keras_jacobian import label_range
from keras_jacobian import probes
from keras_jacobian import randomness
from keras_jacobian import steps
from keras_jacobian import validation
from keras_jacobian.saving import SavingMixin
from keras_jacobian.steps import LossStepsMixin
from keras_jacobian.terms.base import OUTPUT
from keras_jacobian.terms.base import DistillationTerm
from keras_jacobian.terms.base import StepContext
from keras_jacobian.terms.conversion import convert_term

# Endpoint key of the task head's output in the student's endpoint model,
# so that the task loss reads the same forward pass as the terms.
TASK = "__task_output__"
INPUT_KEYS = ("student", "teacher", "teacher_targets")


def _compatible(a, b):
    """Whether one batch can feed networks of input shapes `a` and `b`
    (`None` matches any size)."""
    return len(a) == len(b) and all(
        i is None or j is None or i == j for i, j in zip(a, b)
    )


def _as_list(value):
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


@keras.saving.register_keras_serializable(package="keras_jacobian")
class Distiller(SavingMixin, LossStepsMixin, keras.Model):
    """Trains a student network from a frozen teacher, Jacobians included.

    Each training step runs the teacher (frozen, in inference mode) and
    the student once on the batch, inside nested `tf.GradientTape`s: an
    inner tape that watches the input, from which the terms read input
    Jacobian rows of both networks, and an outer tape over the student's
    weights, so that the student's Jacobian rows are themselves
    differentiated (double backprop) and Jacobian terms train the student.

    The loss is

        student_loss_weight * compiled_loss(y, student(x))
        + sum_i distillation_loss_weights[i] * term_i

    plus the student's regularisation losses. The compiled loss is the one
    given to `compile(loss=...)`; with no `loss`, with labels absent, or
    with `student_loss_weight=0`, the student learns from the teacher
    alone. Every term is averaged over the batch and scaled once for
    `tf.distribute` replicas, so N replicas train the same model as one
    device with the same global batch.

    Weights are `keras.Variable`s (`distiller.term_weights`,
    `distiller.student_loss_weight_variable`): callbacks may change them
    between steps without retracing. A term whose weight is 0 is skipped
    at run time (`tf.cond`), so it costs nothing; so is the compiled loss
    while `student_loss_weight` is 0.

    The distiller trains its own copies of the terms, made from their
    configurations (`get_config`): one term object may be passed to
    several distillers, each of which builds and trains its own copy (its
    adapter, for example). The copies are `distiller.distillation_losses`;
    a repeated name gets a suffix there (`"logits_distillation_1"`), not
    in the objects passed in.

    `fit` and `evaluate` log `loss` (the total), `student_loss`, one
    `"<term name>_loss"` per term, `total_loss` and the compiled metrics on
    the student's predictions; `evaluate` computes the same terms on the
    evaluation data. `call` (and `predict`) return the student's output.

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
            model (built) is accepted when no term reads an intermediate
            layer.
        distillation_losses: a term or a list of terms
            (`LogitsDistillation`, `JacobianMatching`, `NoiseDistillation`,
            ...). Keras' own `keras.distillation.LogitsDistillation` with a
            KL loss is accepted as `LogitsDistillation("kl")` (with the
            softmax and `T^2` that its string form skips).
        distillation_loss_weights: one float per term; default 1.0 each.
        student_loss_weight: weight of the compiled (supervised) loss.
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
            keras_jacobian.LogitsDistillation(temperature=4.0),
            keras_jacobian.JacobianMatching(target="teacher_top1"),
        ],
        distillation_loss_weights=[1.0, 1.0],
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
        student_loss_weight=1.0,
        distillation_output=None,
        seed=None,
        check_differentiable=True,
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
        if not terms:
            raise ValueError(
                "`distillation_losses` must hold at least one term. For "
                "training on labels alone, train the student directly."
            )
        weights = validation.check_term_weights(
            terms, distillation_loss_weights
        )
        student_loss_weight = validation.check_number(
            student_loss_weight, "student_loss_weight"
        )
        validation.check_label_terms(terms, distillation_output)
        validation.check_own_weights(teacher, student)
        teacher.trainable = False
        self.teacher = teacher
        self.student = student
        self._unique_term_names(terms)
        self.distillation_losses = terms
        self.distillation_output = distillation_output
        self.seed = seed
        self.check_differentiable = check_differentiable

        teacher_shape, teacher_dtype = validation.input_spec(teacher, "teacher")
        student_shape, student_dtype = validation.input_spec(student, "student")
        validation.check_input_kinds(teacher_shape, student_shape)
        self.teacher_input_shape = teacher_shape
        self.student_input_shape = student_shape
        self.needs_input_gradients = any(t.needs_input_gradients for t in terms)
        uses_input_jacobians = any(t.uses_input_jacobians for t in terms)
        if uses_input_jacobians:
            validation.check_float_input(teacher_dtype, "teacher")
            validation.check_float_input(student_dtype, "student")
            validation.check_token_inputs(teacher, "teacher")
            validation.check_token_inputs(student, "student")

        teacher_endpoints = _ordered_union(t.teacher_endpoints for t in terms)
        student_endpoints = _ordered_union(t.student_endpoints for t in terms)
        self.teacher_endpoints = endpoints.endpoint_model(
            teacher, teacher_endpoints, "teacher"
        )
        self.student_task = endpoints.task_model(student, distillation_output)
        self.student_endpoints = endpoints.endpoint_model(
            student,
            student_endpoints,
            "student",
            output_layer=distillation_output,
            extra_outputs=(
                None
                if self.student_task is None
                else {TASK: self.student_task.outputs[0]}
            ),
        )

        if any(t.reads_logits for t in terms):
            validation.check_logits_output(
                self.teacher_endpoints.output[OUTPUT], "teacher"
            )
            validation.check_logits_output(
                self.student_endpoints.output[OUTPUT], "student"
            )
        self.teacher_precision = jacobians.network_precision(teacher)
        self.student_precision = jacobians.network_precision(student)

        teacher_shapes = _shapes(self.teacher_endpoints, teacher_shape)
        student_shapes = _shapes(self.student_endpoints, student_shape)
        for term in terms:
            term.build(teacher_shapes, student_shapes)
            term.check_models(self.teacher_endpoints, self.student_endpoints)
        self.term_layers = [layer for t in terms for layer in t.layers]
        self._label_monitor = _label_monitor(terms, teacher_shapes)
        self._teacher_random_state = randomness.RandomState()
        self._student_random_state = randomness.RandomState()
        estimators = [
            t.estimator
            for t in terms
            if getattr(t, "estimator", None) in jacobians.INPUT_ESTIMATORS
        ]
        if estimators:
            # A difference estimator, if any, names the refusal.
            estimator = sorted(
                estimators, key=jacobians.DIFFERENCE_ESTIMATORS.__contains__
            )[-1]
            self._teacher_random_state = randomness.replayed_states(
                self.teacher_endpoints,
                teacher_shape,
                teacher_dtype,
                "teacher",
                training=False,
                estimator=estimator,
            )
            self._student_random_state = randomness.replayed_states(
                self.student_endpoints,
                student_shape,
                student_dtype,
                "student",
                training=True,
                estimator=estimator,
            )
            if estimator in jacobians.DIFFERENCE_ESTIMATORS:
                kinks.check_smooth(
                    self.student_endpoints,
                    student_shape,
                    student_dtype,
                    "student",
                    estimator,
                )
        # Every estimator needs an output differentiable in the input;
        # reverse-mode rows of the student are differentiated again.
        if uses_input_jacobians and check_differentiable:
            probes.probe_input_gradients(
                self.teacher_endpoints_output(),
                teacher_shape,
                "teacher",
                second_order=False,
            )
            probes.probe_input_gradients(
                self.student_endpoints_output(),
                student_shape,
                "student",
                second_order=self.needs_input_gradients,
            )

        self.term_weights = [
            keras.Variable(
                w, dtype="float32", trainable=False, name=f"{t.name}_weight"
            )
            for t, w in zip(terms, weights)
        ]
        self.student_loss_weight_variable = keras.Variable(
            float(student_loss_weight),
            dtype="float32",
            trainable=False,
            name="student_loss_weight",
        )
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.term_trackers = [
            keras.metrics.Mean(name=f"{t.name}_loss") for t in terms
        ]
        self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
        # Every variable exists now; a built model can be saved and backed
        # up (`save_weights`, `BackupAndRestore`) before or after `fit`.
        self.built = True

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
        return keras.Model(
            self.teacher_endpoints.inputs, self.teacher_endpoints.output[OUTPUT]
        )

    def student_endpoints_output(self):
        """A model returning the student's distillation output only."""
        return keras.Model(
            self.student_endpoints.inputs, self.student_endpoints.output[OUTPUT]
        )

    # Forward passes.

    def call(self, inputs, training=False):
        x = inputs["student"] if isinstance(inputs, dict) else inputs
        if self.student_task is not None:
            return self.student_task(x, training=training)
        return self.student(x, training=training)

    def _split_inputs(self, x):
        if isinstance(x, dict):
            unknown = set(x) - set(INPUT_KEYS)
            if unknown or "student" not in x:
                raise ValueError(
                    "Distiller inputs must be a tensor, or a dict with key "
                    "'student' and optional keys 'teacher' and "
                    f"'teacher_targets'. Received keys: {sorted(x)}"
                )
            xs = x["student"]
            xt = x.get("teacher", xs)
            cached = x.get("teacher_targets")
        else:
            xs = xt = x
            cached = None
        if (
            cached is None
            and not _compatible(
                self.teacher_input_shape, self.student_input_shape
            )
            and xt is xs
        ):
            raise ValueError(
                "Teacher and student take different input shapes "
                f"(teacher {self.teacher_input_shape}, student "
                f"{self.student_input_shape}), so each needs its own copy "
                "of the batch: pass x as {'student': x_s, 'teacher': x_t}, "
                "resizing in the input pipeline."
            )
        return _as_float(xs), _as_float(xt), cached

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
    ):
        replay = None if random_state is None else random_state.record()
        if self.needs_input_gradients:
            tape = tf.GradientTape(
                persistent=True, watch_accessed_variables=False
            )
            with tape:
                tape.watch(x)
                outputs = forward(x)
        else:
            tape = None
            outputs = forward(x)
        return StepContext(
            inputs=x,
            outputs=outputs,
            tape=tape,
            labels=y,
            seed=self.seed_generator,
            forward=forward,
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
            x,
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

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force=force)
        self.train_function = label_range.checked(
            self.train_function, self, self._label_monitor
        )
        return self.train_function

    def make_test_function(self, force=False):
        if self.test_function is not None and not force:
            return self.test_function
        super().make_test_function(force=force)
        self.test_function = label_range.checked(
            self.test_function, self, self._label_monitor
        )
        return self.test_function

    def _step_losses(self, x, y, sample_weight, training):
        """Forward passes and every loss, inside the caller's tape."""
        xs, xt, cached = self._split_inputs(x)
        if (
            self._label_monitor is not None
            and self.jit_compile
            and y is not None
        ):
            self._label_monitor.record(y)
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
        )
        if tctx is not None:
            tctx.student_shapes = {
                name: jacobians.known_shape(tensor)
                for name, tensor in sctx.outputs.items()
            }
        batch = tf.shape(xs)[0]
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
                    (self.term_weights[i] > 0.0) & (batch > 0),
                    compute,
                    lambda: tf.zeros([batch], "float32"),
                )
            term_values.append(
                steps.reduce_per_example(per_example, sample_weight)
            )
        if self.student_task is not None:
            y_pred = sctx.outputs[TASK]
        else:
            y_pred = sctx.outputs[OUTPUT]
        weight = self.student_loss_weight_variable
        if y is None or _compat.compiled_loss(self) is None:
            student_loss = self.supervised_loss(y, y_pred, sample_weight)
        else:
            # At weight 0 the compiled loss is not computed at all.
            student_loss = tf.cond(
                weight > 0.0,
                lambda: self.supervised_loss(y, y_pred, sample_weight, weight),
                lambda: self.supervised_loss(None, y_pred, sample_weight),
            )
        total = student_loss
        for w, value in zip(self.term_weights, term_values):
            total = total + w * value
        logged = [(self.student_loss_tracker, student_loss)]
        logged += list(zip(self.term_trackers, term_values))
        logged.append((self.total_loss_tracker, total))
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
                "distillation_loss_weights": [
                    float(keras.ops.convert_to_numpy(w))
                    for w in self.term_weights
                ],
                "student_loss_weight": float(
                    keras.ops.convert_to_numpy(
                        self.student_loss_weight_variable
                    )
                ),
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
        return cls(**config)


def _label_monitor(terms, teacher_shapes):
    """A `LabelRangeMonitor` when a term reads labels, else `None`."""
    if not any(t.reads_labels for t in terms):
        return None
    classes = teacher_shapes[OUTPUT][-1]
    return label_range.LabelRangeMonitor(
        classes,
        f"target='label' needs class indices in [0, {classes}): the "
        f"distillation output has {classes} classes. Fix the labels (e.g. "
        "shift labels numbered from 1, drop 'unlabelled' markers such as "
        "-1), or pick target='teacher_top1', which needs no labels.",
    )


def _ordered_union(groups):
    seen = []
    for group in groups:
        for name in group:
            if name not in seen:
                seen.append(name)
    if OUTPUT not in seen:
        seen.insert(0, OUTPUT)
    return seen


def _shapes(endpoints, input_shape):
    shapes = {
        name: tuple(tensor.shape) for name, tensor in endpoints.output.items()
    }
    shapes["input"] = (None,) + tuple(input_shape)
    return shapes


def _as_float(x):
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, keras.config.floatx())
    return x


__all__ = ["Distiller", "DistillationTerm"]
