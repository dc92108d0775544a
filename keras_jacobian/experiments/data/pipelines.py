"""`tf.data` input pipelines for the example experiments.

`make_pipeline` normalises, resizes, augments, shuffles and batches images
held in memory, and records how it was built (`pipeline_info`), so that
code caching per-example results can tell whether a pipeline is random
(`is_random_pipeline`).
"""

import dataclasses
import numbers
import weakref

import numpy as np
import tensorflow as tf

from keras_jacobian.caching import dataset_random_ops


@dataclasses.dataclass(frozen=True)
class PipelineInfo:
    """How a pipeline made by `make_pipeline` transforms its examples.

    Attributes:
        training: Whether it was built as a training pipeline.
        augment: Whether images are randomly augmented (random content).
        shuffle: Whether the example order is random.
        batch_size: Batch size.
        num_examples: Number of examples per epoch.
    """

    training: bool
    augment: bool
    shuffle: bool
    batch_size: int
    num_examples: int

    @property
    def random(self):
        """Whether the pipeline yields different images on each pass."""
        return self.augment


_PIPELINES = weakref.WeakKeyDictionary()


def normalize_size(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, numbers.Integral):
        size = (int(image_size), int(image_size))
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(
            "Expected `image_size` to be a positive int or a pair "
            f"(height, width). Received: image_size={image_size!r}. Pass "
            "e.g. image_size=32 or image_size=(224, 224)."
        )
    return size


def resize_image(image, size):
    """Resizes (antialiased bilinear) and keeps values in their range."""
    resized = tf.image.resize(image, size, method="bilinear", antialias=True)
    return tf.cast(resized, tf.float32)


def make_pipeline(
    images,
    labels=None,
    batch_size=128,
    *,
    training,
    augment=False,
    mean=None,
    std=None,
    image_size=None,
    shuffle=None,
    seed=0,
    crop_padding=4,
    flip=True,
    pad_mode="constant",
    drop_remainder=False,
):
    """Builds a batched, prefetched `tf.data` pipeline over in-memory images.

    Each example goes through: resizing to `image_size` (if given,
    antialiased bilinear; resizing belongs here and not in the model, where
    it would break double backpropagation), normalisation
    `(x - mean) / std`, then, when `augment=True`, a random horizontal flip
    and a random crop of the image padded with `crop_padding` pixels on each
    side (zero padding after normalisation, i.e. the mean colour, or
    reflection). Examples are then batched and prefetched.

    Augmentation draws per-example seeds from `tf.data.Dataset.random(seed)`
    re-randomised on every pass: runs are reproducible, and each epoch sees
    new augmentations. Pipelines with augmentation are "random": their
    images differ from pass to pass, so teacher outputs cannot be cached
    for them; `is_random_pipeline` reports it. Shuffling alone does not
    make a pipeline random in that sense, because the targets travel with
    their images (pass cached teacher outputs inside `labels`).

    Args:
        images: Array or tensor of shape `(N, H, W, C)`; floating point
            values are used as they are, integer images (e.g. `uint8`)
            are scaled to `[0, 1]`.
        labels: `None`, an array of shape `(N, ...)`, or a nested structure
            (tuple / dict) of such arrays, e.g. `(labels, teacher_logits)`.
        batch_size: Batch size.
        training: Whether this is a training pipeline (shuffled by default,
            may be augmented).
        augment: Whether to apply random flip and random crop. Requires
            `training=True`.
        mean: Per-channel mean (shape `(C,)` or scalar) subtracted from the
            images; `None` subtracts nothing.
        std: Per-channel standard deviation the images are divided by;
            `None` divides by nothing.
        image_size: `None`, an int or a pair `(height, width)`.
        shuffle: Whether to shuffle the examples on every pass. Defaults to
            `training`.
        seed: Integer seed of the shuffle and of the augmentation.
        crop_padding: Pixels of padding on each side before the random crop
            (0 disables the crop).
        flip: Whether augmentation includes random horizontal flips.
        pad_mode: `"constant"` or `"reflect"` padding for the random crop.
        drop_remainder: Whether to drop the last incomplete batch.

    Returns:
        A `tf.data.Dataset` yielding `images` batches, or `(images, labels)`
        batches when `labels` is given.

    Example:

    >>> x = np.random.rand(20, 8, 8, 1).astype("float32")
    >>> y = np.arange(20) % 10
    >>> ds = make_pipeline(x, y, 8, training=True, augment=True)
    >>> is_random_pipeline(ds)
    True
    """
    training = bool(training)
    if augment and not training:
        raise ValueError(
            "Expected `augment=False` for a pipeline with training=False. "
            "Received augment=True. Augmentation is for training pipelines: "
            "pass training=True, or augment=False for evaluation."
        )
    if pad_mode not in ("constant", "reflect"):
        raise ValueError(
            "Expected `pad_mode` to be 'constant' or 'reflect'. Received: "
            f"pad_mode={pad_mode!r}."
        )
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, numbers.Integral)
        or batch_size < 1
    ):
        raise ValueError(
            "Expected a positive integer `batch_size`. Received: "
            f"batch_size={batch_size!r}."
        )
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4:
        raise ValueError(
            "Expected images of shape (N, H, W, C). Received shape "
            f"{tuple(images.shape)}. Add a channel axis with "
            "`images[..., None]`."
        )
    if not images.dtype.is_floating:
        images = tf.image.convert_image_dtype(images, tf.float32)
    images = tf.cast(images, tf.float32)
    num_examples = int(images.shape[0])
    channels = int(images.shape[-1])
    size = normalize_size(image_size)
    if size is not None and tuple(images.shape[1:3]) == size:
        size = None
    out_hw = size or tuple(int(s) for s in images.shape[1:3])
    shuffle = training if shuffle is None else bool(shuffle)
    crop_padding = int(crop_padding)

    def _vector(value, what):
        value = np.asarray(value, dtype=np.float32).reshape(-1)
        if value.size not in (1, channels):
            raise ValueError(
                f"Expected `{what}` to be a scalar or to have {channels} "
                f"values (one per channel). Received {value.size} values."
            )
        return tf.constant(value)

    mean_t = None if mean is None else _vector(mean, "mean")
    std_t = None if std is None else _vector(std, "std")

    if labels is None:
        ds = tf.data.Dataset.from_tensor_slices(images)
    else:
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle:
        ds = ds.shuffle(
            max(num_examples, 1), seed=seed, reshuffle_each_iteration=True
        )

    def _prepare(image):
        if size is not None:
            image = resize_image(image, size)
        if mean_t is not None:
            image = image - mean_t
        if std_t is not None:
            image = image / std_t
        return image

    def _augment(image, element_seed):
        flip_seed, crop_seed = tf.unstack(
            tf.random.experimental.stateless_split(element_seed, 2)
        )
        if flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        if crop_padding > 0:
            p = crop_padding
            padded = tf.pad(
                image, [[p, p], [p, p], [0, 0]], mode=pad_mode.upper()
            )
            image = tf.image.stateless_random_crop(
                padded, (out_hw[0], out_hw[1], channels), seed=crop_seed
            )
        return image

    if augment:
        seeds = tf.data.Dataset.random(
            seed=seed, rerandomize_each_iteration=True
        ).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds))
        if labels is None:

            def _map(image, element_seed):
                return _augment(_prepare(image), element_seed)

        else:

            def _map(element, element_seed):
                image, target = element
                return _augment(_prepare(image), element_seed), target

        ds = ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE)
    elif size is not None or mean_t is not None or std_t is not None:
        if labels is None:
            ds = ds.map(_prepare, num_parallel_calls=tf.data.AUTOTUNE)
        else:
            ds = ds.map(
                lambda image, target: (_prepare(image), target),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    _PIPELINES[ds] = PipelineInfo(
        training=training,
        augment=bool(augment),
        shuffle=shuffle,
        batch_size=int(batch_size),
        num_examples=num_examples,
    )
    return ds


def pipeline_info(dataset):
    """Returns the `PipelineInfo` of a pipeline made by `make_pipeline`.

    Args:
        dataset: A `tf.data.Dataset`.

    Returns:
        The `PipelineInfo` recorded by `make_pipeline`, or `None` for any
        other data set (including data sets derived from one by `.map`,
        `.take`, ...).

    Example:

    >>> ds = make_pipeline(np.zeros((4, 8, 8, 1)), None, 2, training=False)
    >>> pipeline_info(ds).shuffle
    False
    """
    try:
        return _PIPELINES.get(dataset)
    except TypeError:
        return None


def is_random_pipeline(dataset):
    """Tells whether a pipeline yields different images on each pass.

    A pipeline is random when the values of its elements change from one
    iteration to the next (random augmentation, noise, random sampling of
    values). Code that caches per-example results, such as teacher outputs,
    must refuse random pipelines. Shuffling alone is not reported as random:
    the examples stay the same, only their order changes (check
    `pipeline_info(ds).shuffle` when the order matters).

    Pipelines made by `make_pipeline` are answered from what was recorded
    when they were built. Other `tf.data.Dataset`s are inspected: the
    pipeline's graph (including its mapped functions) is searched for random
    ops (this serialises the pipeline, including in-memory arrays, so it
    costs a copy of them). When the pipeline cannot be inspected, the answer
    is `True` (the safe answer for caching).

    Args:
        dataset: A `tf.data.Dataset`.

    Returns:
        A bool.

    Example:

    >>> x = np.zeros((4, 8, 8, 1), "float32")
    >>> is_random_pipeline(make_pipeline(x, None, 2, training=True))
    False
    """
    info = pipeline_info(dataset)
    if info is not None:
        return info.random
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(
            "Expected a `tf.data.Dataset`. Received an object of type "
            f"{type(dataset).__name__}. Build the pipeline with "
            "`make_pipeline` or `tf.data`."
        )
    try:
        return bool(dataset_random_ops(dataset))
    except Exception:  # Inspection is best effort; random is the safe side.
        return True
