"""Attention maps of feature maps (Zagoruyko & Komodakis, 2017).

For a feature map `A` of shape `(batch, H, W, C)` the spatial attention
map is `Q = mean_c |A_c|^p`, shape `(batch, H, W)`; the attention map used
for transfer is `Q` flattened and L2-normalised per example. Maps of
networks whose feature maps differ in size are brought to one size by
`resize_maps`, a fixed linear operator (area weights), so that every
derivative of it exists.

All functions are pure: tensors in, tensors out, no state.
"""

import numpy as np
import tensorflow as tf

from keras_jacobian import jacobians


def check_feature_rank(shape, where):
    """Raises unless `shape` is that of a `(batch, ..., channels)` map."""
    if len(shape) < 3:
        raise ValueError(
            f"{where} needs a feature map with spatial axes, shape "
            "(batch, height, width, channels) or (batch, steps, channels). "
            f"Received shape {tuple(shape)}. Pick a convolutional layer, "
            "before global pooling or flattening."
        )


def spatial_attention_map(features, p=2):
    """The attention map `mean_c |A_c|^p`, spatial axes kept.

    Args:
        features: float tensor `(batch, *spatial, channels)`.
        p: the power, a number > 0 (2 in Zagoruyko & Komodakis).

    Returns:
        A float32 tensor `(batch, *spatial)`.
    """
    features = tf.cast(features, "float32")
    if p == 2:
        powered = tf.square(features)
    else:
        powered = tf.pow(tf.abs(features), float(p))
    return tf.reduce_mean(powered, axis=-1)


def flatten_maps(maps):
    """Reshapes `(batch, *spatial)` maps to `(batch, positions)`."""
    return tf.reshape(maps, [tf.shape(maps)[0], -1])


def normalize_maps(maps):
    """Flattens maps and L2-normalises each; a zero map stays zero."""
    return jacobians.normalize_rows(flatten_maps(maps))


def attention_map(features, p=2):
    """The flattened, per-example L2-normalised attention map.

    `Q / ||Q||` with `Q = mean_c |A_c|^p`; at `Q = 0` the result is 0
    (not NaN) and so is its gradient.

    Args:
        features: float tensor `(batch, *spatial, channels)`.
        p: the power, a number > 0.

    Returns:
        A float32 tensor `(batch, positions)`, `positions = prod(spatial)`.
    """
    return normalize_maps(spatial_attention_map(features, p))


def area_weights(source, target):
    """The `(target, source)` matrix of 1-D area resizing.

    Output cell `i` covers `[i * s, (i + 1) * s)` of the source axis, with
    `s = source / target`; its value is the mean of the source cells
    weighted by their overlap. For an integer downscaling factor this is
    average pooling, for an integer upscaling factor it repeats cells.
    """
    scale = source / target
    weights = np.zeros((target, source), "float32")
    for i in range(target):
        start, stop = i * scale, (i + 1) * scale
        for j in range(int(np.floor(start)), int(np.ceil(stop))):
            overlap = min(stop, j + 1) - max(start, j)
            if overlap > 0:
                weights[i, j] = overlap / scale
    return weights


def dynamic_area_weights(source, target):
    """`area_weights` as a float32 tensor, for sizes known at run time.

    Args:
        source: the source length, an int or a scalar int tensor.
        target: the target length, an int or a scalar int tensor.
    """
    source = tf.cast(source, "float32")
    target = tf.cast(target, "float32")
    scale = source / target
    starts = tf.range(target)[:, None] * scale
    cells = tf.range(source)[None, :]
    overlap = tf.minimum(starts + scale, cells + 1.0) - tf.maximum(
        starts, cells
    )
    return tf.maximum(overlap, 0.0) / scale


def _weights(source, target):
    if isinstance(source, int) and isinstance(target, int):
        return tf.constant(area_weights(source, target))
    return dynamic_area_weights(source, target)


def _is_static(size):
    return all(isinstance(s, int) for s in size)


def _sizes(tensor, size, first, last):
    """Source and target spatial sizes: ints where known, else tensors."""
    size = tuple(
        int(s) if isinstance(s, (int, np.integer)) else s for s in size
    )
    source = jacobians.known_shape(tensor)[first:last]
    return tuple(source), size


def resize_maps(maps, size):
    """Resizes spatial maps `(batch, H, W)` to `size = (h, w)` by area.

    A fixed linear map `R_h Q R_w^T`, with the matrices of `area_weights`:
    differentiable to any order (TensorFlow's bilinear resize has no
    second derivative), exact average pooling for integer factors.

    In the attention terms only the teacher's map is resized, to the size
    of the student's map: it is a constant for the student's update.

    Args:
        maps: float tensor `(batch, H, W)` (or `(batch, T)` for sequences,
            with `size = (t,)`).
        size: the target spatial shape; entries may be scalar int
            tensors (sizes known only when the step runs), and so may
            the spatial axes of `maps`, whose matrices are then built at
            run time (the identity when the sizes agree).

    Returns:
        A float32 tensor `(batch, *size)`.
    """
    maps = tf.convert_to_tensor(maps)
    source, size = _sizes(maps, size, 1, None)
    if len(source) != len(size):
        raise ValueError(
            f"Cannot resize maps of spatial shape {tuple(maps.shape[1:])} "
            f"to {size}: the number of spatial axes differs."
        )
    maps = tf.cast(maps, "float32")
    if _is_static(source + size) and source == size:
        return maps
    if len(size) == 1:
        r = _weights(source[0], size[0])
        return tf.einsum("ij,bj->bi", r, maps)
    if len(size) != 2:
        raise ValueError(
            f"Maps with {len(size)} spatial axes are not supported. "
            f"Received spatial shape {tuple(maps.shape[1:])}."
        )
    rows = _weights(source[0], size[0])
    cols = _weights(source[1], size[1])
    return tf.einsum("ih,bhw,jw->bij", rows, maps, cols)


def resize_features(features, size):
    """Resizes feature maps `(batch, H, W, C)` spatially by area weights.

    Sizes may be known only at run time, as in `resize_maps`.
    """
    features = tf.convert_to_tensor(features)
    source, size = _sizes(features, size, 1, -1)
    if _is_static(source + size) and source == size:
        return features
    if len(size) != 2 or len(source) != 2:
        raise ValueError(
            "Only 2-D feature maps can be resized. Received spatial shape "
            f"{tuple(features.shape[1:-1])} and target {size}."
        )
    rows = _weights(source[0], size[0])
    cols = _weights(source[1], size[1])
    features = tf.cast(features, "float32")
    return tf.einsum("ih,bhwc,jw->bijc", rows, features, cols)


def map_to_image(maps, max_images=None):
    """Scales spatial maps `(batch, H, W)` to images in [0, 1].

    Each map is divided by its maximum (a zero map stays zero), giving a
    `(batch, H, W, 1)` float32 tensor suitable for `tf.summary.image`.
    """
    maps = tf.cast(maps, "float32")
    if max_images is not None:
        maps = maps[:max_images]
    peak = tf.reduce_max(maps, axis=[1, 2], keepdims=True)
    images = maps / tf.maximum(peak, 1e-12)
    return images[..., None]
