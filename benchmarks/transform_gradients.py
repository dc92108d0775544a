r"""TensorFlow's gradient of Keras' image transforms, against the transform.

For one draw of `RandomTranslation`, `RandomRotation`, `RandomZoom` and
`RandomShear` (training mode, a 6x6x1 image; translations also by a
fixed 1.5 pixels, where nearest-neighbour sampling ties), the transform
is linear in the image: its matrix is read column by column, passing
each unit image through the layer with the same seed state. This
prints, per layer, `fill_mode` and `interpolation`, the largest
difference between the tape Jacobian (`tf.GradientTape.jacobian`, the
gradient TensorFlow registers for `ImageProjectiveTransformV3`) and that
matrix, whose entries are in [0, 1]:

  python benchmarks/transform_gradients.py

`keras_jacobian.transforms` refuses reverse and forward mode through the
transforms whose difference is not zero.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

SIZE = 6
KINDS = ("translation", "half_pixel_translation", "rotation", "zoom", "shear")
FILL_MODES = ("reflect", "wrap", "constant", "nearest")
INTERPOLATIONS = ("bilinear", "nearest")


def layer(kind, fill_mode, interpolation):
    kwargs = dict(fill_mode=fill_mode, interpolation=interpolation, seed=1)
    if kind == "translation":
        return keras.layers.RandomTranslation(0.3, 0.3, **kwargs)
    if kind == "half_pixel_translation":
        # A fixed shift of 1.5 pixels: nearest-neighbour sampling ties.
        shift = (0.25, 0.25)
        return keras.layers.RandomTranslation(shift, shift, **kwargs)
    if kind == "rotation":
        return keras.layers.RandomRotation(0.2, **kwargs)
    if kind == "zoom":
        return keras.layers.RandomZoom(0.3, **kwargs)
    return keras.layers.RandomShear(0.3, 0.3, **kwargs)


def error(kind, fill_mode, interpolation):
    """max |tape Jacobian - transform matrix| for one draw."""
    transform = layer(kind, fill_mode, interpolation)
    shape = (1, SIZE, SIZE, 1)
    x = tf.constant(np.random.default_rng(0).random(shape), "float32")
    transform.build(shape)
    state = [v.numpy() for v in transform.variables]

    def run(image):
        for v, value in zip(transform.variables, state):
            v.assign(value)
        return transform(image, training=True)

    with tf.GradientTape() as tape:
        tape.watch(x)
        y = run(x)
    tape_jacobian = tape.jacobian(y, x).numpy().reshape(SIZE**2, SIZE**2)
    columns = []
    for i in range(SIZE**2):
        unit = np.zeros(shape, "float32")
        unit.flat[i] = 1.0
        columns.append(run(tf.constant(unit)).numpy().ravel())
    matrix = np.stack(columns, axis=1)
    # The columns are the transform: it maps x to matrix @ x.
    np.testing.assert_allclose(
        y.numpy().ravel(), matrix @ x.numpy().ravel(), atol=1e-5
    )
    return float(np.abs(tape_jacobian - matrix).max())


def main():
    print("| layer | fill_mode | interpolation | max error |")
    print("|---|---|---|---:|")
    for kind in KINDS:
        for fill_mode in FILL_MODES:
            for interpolation in INTERPOLATIONS:
                value = error(kind, fill_mode, interpolation)
                name = "".join(w.title() for w in kind.split("_"))
                print(
                    f"| Random{name} | {fill_mode} | "
                    f"{interpolation} | {value:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
