r"""Whole-Jacobian matching with keras.applications students and teachers.

For each family (keras.applications models, weights=None, 32x32x3
inputs, 10 classes, logits; and a small ViT), each role (the family as
the student of a tiny tanh CNN teacher, or as the teacher of a tiny tanh
CNN student) and each estimator of
`JacobianMatching("all", estimator=E, normalize=False)`, this records:

- whether the `Distiller` accepts the pair (difference estimators
  refuse students with kinks) and, if not, the first line of the error;
- the term's value on 2 examples, inference mode, against a reference
  from plain `tf.GradientTape` Jacobians of the teacher and the student
  (the term's own drawn cotangents or directions, from
  `Distiller.teacher_targets`), and the relative error;
- the cosine between the term's gradient with respect to the student's
  weights and that of the same reference (same draws), and the cosine
  with the exact term's gradient (one draw: noisy by design for the
  stochastic estimators);
- that a few training steps (training mode, `--fit_batch` examples)
  give finite losses, that they leave every teacher variable (BatchNorm
  statistics included) bitwise unchanged, and their time relative to a
  Distiller with `LogitsDistillation` alone;
- that `evaluate` under `MirroredStrategy` over 2 logical CPU devices
  gives the losses of one device (same weights, same seed): the largest
  relative difference of the logged losses.

Command (one process per family keeps memory low; the results of the
families run replace theirs in the output files, the others stay):

  for f in MobileNetV2 MobileNetV3Small EfficientNetB0 ResNet50V2 \
      ConvNeXtTiny ViT; do
    python benchmarks/model_zoo.py --threads=1 --families=$f \
        --output_dir=benchmarks/results/model_zoo
  done
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

ROLES = ("student", "teacher")
flags.DEFINE_list("families", list(FAMILIES), "Families.")
flags.DEFINE_list("roles", list(ROLES), "The family's role: student, teacher.")
flags.DEFINE_list("estimators", list(ESTIMATORS), "Estimators.")
flags.DEFINE_string("output_dir", None, "Where results.{md,json} go.")
flags.DEFINE_integer("threads", 1, "TensorFlow threads (0: default).")
flags.DEFINE_integer("batch", 2, "Examples in the checked batch.")
flags.DEFINE_integer("fit_batch", 8, "Examples in the training steps.")
flags.DEFINE_integer("timed_steps", 3, "Training steps timed.")
flags.DEFINE_float(
    "replica_tolerance",
    1e-4,
    "Largest relative difference of the 2-replica losses called equal.",
)


def teacher_model(seed=0, name="teacher"):
    """A tiny smooth CNN: two tanh convolutions, pooling, logits.

    The teacher of the families in the student role, and (another seed)
    the student of the families in the teacher role.
    """
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
    return keras.Model(inputs, outputs, name=name)


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
    """The term's value and weight gradient, inference mode, own draws.

    Traced as in a training step: Keras' grouped convolutions (ConvNeXt)
    are XLA functions whose eager gradient under forward mode fails.
    """
    state = distiller.seed_generator.state.numpy()
    targets = distiller.teacher_targets(x)[0]
    distiller.seed_generator.state.assign(state)
    term = distiller.distillation_losses[0]
    variables = distiller.student.trainable_variables

    @tf.function
    def compute(x, targets):
        with tf.GradientTape() as tape:
            sctx = distiller._context(
                lambda z: distiller._student_forward(z, False),
                x,
                None,
                distiller.student_input_shape,
            )
            loss = tf.reduce_mean(term.per_example_loss(targets, sctx))
        return loss, tape.gradient(loss, variables)

    loss, grads = compute(x, targets)
    return float(loss), flat(grads, variables), targets


def reference_and_gradient(estimator, teacher, student, x, targets):
    jt = tape_jacobians(teacher, x)
    variables = student.trainable_variables
    with tf.GradientTape() as tape:
        js = tape_jacobians(student, x)
        value = reference_value(estimator, jt - js, targets)
    return float(value), flat(tape.gradient(value, variables), variables)


def step_time(distiller, x, steps):
    """Losses of `steps + 1` training steps, mean seconds of the last ones."""
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    losses = [distiller.train_on_batch(x, return_dict=True)["loss"]]
    start = time.perf_counter()
    for _ in range(steps):
        losses.append(distiller.train_on_batch(x, return_dict=True)["loss"])
    return [float(v) for v in losses], (time.perf_counter() - start) / steps


def copy(model):
    """`model` with its weights, built in the current strategy scope."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def replica_difference(teacher, student, estimator, x, strategy):
    """Largest relative difference of `evaluate` losses, 2 replicas vs 1."""
    logs = []
    for scope in (None, strategy):
        if scope is None:
            distiller = make_distiller(teacher, student, estimator)
            distiller.compile(optimizer="sgd")
        else:
            with scope.scope():
                distiller = make_distiller(
                    copy(teacher), copy(student), estimator
                )
                distiller.compile(optimizer="sgd")
        logs.append(
            distiller.evaluate(
                x, batch_size=x.shape[0], verbose=0, return_dict=True
            )
        )
    one, two = logs
    return max(
        abs(two[k] - one[k]) / max(abs(one[k]), 1e-30)
        for k in one
        if k.endswith("loss") and one[k] != 0
    )


def models(family, role):
    """(teacher, student) of `family` in `role`."""
    if role == "student":
        return teacher_model(), student_model(family)
    return student_model(family), teacher_model(10, "cnn_student")


def run_family(family, role, estimators, n, fit_n, timed_steps, strategy):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(n,) + INPUT_SHAPE), "float32")
    x_fit = tf.constant(rng.normal(size=(fit_n,) + INPUT_SHAPE), "float32")
    x_replicas = tf.constant(rng.normal(size=(4,) + INPUT_SHAPE), "float32")
    rows = []
    kd = None
    exact_grad = None
    for estimator in estimators:
        teacher, student = models(family, role)
        row = {"family": family, "role": role, "estimator": estimator}
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
        diff = replica_difference(
            teacher, student, estimator, x_replicas, strategy
        )
        row["replicas_relative_difference"] = diff
        row["replicas_equal"] = bool(diff <= FLAGS.replica_tolerance)
        before = [v.numpy().copy() for v in teacher.variables]
        losses, seconds = step_time(distiller, x_fit, timed_steps)
        row["teacher_unchanged"] = all(
            np.array_equal(b, v.numpy())
            for b, v in zip(before, teacher.variables)
        )
        row["fit_losses"] = losses
        row["fit_finite"] = bool(np.all(np.isfinite(losses)))
        if kd is None:
            kd_teacher, kd_student = models(family, role)
            kd = step_time(
                kj.Distiller(kd_teacher, kd_student, [kj.LogitsDistillation()]),
                x_fit,
                timed_steps,
            )
        row["kd_fit_losses"], row["kd_step_seconds"] = kd
        row["step_seconds"] = seconds
        row["time_ratio"] = seconds / kd[1]
        rows.append(row)
        print(row, flush=True)
    return rows


def fmt(value, spec):
    return "" if value is None else format(value, spec)


def short(message, width=110):
    message = message.replace("|", "/")
    return message if len(message) <= width else message[:width] + "..."


def fit(row):
    losses = row.get("fit_losses", [row.get("fit_loss")])
    return f"{losses[0]:.3g} / {losses[-1]:.3g}"


def markdown(rows):
    lines = [
        "| family | role | estimator | status | value | reference "
        "| rel. error | grad cos (ref) | grad cos (exact) "
        "| fit loss, first / last | teacher unchanged | 2 replicas vs 1 "
        "| time / KD |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for r in rows:
        head = (
            f"| {r['family']} | {r.get('role', 'student')} | {r['estimator']}"
        )
        if r["status"] == "refused":
            lines.append(
                f"{head} | refused: {short(r['message'])} | | | | | | | | | |"
            )
            continue
        lines.append(
            f"{head} | accepted "
            f"| {r['value']:.5g} | {r['reference']:.5g} "
            f"| {r['relative_error']:.2e} "
            f"| {r['gradient_cosine_reference']:.6f} "
            f"| {fmt(r.get('gradient_cosine_exact'), '.4f')} "
            f"| {fit(r)} | {r.get('teacher_unchanged', '')} "
            f"| {fmt(r.get('replicas_relative_difference'), '.1e')} "
            f"| {r['time_ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    unknown = sorted(set(FLAGS.roles) - set(ROLES))
    if unknown:
        raise app.UsageError(f"--roles: unknown {unknown}; use {ROLES}.")
    rows = []
    for family in FLAGS.families:
        for role in FLAGS.roles:
            rows += run_family(
                family,
                role,
                FLAGS.estimators,
                FLAGS.batch,
                FLAGS.fit_batch,
                FLAGS.timed_steps,
                strategy,
            )
            keras.backend.clear_session()
            write(rows)
    print(markdown(rows))


def _order(row):
    return (
        FAMILIES.index(row["family"]),
        ROLES.index(row.get("role", "student")),
        ESTIMATORS.index(row["estimator"]),
    )


def write(rows):
    """Results so far, replacing the rows of the (family, role) pairs run.

    The other pairs' rows already in the output files are kept, so that
    families can be run one per process.
    """
    if not FLAGS.output_dir:
        return
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    path = os.path.join(FLAGS.output_dir, "results")
    done = {(r["family"], r.get("role", "student")) for r in rows}
    kept = []
    if os.path.exists(path + ".json"):
        with open(path + ".json") as f:
            kept = [
                r
                for r in json.load(f)
                if (r["family"], r.get("role", "student")) not in done
            ]
    merged = sorted(kept + rows, key=_order)
    with open(path + ".json", "w") as f:
        json.dump(merged, f, indent=1)
    with open(path + ".md", "w") as f:
        f.write(markdown(merged))


FLAGS = flags.FLAGS

if __name__ == "__main__":
    app.run(main)
