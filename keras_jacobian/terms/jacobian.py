"""Input-Jacobian matching between teacher and student."""

import keras
import numpy as np
import tensorflow as tf

from keras_jacobian import jacobians
from keras_jacobian import traced
from keras_jacobian import validation
from keras_jacobian.terms import projections
from keras_jacobian.terms import whole
from keras_jacobian.terms.base import OUTPUT
from keras_jacobian.terms.base import DistillationTerm
from keras_jacobian.terms.cotangents import dense_labels_to_indices
from keras_jacobian.terms.cotangents import output_size
from keras_jacobian.terms.cotangents import select_cotangents
from keras_jacobian.terms.cotangents import softmax_cotangents
from keras_jacobian.terms.jacobian_options import CLASS_INDEXED
from keras_jacobian.terms.jacobian_options import LOSSES
from keras_jacobian.terms.jacobian_options import RECOMMENDED
from keras_jacobian.terms.jacobian_options import TARGETS
from keras_jacobian.terms.jacobian_options import check_same_inputs
from keras_jacobian.terms.jacobian_options import resolve_options

# Floor for the student's probability in the alignment weight 1 / p_S.
PROBABILITY_FLOOR = 1e-4
# The names defined here before the options and output vectors had their
# own modules stay importable from here.
__all__ = [
    "CLASS_INDEXED",
    "JacobianMatching",
    "LOSSES",
    "PROBABILITY_FLOOR",
    "RECOMMENDED",
    "TARGETS",
    "dense_labels_to_indices",
    "output_size",
    "select_cotangents",
    "softmax_cotangents",
]


@keras.saving.register_keras_serializable(package="keras_jacobian")
class JacobianMatching(DistillationTerm):
    """Matches rows of the input Jacobians of teacher and student.

    Srinivas & Fleuret (2018) show that matching logits under Gaussian input
    noise equals matching logits plus matching input Jacobians
    `J(x) = d logits / dx` (proposition 1). Full Jacobians cost one backward
    pass per class, so this term matches selected rows `v^T J`, the same
    `v` for teacher and student:

    - `"teacher_top1"` (default): the teacher's top class, per example.
    - `"label"`: the true class (needs labels: indices in
      `[0, classes)` or one-hot rows; others are an error). Not with a
      `Distiller`'s `distillation_output`, whose labels are the task's.
    - `"top_k"`: the teacher's `k` top classes.
    - `"all"`: every class (the full Jacobian; `classes` backward passes,
      vectorised).
    - `"random"`: `num_projections` random unit vectors `v`, drawn anew
      each step, orthonormal per example (Sobolev training; Hoffman et
      al. 2019).

    With `loss="squared"` and `normalize=True` (the paper's practical form)
    each row is flattened and L2-normalised per example and the loss is the
    squared distance `||j_T/||j_T|| - j_S/||j_S||||^2 = 2 - 2 cos`, averaged
    over the selected rows. A zero row stays zero (no NaN).

    With `normalize=False` the rows are compared raw and summed:
    for `target="all"` the term is exactly `||J_T - J_S||_F^2` per example
    (summed over classes and input values), so that
    `LogitsDistillation(loss="squared_logits")` + `sigma^2` x this term is the
    first-order expansion of `NoiseDistillation(sigma)`. For `"random"`
    the sum over projections is scaled by `classes / num_projections`,
    which makes it an unbiased estimate of the same Frobenius norm
    (`E[v v^T] = I / classes` on the unit sphere).

    With `normalize="teacher"` (the default of `target="all"` and
    `"random"`) the raw sum is divided by a scale of the teacher's alone:
    the mean over the (global, sample-weighted) batch and the selected
    rows of the teacher's squared row norm. For `target="all"`:

        ||J_T(x) - J_S(x)||_F^2 / (mean_batch ||J_T||_F^2 / classes)

    the squared error of every class row in units of the teacher's mean
    squared row norm, summed over classes. The weight of the term then
    does not depend on the input's units or the teacher's sharpness.

    With `loss="alignment"` the term is built on the one the paper's
    cross-entropy proposition adds under noise,
    `-sum_c (grad p_T,c . grad p_S,c) / p_S,c`, with rows of the Jacobians
    of the softmax probabilities `p = softmax(z / temperature)`. That
    inner product alone is unbounded below (scaling the student's rows up
    lowers it without end), so the term completes it to a square: the
    per-example loss is

        sum_c w_c * ||grad p_T,c - grad p_S,c||^2 / 2,  w_c = 1 / p_S,c

    over the selected classes `c`, with the student's probability `p_S,c`
    floored at 1e-4 (and differentiated: the weight is part of the loss).
    Its cross term is exactly the proposition's; the squared norms make it
    bounded below by 0 and minimised, with zero gradient, by a student
    whose rows equal the teacher's. With `normalize=True` the rows are
    unit-normalised first and the loss is the mean over the selected
    classes of `||t - s||^2 / 2`, which is `1 - cos` for non-zero rows:
    the direction is kept and magnitudes dropped.

    Networks at different resolutions (inputs given as
    `{"student": x_s, "teacher": x_t}`): the teacher's rows are resized to
    the student's input by area weights and multiplied by the area ratio,
    since a student pixel that stands for several teacher pixels gets the
    sum of their derivatives (`jacobians.match_spatial_size`).

    Cost: the teacher's rows take one input-gradient pass per row (without
    recording the teacher's weights); the student's take a second-order
    pass. One row roughly doubles a logit-distillation step.

    Estimators of the whole Jacobian (`target="all"`). Each estimates the
    same quantity for a given `normalize` (`estimator` changes cost and
    variance only):

    - `estimator="vjp"` (the default of `target="all"`, with one
      projection): `num_projections` random output vectors `u`, rows
      `u^T J` (the same as `target="random"`). It costs one row, like
      the top-1 row. The `u` of one example are orthonormal, so
      `num_projections=classes` gives the exact value.
    - `"exact"`: one reverse-mode row per class (`classes` times the cost
      of a row).
    - `"jvp"`: `num_projections` random input directions `v`, uniform on
      the unit sphere of the `D` input values and orthogonal to each
      other per example, and the estimate
      `D * mean_r ||(J_T - J_S) v_r||^2`, unbiased because
      `E[v v^T] = I / D`. `J v` (every class at once) comes from forward
      mode (`tf.autodiff.ForwardAccumulator`), differentiated with respect
      to the student's weights by the outer tape (reverse-over-forward).
    - `"finite_difference"`: the same estimate with central differences
      `J v ~= (F(x + eps v) - F(x - eps v)) / (2 eps)`, the `2R` shifted
      copies of the batch run through each network as one batch. No
      input gradient and no second-order autodiff. The value's error is
      O(eps^2) for smooth networks; the default step `eps` is the cube
      root of the unit round-off times the example's norm `||x||`
      (`jacobians.RELATIVE_STEPS`).
    - `"forward_difference"`: one-sided differences
      `(F(x + eps v) - F(x)) / eps` that reuse the step's own forward pass
      `F(x)`, so each network runs on only `R` extra copies. The value's
      error is O(eps) (about 2e-4 relative in float32).

    The difference estimators get the value right but not always its
    gradient: on a ReLU network with max pooling the shifted copy crosses
    kinks, and the weight gradient of the difference quotient is wrong by
    O(1 / eps) there (measured on a VGG-4 student: gradient cosine -0.01
    against forward mode for `"forward_difference"`, 0.24 for central
    differences; `benchmarks/estimator_gradients.py`). So they refuse a
    student with kinks (ReLU and its variants, max pooling, `abs`,
    maxima; read from its traced graph, `keras_jacobian.kinks`) at
    construction: they are for smooth networks (tanh, GELU, SiLU);
    `"vjp"` and `"jvp"` are exact autodiff for every network.

    With `normalize=True` each class row of both networks is
    unit-normalised; the student's row norms are not linear in its
    Jacobian, so no projection estimates that loss without bias: only
    `estimator="exact"` computes it (the others refuse it). With
    `normalize="teacher"`, the estimators divide by the teacher's own
    estimate of its scale from the same projections: a ratio whose bias
    is O(1 / (batch * num_projections)), more with few classes (one
    projection: +13% with 2 classes at batch 4, +47% with 10 at batch 1;
    `benchmarks/relative_bias.py`); `normalize=False` has none.

    Every estimator needs floating-point inputs that the networks are
    differentiable in: token models (an `Embedding` on the input) are
    refused; match Jacobians at the embedding output instead.

    Networks that draw random values (dropout, noise, augmentation layers
    such as `RandomFlip`, `keras.random.*` calls in custom layers, a Monte
    Carlo dropout teacher) see the same draws in every pass of a step:
    the state of their Keras seed generators is reset before each extra
    pass, run on a batch of the step's shape (one pass per direction), so
    each `J v` is the derivative at the step's draws. Randomness that
    cannot be replayed (stateful `tf.random` ops) is found at
    construction by running each network twice, and the difference
    estimators refuse it (see `keras_jacobian.randomness`).

    The input-direction estimators need teacher and student inputs of the
    same shape, draw the same `v` for both networks from the `Distiller`'s
    seed, rerun each network on the shifted (or tiled) batch (the
    student in training mode: BatchNorm statistics update once more per
    step, as with `NoiseDistillation`), and cannot be cached
    (`cache_teacher` refuses them: the directions change every step).

    Args:
        target: which rows, one of `"teacher_top1"`, `"label"`, `"top_k"`,
            `"all"`, `"random"`.
        k: number of classes for `target="top_k"`.
        num_projections: number of random vectors of the estimators
            other than `"exact"`; `None` for 1.
        normalize: `True` (unit rows, the paper's form; the default of
            the class-indexed targets), `"teacher"` (relative to the
            teacher's mean squared row norm; the default of `"all"` and
            `"random"`) or `False` (raw); `None` for the target's default.
        loss: `"squared"` (distance) or `"alignment"` (inner product of
            probability Jacobians, from the cross-entropy proposition).
        temperature: softmax temperature of `loss="alignment"`.
        name: metric name prefix, default `"jacobian_matching"`.
        estimator: `None` (`"vjp"` for `"all"` and `"random"`, but
            `"exact"` for `"all"` with `normalize=True` or
            `loss="alignment"`, which only it computes; `"exact"` for
            the class-indexed targets), `"exact"`, `"vjp"`, `"jvp"`,
            `"finite_difference"` or `"forward_difference"`; all but
            `"exact"` need `target="all"`.
        step_size: for the difference estimators, the Euclidean length of
            the step `eps * v` in input units; `None` for the default step
            relative to each example's norm. A step the network's
            precision cannot resolve relative to an example (below
            `jacobians.MIN_RELATIVE_STEP` times its norm) is an error.

    Example:

    ```python
    distiller = keras_jacobian.Distiller(
        teacher,
        student,
        [
            keras_jacobian.LogitsDistillation(temperature=4.0, loss="kd"),
            keras_jacobian.JacobianMatching(target="teacher_top1"),
        ],
        distillation_loss_weights=[1.0, 1.0],
    )
    # The whole Jacobian at the cost of one row (one output projection,
    # relative to the teacher's rows):
    whole = keras_jacobian.JacobianMatching(target="all")
    ```
    """

    reads_logits = True

    def __init__(
        self,
        target="teacher_top1",
        k=None,
        num_projections=None,
        normalize=None,
        loss="squared",
        temperature=1.0,
        name=None,
        estimator=None,
        step_size=None,
    ):
        super().__init__(name=name)
        options = resolve_options(
            target,
            k,
            num_projections,
            normalize,
            loss,
            temperature,
            estimator,
            step_size,
        )
        for key, value in options.items():
            setattr(self, key, value)

    @property
    def cacheable(self):
        return self.estimator == "exact"

    @property
    def synchronizes(self):
        return self.normalize == whole.TEACHER

    @property
    def needs_input_gradients(self):
        return self.estimator not in jacobians.INPUT_ESTIMATORS

    @property
    def uses_input_jacobians(self):
        return True

    @property
    def _row_target(self):
        """The `select_cotangents` target of the row estimators."""
        return "random" if self.estimator == "vjp" else self.target

    @property
    def reads_labels(self):
        return self.target == "label"

    def build(self, teacher_shapes, student_shapes):
        t, s = teacher_shapes[OUTPUT], student_shapes[OUTPUT]
        if t[-1] != s[-1]:
            kind = (
                "class-indexed target"
                if self.target in CLASS_INDEXED
                else "random projection shared by both networks"
            )
            raise ValueError(
                f"JacobianMatching(target={self.target!r}) uses a {kind}, "
                "so teacher and student outputs must have the same number "
                f"of classes. Received: teacher output {t}, student output "
                f"{s}. For transfer between tasks, give the student a head "
                "that mimics the teacher (see `keras_jacobian.transfer`)."
            )
        if len(t) > 2 or len(s) > 2:
            self._check_dense_outputs(t, s)
        if self.estimator in jacobians.INPUT_ESTIMATORS:
            check_same_inputs(teacher_shapes["input"], student_shapes["input"])
        self._check_projection_count(teacher_shapes["input"], t)
        if self.target == "top_k" and self.k > t[-1]:
            raise ValueError(
                f"`k` cannot exceed the number of classes ({t[-1]}). "
                f"Received: k={self.k}. Pass k <= {t[-1]} or target='all'."
            )

    def _check_projection_count(self, input_shape, output_shape):
        """Refuses more random vectors than the exact computation needs:
        `R = D` orthonormal input directions, or `K` output rows, give
        the exact value (and a huge `R` would only exhaust memory)."""
        if self.estimator == "exact":
            return
        if self.estimator in jacobians.INPUT_ESTIMATORS:
            dims = input_shape[1:]
            why = "orthonormal input directions give the exact value"
        else:
            dims = output_shape[1:]
            why = "rows of estimator='exact' give the exact value"
        if None in dims:
            return
        size = int(np.prod(dims))
        if self.num_projections > size:
            raise ValueError(
                f"estimator={self.estimator!r} draws {self.num_projections} "
                "random vectors per example, but "
                f"{size} {why}. Received: "
                f"num_projections={self.num_projections}. Use at most "
                f"{size}, or estimator='exact' (one row per output value)."
            )

    def _check_dense_outputs(self, t, s):
        """Outputs with spatial axes `(batch, *positions, classes)`."""
        where = f"JacobianMatching(target={self.target!r})"
        if self.estimator not in jacobians.INPUT_ESTIMATORS and (
            len(t) != len(s)
            or any(
                a is not None and b is not None and a != b
                for a, b in zip(t[1:], s[1:])
            )
        ):
            raise ValueError(
                f"{where} applies the same output vectors to both "
                "networks, so outputs with spatial axes (per-pixel "
                "logits) must have the same shape. Received: teacher "
                f"output {t}, student output {s}. Give both networks "
                "outputs of one resolution."
            )
        if self.loss == "alignment":
            raise ValueError(
                "loss='alignment' weights each row by 1 / p_S of its "
                "class, but with per-pixel outputs a row sums the "
                "gradients of many positions, each with its own "
                f"probability. Received: outputs {t}, {s}. Use "
                "loss='squared'."
            )
        if self.target == "all" and self.estimator == "exact":
            if None in t[1:]:
                raise ValueError(
                    "target='all' with estimator='exact' takes one row "
                    "(backward pass) per output value, so it needs an "
                    f"output of known size. Received: teacher output {t}. "
                    "Use estimator='vjp' (or 'jvp'), an unbiased estimate "
                    "of the same Frobenius norm."
                )

    def check_models(self, teacher, student):
        # The teacher always runs in inference mode; the student trains.
        if (
            self.estimator in jacobians.DIFFERENCE_ESTIMATORS
            and self.step_size is not None
        ):
            for role, model in (("teacher", teacher), ("student", student)):
                if not model.inputs:
                    continue
                shape = model.inputs[0].shape[1:]
                precision = traced.network_precision(
                    model,
                    shape,
                    model.inputs[0].dtype,
                    role == "student",
                    role,
                    self.estimator,
                )
                validation.check_step_size(
                    self.step_size, precision, shape, role
                )

    def teacher_targets(self, ctx):
        if self.estimator in jacobians.INPUT_ESTIMATORS:
            return projections.teacher_targets(self, ctx)
        logits = ctx.outputs[OUTPUT]
        cotangents = select_cotangents(
            self._row_target,
            logits,
            ctx.labels,
            self.k,
            self.num_projections,
            ctx.seed,
        )
        vectors = cotangents
        if self.loss == "alignment":
            vectors = softmax_cotangents(cotangents, logits, self.temperature)
        rows = tf.stop_gradient(ctx.rows(OUTPUT, vectors))
        return {"rows": rows, "cotangents": cotangents}

    def per_example_loss(self, targets, ctx):
        if self.estimator in jacobians.INPUT_ESTIMATORS:
            return projections.per_example_loss(self, targets, ctx)
        cotangents = targets["cotangents"]
        student_logits = ctx.outputs[OUTPUT]
        vectors = cotangents
        if self.loss == "alignment":
            vectors = softmax_cotangents(
                cotangents, student_logits, self.temperature
            )
        if student_logits.shape.rank > 2:
            vectors = _check_output_shape(vectors, student_logits)
        student_rows = ctx.rows(OUTPUT, vectors)
        teacher_rows = jacobians.match_spatial_size(
            targets["rows"], ctx.input_dims()
        )
        t = jacobians.flatten_rows(teacher_rows)
        s = jacobians.flatten_rows(student_rows)
        if self.normalize is True:
            t = jacobians.normalize_rows(t)
            s = jacobians.normalize_rows(s)
        if self.loss == "alignment":
            return self._alignment(t, s, cotangents, student_logits)
        distances = tf.reduce_sum(tf.square(t - s), axis=-1)
        if self.normalize is True:
            return tf.reduce_mean(distances, axis=-1)
        total = tf.reduce_sum(distances, axis=-1)
        # The teacher's mean squared row norm, per example.
        norms = tf.reduce_mean(tf.reduce_sum(tf.square(t), axis=-1), axis=-1)
        if self._row_target == "random":
            size = tf.cast(output_size(student_logits), total.dtype)
            total *= size / self.num_projections
        if self.normalize == whole.TEACHER:
            total = whole.relative(total, norms, ctx.sample_weight)
        return total

    def _alignment(self, t, s, cotangents, student_logits):
        # Half squared distances: with unit rows, 1 - cos; without, the
        # proposition's cross term -t.s completed to a square, so that the
        # teacher is the minimum (zero loss, zero gradient) even where
        # rows are too small to be normalised.
        halves = tf.reduce_sum(tf.square(t - s), axis=-1) / 2.0
        if self.normalize:
            return tf.reduce_mean(halves, axis=-1)
        p = tf.nn.softmax(
            tf.cast(student_logits, "float32") / self.temperature, axis=-1
        )
        p_selected = tf.reduce_sum(cotangents * p[:, None, :], axis=-1)
        weights = 1.0 / tf.maximum(p_selected, PROBABILITY_FLOOR)
        return tf.reduce_sum(weights * halves, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "target": self.target,
                "k": self.k,
                # The exact estimator draws no vectors.
                "num_projections": (
                    None if self.estimator == "exact" else self.num_projections
                ),
                "normalize": self.normalize,
                "loss": self.loss,
                "temperature": self.temperature,
                "estimator": self.estimator,
                "step_size": self.step_size,
            }
        )
        return config


def _check_output_shape(vectors, logits):
    """The teacher's output vectors, checked to fit the student's output."""
    teacher, student = vectors.shape[2:], logits.shape[1:]
    message = (
        "JacobianMatching applies the teacher's output vectors to the "
        "student, so per-pixel outputs must have the same shape (are "
        "the networks fed images of different sizes?). Received "
        "(teacher, student) output shapes:"
    )
    if teacher.is_fully_defined() and student.is_fully_defined():
        if teacher != student:
            raise ValueError(f"{message} {teacher}, {student}.")
        return vectors
    check = tf.debugging.assert_equal(
        tf.shape(vectors)[2:], tf.shape(logits)[1:], message=message
    )
    with tf.control_dependencies([check]):
        return tf.identity(vectors)
