r"""Spread of the whole-Jacobian estimates against the number of projections.

Command (VGG-9 teacher, VGG-4 student at initialisation, 32x32x3 inputs,
100 classes, 4 examples, 64 draws; a few minutes on 2 CPU cores):

    python benchmarks/projection_variance.py \
        --output=benchmarks/results/projections/variance.md

For each example, `A = J_T - J_S` (100 x 3072) is computed exactly with
`GradientTape.batch_jacobian`; then the per-example estimates of
`||A||_F^2` are drawn `--draws` times with `R` projections:

- input directions (`"jvp"`, `"finite_difference"`,
  `"forward_difference"`: the same `v`, so the same spread up to the
  O(eps) difference error): `D * mean_r ||A v_r||^2`, drawn with the
  library's `forward_difference` (the cheapest);
- output projections (`"vjp"`, `target="random"`):
  `K * mean_r ||u_r^T A||^2`, the `u_r` orthonormal per example, drawn
  as the library draws them (`jacobians.orthogonal_directions`), and,
  for comparison, independent unit vectors `u_r`.

It prints the relative standard deviation (std / exact value) of each,
averaged over the examples, with the closed form for `v` uniform on the
unit sphere of `n` values, `M = A^T A` (or `A A^T`), `q = tr(M^2) /
tr(M)^2`: relative variance `2 (n q - 1) / ((n + 2) R)` for independent
`v_r`, times `(n - R) / (n - 1)` for orthonormal ones.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

if __name__ == "__main__":
    sys.path.insert(
        0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import variants as variants_lib  # noqa: E402
from keras_jacobian import jacobians  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("models", "vgg", ["vgg", "tiny"], "Teacher/student pair.")
flags.DEFINE_integer("input_size", 32, "Input height and width.")
flags.DEFINE_integer("num_classes", 100, "Number of classes.")
flags.DEFINE_integer("examples", 4, "Examples (each its own row).")
flags.DEFINE_integer("draws", 64, "Draws of the estimate per example.")
flags.DEFINE_list("projections", ["1", "2", "4", "8"], "Values of R.")
flags.DEFINE_string("output", None, "Markdown file to write the table to.")
flags.DEFINE_integer("seed", 0, "Seed of the models, inputs and draws.")


def exact_difference(teacher, student, x):
    """`(examples, K, D)` exact `J_T - J_S`."""
    jacs = []
    for model in (teacher, student):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            out = model(x, training=False)
        jac = tape.batch_jacobian(out, x, experimental_use_pfor=False)
        jacs.append(jac.numpy().reshape(x.shape[0], out.shape[-1], -1))
    return jacs[0] - jacs[1]


def closed_form(a, n, count, orthonormal=True):
    """Relative std of the sphere estimate in `n` dims, `count` draws."""
    m = a.T @ a if n == a.shape[1] else a @ a.T
    q = np.trace(m @ m) / np.trace(m) ** 2
    variance = 2 * (n * q - 1) / ((n + 2) * count)
    if orthonormal:
        variance *= (n - count) / (n - 1)
    return np.sqrt(variance)


def input_direction_estimates(teacher, student, x, count, draws):
    """`(draws, examples)` estimates with `count` input directions."""
    copies = tf.tile(x, [draws, 1, 1, 1])
    generator = keras.random.SeedGenerator(FLAGS.seed)
    v = jacobians.input_directions(copies, count, generator)
    derivatives = [
        jacobians.directional_derivatives(
            "forward_difference", model, copies, v
        )
        for model in (teacher, student)
    ]
    size = float(jacobians.input_size(copies))
    estimate = jacobians.directional_distance(
        derivatives[0], derivatives[1], size
    )
    return estimate.numpy().reshape(draws, -1)


def output_projection_estimates(a, count, draws, rng, orthonormal):
    """`(draws, examples)` estimates with `count` output projections."""
    k = a.shape[1]
    if orthonormal:
        generator = keras.random.SeedGenerator(FLAGS.seed)
        u = jacobians.orthogonal_directions(
            draws * a.shape[0], k, count, generator
        ).numpy()
        u = np.transpose(u, (1, 0, 2)).reshape(draws, a.shape[0], count, k)
    else:
        u = rng.normal(size=(draws, a.shape[0], count, k))
        u /= np.linalg.norm(u, axis=-1, keepdims=True)
    rows = np.einsum("nbrk,bkd->nbrd", u, a)
    return k / count * np.sum(rows**2, axis=(2, 3))


def main(argv):
    del argv
    tf.keras.utils.set_random_seed(FLAGS.seed)
    shape = (FLAGS.input_size, FLAGS.input_size, 3)
    teacher, student = variants_lib.build_models(
        FLAGS.models, shape, FLAGS.num_classes
    )
    rng = np.random.default_rng(FLAGS.seed)
    x = tf.constant(rng.normal(size=(FLAGS.examples,) + shape), dtype="float32")
    a = exact_difference(teacher, student, x)
    exact = np.sum(a**2, axis=(1, 2))
    size, classes = a.shape[2], a.shape[1]
    lines = [
        f"Models `{FLAGS.models}` at initialisation, input {list(shape)}, "
        f"{classes} classes, {FLAGS.examples} examples, {FLAGS.draws} "
        "draws each. Relative standard deviation of one step's per-example "
        "estimate of `||J_T - J_S||_F^2` (measured / closed form).",
        "",
        "| projections R | input directions (jvp, finite and forward "
        "differences) | output projections (vjp, orthonormal) | "
        "independent output projections |",
        "|---:|---:|---:|---:|",
    ]
    for count in [int(r) for r in FLAGS.projections]:
        inputs = input_direction_estimates(
            teacher, student, x, count, FLAGS.draws
        )
        outputs = output_projection_estimates(
            a, count, FLAGS.draws, rng, orthonormal=True
        )
        independent = output_projection_estimates(
            a, count, FLAGS.draws, rng, orthonormal=False
        )
        cells = []
        for estimates, n, orthonormal in (
            (inputs, size, True),
            (outputs, classes, True),
            (independent, classes, False),
        ):
            measured = np.mean(np.std(estimates, axis=0) / exact)
            predicted = np.mean(
                [
                    closed_form(a[i], n, count, orthonormal)
                    for i in range(len(a))
                ]
            )
            bias = np.mean(np.mean(estimates, axis=0) / exact - 1)
            cells.append(f"{measured:.3f} / {predicted:.3f} (mean {bias:+.3f})")
        lines.append(f"| {count} | {' | '.join(cells)} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if FLAGS.output:
        os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
        with open(FLAGS.output, "w") as f:
            f.write(table)


if __name__ == "__main__":
    app.run(main)
