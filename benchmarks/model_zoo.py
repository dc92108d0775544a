r"""Whole-Jacobian matching with keras.applications students.

For each student family (keras.applications models, weights=None,
32x32x3 inputs, 10 classes, logits) and each estimator of
`JacobianMatching("all", estimator=E, normalize=False)`, with a tiny
tanh CNN teacher, this records:

- whether the `Distiller` accepts the student (difference estimators
  refuse students with kinks) and, if not, the first line of the error;
- the term's value on 2 examples, inference mode, against a reference
  from plain `tf.GradientTape` Jacobians of the teacher and the student
  (the term's own drawn cotangents or directions, from
  `Distiller.teacher_targets`), and the relative error;
- the cosine between the term's gradient with respect to the student's
  weights and that of the same reference (same draws), and the cosine
  with the exact term's gradient (one draw: noisy by design for the
  stochastic estimators);
- that one training step (training mode) gives a finite loss, and its
  time relative to a Distiller with `LogitsDistillation` alone.

Command (one family at a time keeps memory low):

  python benchmarks/model_zoo.py --threads=1 \
      --output_dir=benchmarks/results/model_zoo
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __name__ == "__main__":
    sys.path.insert(
        0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import keras_jacobian as kj  # noqa: E402

FAMILIES = (
    "MobileNetV2",
    "MobileNetV3Small",
    "EfficientNetB0",
    "ResNet50V2",
    "ConvNeXtTiny",
    "ViT",
)
ESTIMATORS = ("exact", "vjp", "jvp", "forward_difference", "finite_difference")
INPUT_SHAPE = (32, 32, 3)
CLASSES = 10

flags.DEFINE_list("families", list(FAMILIES), "Student families.")
flags.DEFINE_list("estimators", list(ESTIMATORS), "Estimators.")
flags.DEFINE_string("output_dir", None, "Where results.{md,json} go.")
flags.DEFINE_integer("threads", 1, "TensorFlow threads (0: default).")
flags.DEFINE_integer("batch", 2, "Examples in the checked batch.")
flags.DEFINE_integer("timed_steps", 3, "Training steps timed.")


def teacher_model(seed=0):
    """A tiny smooth CNN: two tanh convolutions, pooling, logits."""
    init = keras.initializers.GlorotUniform
    inputs = keras.Input(INPUT_SHAPE)
    h = inputs
    for i in range(2):
        h = keras.layers.Conv2D(
            8,
            3,
            strides=2,
            padding="same",
            activation="tanh",
            kernel_initializer=init(seed + i),
            name=f"teacher_conv{i + 1}",
        )(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(
        CLASSES, kernel_initializer=init(seed + 2), name="teacher_logits"
    )(h)
    return keras.Model(inputs, outputs, name="teacher")


def vit(width=32, heads=2, blocks=2):
    """A small ViT: stride-4 patches, 2 attention blocks, GELU MLPs."""
    inputs = keras.Input(INPUT_SHAPE)
    h = keras.layers.Conv2D(width, 4, strides=4, name="patches")(inputs)
    h = keras.layers.Reshape((-1, width))(h)
    for i in range(blocks):
        a = keras.layers.LayerNormalization(name=f"ln{i}a")(h)
        a = keras.layers.MultiHeadAttention(
            heads, width // heads, name=f"attention{i}"
        )(a, a)
        h = keras.layers.Add()([h, a])
        m = keras.layers.LayerNormalization(name=f"ln{i}b")(h)
        m = keras.layers.Dense(2 * width, activation="gelu")(m)
        m = keras.layers.Dense(width)(m)
        h = keras.layers.Add()([h, m])
    h = keras.layers.LayerNormalization(name="ln_out")(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    outputs = keras.layers.Dense(CLASSES, name="logits")(h)
    return keras.Model(inputs, outputs, name="vit")


def student_model(family, seed=1):
    """A keras.applications family at 32x32x3, 10 logits, no weights."""
    keras.utils.set_random_seed(seed)
    if family == "ViT":
        return vit()
    kwargs = dict(
        weights=None,
        input_shape=INPUT_SHAPE,
        classes=CLASSES,
        classifier_activation=None,
    )
    if family == "MobileNetV2":
        kwargs["alpha"] = 0.35
    return getattr(keras.applications, family)(**kwargs)


def make_distiller(teacher, student, estimator, seed=3):
    term = kj.JacobianMatching("all", estimator=estimator, normalize=False)
    return kj.Distiller(teacher, student, [term], seed=seed)


def tape_jacobians(model, x):
    """(batch, classes, D) input Jacobians, one tape gradient a class."""
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        out = model(x, training=False)
        rows = [out[:, c] for c in range(out.shape[-1])]
    jac = tf.stack([tape.gradient(r, x) for r in rows], axis=1)
    del tape
    return tf.reshape(jac, (x.shape[0], out.shape[-1], -1))


def reference_value(estimator, diff, targets):
    """The term's per-batch value from full Jacobian differences."""
    n, classes, size = diff.shape
    if estimator == "exact":
        values = tf.reduce_sum(diff**2, axis=(1, 2))
    elif estimator == "vjp":
        u = tf.cast(targets["cotangents"], diff.dtype)
        rows = tf.einsum("brk,bkd->brd", u, diff)
        values = classes / u.shape[1] * tf.reduce_sum(rows**2, axis=(1, 2))
    else:
        v = tf.reshape(
            tf.cast(targets["directions"], diff.dtype), (n, -1, size)
        )
        moved = tf.einsum("bkd,brd->brk", diff, v)
        values = size * tf.reduce_mean(
            tf.reduce_sum(moved**2, axis=-1), axis=-1
        )
    return tf.reduce_mean(values)


def flat(grads, variables):
    return np.concatenate(
        [
            np.zeros(v.shape).ravel() if g is None else g.numpy().ravel()
            for g, v in zip(grads, variables)
        ]
    )


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


def term_and_gradient(distiller, x):
    """The term's value and weight gradient, inference mode, own draws."""
    state = distiller.seed_generator.state.numpy()
    targets = distiller.teacher_targets(x)[0]
    distiller.seed_generator.state.assign(state)
    term = distiller.distillation_losses[0]
    student = distiller.student
    with tf.GradientTape() as tape:
        sctx = distiller._context(
            lambda z: distiller._student_forward(z, False),
            x,
            None,
            distiller.student_input_shape,
        )
        loss = tf.reduce_mean(term.per_example_loss(targets, sctx))
    variables = student.trainable_variables
    grad = flat(tape.gradient(loss, variables), variables)
    return float(loss), grad, targets


def reference_and_gradient(estimator, teacher, student, x, targets):
    jt = tape_jacobians(teacher, x)
    variables = student.trainable_variables
    with tf.GradientTape() as tape:
        js = tape_jacobians(student, x)
        value = reference_value(estimator, jt - js, targets)
    return float(value), flat(tape.gradient(value, variables), variables)


def step_time(distiller, x, steps):
    distiller.compile(optimizer=keras.optimizers.SGD(1e-3))
    loss = distiller.train_on_batch(x, return_dict=True)["loss"]
    start = time.perf_counter()
    for _ in range(steps):
        loss = distiller.train_on_batch(x, return_dict=True)["loss"]
    return float(loss), (time.perf_counter() - start) / steps


def run_family(family, estimators, n, timed_steps):
    teacher = teacher_model()
    x = tf.constant(
        np.random.default_rng(0).normal(size=(n,) + INPUT_SHAPE),
        "float32",
    )
    rows = []
    kd_time = None
    exact_grad = None
    for estimator in estimators:
        student = student_model(family)
        row = {"family": family, "estimator": estimator}
        try:
            distiller = make_distiller(teacher, student, estimator)
        except Exception as e:  # noqa: BLE001 -- any refusal is recorded.
            row["status"] = "refused"
            row["message"] = f"{type(e).__name__}: " + str(e).splitlines()[0]
            rows.append(row)
            print(row, flush=True)
            continue
        row["status"] = "accepted"
        value, grad, targets = term_and_gradient(distiller, x)
        ref, ref_grad = reference_and_gradient(
            estimator, teacher, student, x, targets
        )
        row["value"] = value
        row["reference"] = ref
        row["relative_error"] = abs(value - ref) / abs(ref)
        row["gradient_cosine_reference"] = cosine(grad, ref_grad)
        row["gradient_relative_error"] = float(
            np.linalg.norm(grad - ref_grad) / np.linalg.norm(ref_grad)
        )
        if estimator == "exact":
            exact_grad = ref_grad
        if exact_grad is not None:
            row["gradient_cosine_exact"] = cosine(grad, exact_grad)
        loss, seconds = step_time(distiller, x, timed_steps)
        row["fit_loss"] = loss
        row["fit_finite"] = bool(np.isfinite(loss))
        if kd_time is None:
            kd = kj.Distiller(
                teacher, student_model(family), [kj.LogitsDistillation()]
            )
            _, kd_time = step_time(kd, x, timed_steps)
        row["step_seconds"] = seconds
        row["kd_step_seconds"] = kd_time
        row["time_ratio"] = seconds / kd_time
        rows.append(row)
        print(row, flush=True)
    return rows


def fmt(value, spec):
    return "" if value is None else format(value, spec)


def short(message, width=110):
    message = message.replace("|", "/")
    return message if len(message) <= width else message[:width] + "..."


def markdown(rows):
    lines = [
        "| family | estimator | status | value | reference | rel. error "
        "| grad cos (ref) | grad cos (exact) | fit finite | time / KD |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        if r["status"] == "refused":
            lines.append(
                f"| {r['family']} | {r['estimator']} | refused: "
                f"{short(r['message'])} | | | | | | | |"
            )
            continue
        lines.append(
            f"| {r['family']} | {r['estimator']} | accepted "
            f"| {r['value']:.5g} | {r['reference']:.5g} "
            f"| {r['relative_error']:.2e} "
            f"| {r['gradient_cosine_reference']:.6f} "
            f"| {fmt(r.get('gradient_cosine_exact'), '.4f')} "
            f"| {r['fit_finite']} | {r['time_ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
    rows = []
    for family in FLAGS.families:
        rows += run_family(
            family, FLAGS.estimators, FLAGS.batch, FLAGS.timed_steps
        )
        keras.backend.clear_session()
        write(rows)
    print(markdown(rows))


def write(rows):
    """Results so far: a long run keeps every finished family."""
    table = markdown(rows)
    if FLAGS.output_dir:
        os.makedirs(FLAGS.output_dir, exist_ok=True)
        path = os.path.join(FLAGS.output_dir, "results")
        with open(path + ".json", "w") as f:
            json.dump(rows, f, indent=1)
        with open(path + ".md", "w") as f:
            f.write(table)


FLAGS = flags.FLAGS

if __name__ == "__main__":
    app.run(main)
