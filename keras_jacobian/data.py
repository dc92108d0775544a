"""Image data sets, few-sample subsets, input pipelines and noisy test sets.

Three sources are supported by `load_dataset`:

- `"digits"`: the 8x8 handwritten digits bundled with scikit-learn (1,797
  real images, 10 classes). Works offline, without any download.
- any name of the TensorFlow Datasets catalog (`"cifar100"`, `"mnist"`,
  ...), read from `data_dir`. Nothing is downloaded unless `download=True`.
- an image folder `root/<split>/<class>/*.jpg|*.jpeg|*.png` (for example
  MIT Indoor 67), selected with the name `"folder:<root>"` or by passing a
  `pathlib.Path`.

Images are stored as `float32` arrays in `[0, 1]`. Normalisation, resizing
and augmentation happen in the `tf.data` pipelines built by `make_pipeline`,
so that noise (`noisy_copies`) is added in pixel space and every model input
goes through the same normalisation.
"""

import dataclasses
import math
import numbers
import os
import re
import weakref
from typing import Optional

import numpy as np
import tensorflow as tf

FOLDER_PREFIX = "folder:"

_AUTOTUNE = tf.data.AUTOTUNE

_MIT_INDOOR_LAYOUT = """\
    mit_indoor67/
      train/
        airport_inside/
          airport_inside_0001.jpg
          ...
        artstudio/
          ...
        ... (67 class folders)
      test/
        airport_inside/
          ...
"""


class DatasetNotAvailableError(RuntimeError):
    """Raised when a data set is not present locally and cannot be loaded.

    The message names the data set, where it was looked for and how to
    provide it (build or download it on a machine with network access and
    copy its `data_dir`, then pass `data_dir=`).
    """


# ---------------------------------------------------------------------------
# Pure index helpers.
# ---------------------------------------------------------------------------


def _as_label_array(labels):
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(
            "Expected `labels` to be a 1-D array of integer class ids. "
            f"Received an array of shape {labels.shape}. Pass integer "
            "labels (not one-hot), e.g. `np.argmax(one_hot, axis=-1)`."
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            "Expected integer class ids in `labels`. Received dtype "
            f"{labels.dtype}. Cast the labels with `labels.astype(int)`."
        )
    return labels


def stratified_subsample(
    labels, samples_per_class, seed=0, *, num_classes=None
):
    """Selects exactly `samples_per_class` examples of every class.

    The selection is drawn without replacement, independently in each class,
    from a NumPy generator seeded with `seed`: the same seed gives the same
    indices, another seed gives (almost surely) other ones. The function is
    pure: it only looks at `labels` and never at the images.

    Args:
        labels: 1-D array of integer class ids.
        samples_per_class: Positive number `k` of examples to keep per class.
        seed: Integer seed of the draw.
        num_classes: Optional number of classes. When given, every class in
            `range(num_classes)` must have at least `k` examples (a class
            missing from `labels` is an error too). When `None`, the classes
            are those present in `labels`.

    Returns:
        A sorted 1-D `int64` array of `k * num_classes` indices into `labels`.

    Example:

    >>> labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    >>> idx = stratified_subsample(labels, 2, seed=0)
    >>> np.bincount(labels[idx]).tolist()
    [2, 2, 2]
    """
    labels = _as_label_array(labels)
    if (
        isinstance(samples_per_class, bool)
        or not isinstance(samples_per_class, numbers.Integral)
        or samples_per_class < 1
    ):
        raise ValueError(
            "Expected `samples_per_class` to be a positive integer. "
            f"Received: samples_per_class={samples_per_class!r}. Pass e.g. "
            "`samples_per_class=10`, or `None` to keep every example."
        )
    k = int(samples_per_class)
    if num_classes is None:
        classes = np.unique(labels)
    else:
        classes = np.arange(int(num_classes))
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if members.size < k:
            raise ValueError(
                f"Expected at least samples_per_class={k} examples of every "
                f"class. Received only {members.size} examples of class "
                f"{int(c)}. Pass a smaller `samples_per_class` (at most "
                f"{members.size} here) or `None` to keep every example."
            )
        chosen.append(rng.permutation(members)[:k])
    if not chosen:
        return np.zeros((0,), dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def stratified_split(labels, fraction, seed=0):
    """Splits indices into two disjoint parts with the same class balance.

    In every class, `round(fraction * n_c)` of its `n_c` examples (drawn with
    a NumPy generator seeded with `seed`) go to the held-out part, the rest
    to the kept part.

    Args:
        labels: 1-D array of integer class ids.
        fraction: Fraction of each class to hold out, in `[0, 1)`.
        seed: Integer seed of the draw.

    Returns:
        A tuple `(kept, held_out)` of sorted, disjoint `int64` index arrays
        whose union is `range(len(labels))`.

    Example:

    >>> labels = np.repeat(np.arange(3), 10)
    >>> kept, held = stratified_split(labels, 0.2, seed=0)
    >>> len(kept), len(held)
    (24, 6)
    """
    labels = _as_label_array(labels)
    if not 0.0 <= float(fraction) < 1.0:
        raise ValueError(
            "Expected a fraction in [0, 1). Received: "
            f"fraction={fraction!r}. Pass e.g. 0.1 to hold out 10% of "
            "each class."
        )
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        held.append(members[: int(round(fraction * members.size))])
    held = np.sort(np.concatenate(held)) if held else np.zeros((0,), int)
    mask = np.ones(labels.shape[0], dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask).astype(np.int64), held.astype(np.int64)


def channel_stats(images, eps=1e-6):
    """Computes the per-channel mean and standard deviation of images.

    Args:
        images: Array of shape `(N, H, W, C)`.
        eps: Lower bound of the returned standard deviations (a constant
            channel would otherwise give a division by zero).

    Returns:
        A tuple `(mean, std)` of `float32` arrays of shape `(C,)`.

    Example:

    >>> mean, std = channel_stats(np.random.rand(10, 8, 8, 3))
    >>> mean.shape
    (3,)
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(
            "Expected images of shape (N, H, W, C). Received shape "
            f"{images.shape}. Add a channel axis with `images[..., None]`."
        )
    flat = images.reshape(-1, images.shape[-1]).astype(np.float64)
    mean = flat.mean(axis=0)
    std = np.maximum(flat.std(axis=0), eps)
    return mean.astype(np.float32), std.astype(np.float32)


def noisy_copies(images, sigmas, seed=0, *, clip=None):
    """Makes Gaussian-noise copies of a test set.

    Each copy is `images + sigma * z` with `z ~ N(0, I)`. The same draw `z`
    (seeded with `seed`) is shared by all sigmas (common random numbers), so
    accuracies at different noise levels are compared on the same noise
    pattern and the curve over sigma is smooth. Noise is added in the pixel
    scale of `images` (`[0, 1]` for data from `load_dataset`), before the
    pipeline's normalisation.

    Args:
        images: Array of shape `(N, ...)`.
        sigmas: A non-negative number or an iterable of them.
        seed: Integer seed of the noise.
        clip: `None` (default) keeps the pure Gaussian noise of the paper's
            analysis (`x + xi`, `xi ~ N(0, sigma^2 I)`); a pair `(low, high)`,
            e.g. `(0.0, 1.0)`, clips the noisy images to valid pixel values
            (which makes the actual noise smaller than `sigma`).

    Returns:
        A dict mapping each `float(sigma)` to a `float32` array with the
        shape of `images`.

    Example:

    >>> x = np.zeros((2, 8, 8, 1), np.float32)
    >>> copies = noisy_copies(x, [0.0, 0.1], seed=0)
    >>> sorted(copies)
    [0.0, 0.1]
    """
    if isinstance(sigmas, numbers.Real):
        sigmas = [sigmas]
    sigmas = [float(s) for s in sigmas]
    for s in sigmas:
        if not s >= 0.0 or math.isinf(s):
            raise ValueError(
                "Expected finite, non-negative noise levels in `sigmas`. "
                f"Received: sigmas={sigmas}. Pass e.g. [0.0, 0.05, 0.1]."
            )
    if clip is not None:
        low, high = clip
        if not low < high:
            raise ValueError(
                "Expected `clip=(low, high)` with low < high. Received: "
                f"clip={clip!r}. Pass e.g. clip=(0.0, 1.0), or None."
            )
    images = np.asarray(images, dtype=np.float32)
    z = np.random.default_rng(seed).standard_normal(images.shape)
    z = z.astype(np.float32)
    copies = {}
    for s in sigmas:
        noisy = images + np.float32(s) * z
        if clip is not None:
            noisy = np.clip(noisy, clip[0], clip[1])
        copies[s] = noisy.astype(np.float32)
    return copies


# ---------------------------------------------------------------------------
# Input pipelines.
# ---------------------------------------------------------------------------


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

# Op types whose presence in a tf.data graph makes element values random.
_RANDOM_OP_PATTERN = re.compile(
    r"Random|Multinomial|TruncatedNormal|RandomGamma|RandomPoisson"
)


def _normalize_size(image_size):
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


def _resize(image, size):
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
    size = _normalize_size(image_size)
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
            image = _resize(image, size)
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

        ds = ds.map(_map, num_parallel_calls=_AUTOTUNE)
    elif size is not None or mean_t is not None or std_t is not None:
        if labels is None:
            ds = ds.map(_prepare, num_parallel_calls=_AUTOTUNE)
        else:
            ds = ds.map(
                lambda image, target: (_prepare(image), target),
                num_parallel_calls=_AUTOTUNE,
            )
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.prefetch(_AUTOTUNE)
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


def _graph_op_types(dataset):
    serialized = dataset._as_serialized_graph(
        external_state_policy=tf.data.experimental.ExternalStatePolicy.IGNORE
    )
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(serialized.numpy())
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops.update(node.op for node in function.node_def)
    return ops


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
        ops = _graph_op_types(dataset)
    except Exception:  # Inspection is best effort; random is the safe side.
        return True
    return any(_RANDOM_OP_PATTERN.search(op) for op in ops)


# ---------------------------------------------------------------------------
# Data set loading.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(repr=False)
class ImageDataset:
    """An image classification data set held in memory.

    Images are `float32` arrays of shape `(N, H, W, C)` with values in
    `[0, 1]`; labels are `int32` arrays of shape `(N,)`. `mean` and `std`
    are the per-channel statistics of the training images (after
    subsampling), used by `pipeline` to normalise every split.

    Attributes:
        name: Name the data set was loaded with.
        train_images: Training images.
        train_labels: Training labels.
        test_images: Test images.
        test_labels: Test labels.
        num_classes: Number of classes.
        class_names: Tuple of class names, indexed by label.
        val_images: Validation images, or `None`.
        val_labels: Validation labels, or `None`.
        train_indices: Indices of the training examples in the source
            training split (in the whole data for `"digits"`).
        val_indices: Indices of the validation examples in the same
            source as `train_indices`, or `None`.
        test_indices: Indices of the test examples in the source test split
            (in the whole data for `"digits"`, or in the source training
            split when the test set was carved out of it).
        mean: Per-channel mean of `train_images`, shape `(C,)`.
        std: Per-channel standard deviation of `train_images`, shape `(C,)`.
        input_shape: Shape `(H, W, C)` of one image (read-only property).

    Example:

    >>> data = load_dataset("digits", samples_per_class=5)
    >>> data.input_shape, data.num_classes, len(data.train_labels)
    ((8, 8, 1), 10, 50)
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    class_names: tuple
    val_images: Optional[np.ndarray] = None
    val_labels: Optional[np.ndarray] = None
    train_indices: Optional[np.ndarray] = None
    val_indices: Optional[np.ndarray] = None
    test_indices: Optional[np.ndarray] = None
    mean: Optional[np.ndarray] = None
    std: Optional[np.ndarray] = None

    def __post_init__(self):
        if self.mean is None or self.std is None:
            mean, std = channel_stats(self.train_images)
            self.mean = mean if self.mean is None else self.mean
            self.std = std if self.std is None else self.std

    def __repr__(self):
        val = 0 if self.val_labels is None else len(self.val_labels)
        return (
            f"ImageDataset(name={self.name!r}, num_classes="
            f"{self.num_classes}, input_shape={self.input_shape}, "
            f"train={len(self.train_labels)}, val={val}, "
            f"test={len(self.test_labels)})"
        )

    @property
    def input_shape(self):
        """Shape `(H, W, C)` of one image."""
        return tuple(int(s) for s in self.train_images.shape[1:])

    def split(self, split):
        """Returns the `(images, labels)` arrays of a split.

        Args:
            split: `"train"`, `"val"` (or `"validation"`) or `"test"`.

        Returns:
            A tuple `(images, labels)`.

        Example:

        >>> data = load_dataset("digits")
        >>> x, y = data.split("test")
        """
        if split == "train":
            return self.train_images, self.train_labels
        if split == "test":
            return self.test_images, self.test_labels
        if split in ("val", "validation"):
            if self.val_images is None:
                raise ValueError(
                    "Expected a data set with a validation split. Received "
                    "one without (validation_fraction=0). Pass "
                    "`validation_fraction=0.1` to `load_dataset`."
                )
            return self.val_images, self.val_labels
        raise ValueError(
            "Expected split 'train', 'val' or 'test'. Received: "
            f"split={split!r}."
        )

    def pipeline(
        self,
        split="train",
        batch_size=128,
        *,
        training=None,
        augment=False,
        normalize=True,
        images=None,
        **kwargs,
    ):
        """Builds a `make_pipeline` pipeline over one split.

        Args:
            split: `"train"`, `"val"` or `"test"`.
            batch_size: Batch size.
            training: Defaults to `split == "train"`.
            augment: Whether to augment (training pipelines only).
            normalize: Whether to normalise with the training statistics
                `mean` and `std`.
            images: Optional replacement images with the split's labels,
                e.g. a noisy copy of the test images from `noisy_copies`.
            **kwargs: Other arguments of `make_pipeline` (`shuffle`,
                `seed`, `image_size`, `crop_padding`, ...).

        Returns:
            A batched `tf.data.Dataset` of `(images, labels)`.

        Example:

        >>> data = load_dataset("digits", samples_per_class=5)
        >>> ds = data.pipeline("train", 16, augment=True)
        """
        x, y = self.split(split)
        if images is not None:
            if len(images) != len(y):
                raise ValueError(
                    f"Expected {len(y)} replacement images for split "
                    f"{split!r}. Received {len(images)}."
                )
            x = images
        if training is None:
            training = split == "train"
        return make_pipeline(
            x,
            y,
            batch_size,
            training=training,
            augment=augment,
            mean=self.mean if normalize else None,
            std=self.std if normalize else None,
            **kwargs,
        )


class _Source:
    """A labelled image source with named splits."""

    name: str
    class_names: tuple
    splits: Optional[tuple]  # None when the split names are unknown.

    def labels(self, split):
        raise NotImplementedError

    def images(self, split, indices):
        raise NotImplementedError


class _DigitsSource(_Source):
    def __init__(self, image_size):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = (digits.images / 16.0).astype(np.float32)[..., None]
        if image_size is not None:
            images = _resize(images, image_size).numpy()
            images = np.clip(images, 0.0, 1.0)
        self._images = images
        self._labels = digits.target.astype(np.int64)
        self.name = "digits"
        self.class_names = tuple(str(c) for c in digits.target_names)
        self.splits = ("all",)

    def labels(self, split):
        return self._labels

    def images(self, split, indices):
        return self._images[indices]


def _not_available_message(name, data_dir, reason):
    where = data_dir or os.environ.get(
        "TFDS_DATA_DIR", os.path.join("~", "tensorflow_datasets")
    )
    return (
        f"The TensorFlow Datasets data set '{name}' is not available in "
        f"data_dir={where!r} ({reason}). `load_dataset` never downloads "
        "unless `download=True` is passed, and this machine may have no "
        "network access. To provide it: on a machine with network access "
        f"run `tfds build {name} --data_dir=DIR` (or "
        f"`tfds.load('{name}', data_dir='DIR')` in Python), copy DIR to "
        "this machine, then pass `data_dir=DIR` (the `--data_dir` flag of "
        "the scripts) or set the TFDS_DATA_DIR environment variable. Pass "
        "`download=True` to download it here instead."
    )


class _TfdsSource(_Source):
    """A TFDS builder (catalog data set or `tfds.folder_dataset`)."""

    def __init__(self, builder, name, image_size, data_dir=None):
        info = builder.info
        keys = info.supervised_keys
        if not keys or len(keys) != 2:
            raise ValueError(
                f"Expected an image classification data set with supervised "
                f"keys (image, label). Received '{name}' with "
                f"supervised_keys={keys!r}. Choose a classification data set "
                "such as 'cifar100' or 'mnist'."
            )
        image_key, label_key = keys
        label_feature = info.features[label_key]
        num_classes = getattr(label_feature, "num_classes", None)
        if not num_classes:
            raise ValueError(
                f"Expected the label '{label_key}' of '{name}' to be a "
                f"ClassLabel. Received a feature of type "
                f"{type(label_feature).__name__}. Choose a classification "
                "data set."
            )
        names = getattr(label_feature, "names", None)
        if not names:
            names = [str(i) for i in range(num_classes)]
        image_shape = getattr(info.features[image_key], "shape", None)
        if image_size is None and (
            image_shape is None or None in tuple(image_shape)[:2]
        ):
            raise ValueError(
                f"Expected `image_size` for '{name}', whose images differ "
                f"in size (image shape {image_shape}). Received "
                "image_size=None. Pass e.g. image_size=(224, 224): images "
                "are resized when loaded."
            )
        self._builder = builder
        self._image_size = image_size
        self._data_dir = data_dir
        self.name = name
        self.class_names = tuple(str(n) for n in names)
        split_names = tuple(info.splits.keys())
        self.splits = split_names or None

    def _as_dataset(self, split, decoders=None):
        try:
            return self._builder.as_dataset(
                split=split,
                as_supervised=True,
                shuffle_files=False,
                decoders=decoders,
            )
        except AssertionError as error:
            raise DatasetNotAvailableError(
                _not_available_message(
                    self.name, self._data_dir, "no prepared files were found"
                )
            ) from error

    def labels(self, split):
        import tensorflow_datasets as tfds

        image_key = self._builder.info.supervised_keys[0]
        ds = self._as_dataset(split, {image_key: tfds.decode.SkipDecoding()})
        ds = ds.map(lambda image, label: label).batch(4096)
        chunks = [np.asarray(b) for b in ds.as_numpy_iterator()]
        if not chunks:
            return np.zeros((0,), np.int64)
        return np.concatenate(chunks).astype(np.int64)

    def images(self, split, indices):
        ds = self._as_dataset(split)
        ds = ds.map(lambda image, label: image)
        if indices is not None:
            indices = np.asarray(indices, dtype=np.int64)
            if indices.size == 0:
                return None
            mask = np.zeros(int(indices.max()) + 1, dtype=bool)
            mask[indices] = True
            mask_t = tf.constant(mask)
            limit = mask.size
            ds = ds.take(limit).enumerate()
            ds = ds.filter(lambda i, image: tf.gather(mask_t, i))
            ds = ds.map(lambda i, image: image)
        size = self._image_size

        def _convert(image):
            image = tf.image.convert_image_dtype(image, tf.float32)
            if size is not None:
                image = tf.clip_by_value(_resize(image, size), 0.0, 1.0)
            return image

        ds = ds.map(_convert, num_parallel_calls=_AUTOTUNE).batch(256)
        chunks = [np.asarray(b) for b in ds.as_numpy_iterator()]
        return np.concatenate(chunks).astype(np.float32)


def _tfds_source(name, data_dir, image_size, download):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(
            "Expected 'digits', 'folder:<root>' or a TensorFlow Datasets "
            f"catalog name (e.g. 'cifar100', 'mnist'). Received "
            f"name={name!r}, which is not in the catalog. See "
            "`tfds.list_builders()` for the catalog names."
        ) from error
    if download and not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except Exception as error:  # Network or disk errors, any type.
            raise DatasetNotAvailableError(
                _not_available_message(
                    name, data_dir, f"download failed: {error}"
                )
            ) from error
    return _TfdsSource(builder, name, image_size, data_dir=data_dir)


def _folder_source(root, image_size):
    import tensorflow_datasets as tfds

    root = os.path.expanduser(str(root))
    if not os.path.isdir(root):
        raise DatasetNotAvailableError(
            f"The image folder {root!r} does not exist. Expected a "
            "directory laid out as root/<split>/<class>/<image>.jpg|png, "
            f"e.g. for MIT Indoor 67:\n{_MIT_INDOOR_LAYOUT}"
            "Copy the images there, or pass the right path as "
            "'folder:<root>'."
        )
    builder = tfds.folder_dataset.ImageFolder(root)
    if (
        not builder.info.splits.keys()
        or builder.info.features["label"].num_classes == 0
    ):
        raise ValueError(
            f"Expected images in {root!r} laid out as "
            "root/<split>/<class>/<image>.jpg|jpeg|png, e.g. for MIT Indoor "
            f"67:\n{_MIT_INDOOR_LAYOUT}Received a folder without such "
            "images. Move the images into that layout."
        )
    name = FOLDER_PREFIX + root
    return _TfdsSource(builder, name, _normalize_size(image_size))


def _resolve_source(name, data_dir, image_size, download):
    if isinstance(name, os.PathLike):
        return _folder_source(os.fspath(name), image_size)
    if not isinstance(name, str) or not name:
        raise ValueError(
            "Expected `name` to be 'digits', 'folder:<root>', a "
            "`pathlib.Path` or a TensorFlow Datasets catalog name. "
            f"Received: name={name!r}."
        )
    if name == "digits":
        return _DigitsSource(_normalize_size(image_size))
    if name.startswith(FOLDER_PREFIX):
        return _folder_source(name[len(FOLDER_PREFIX) :], image_size)
    return _tfds_source(name, data_dir, _normalize_size(image_size), download)


def _split_exists(source, split):
    if source.splits is None:  # Unknown split names: try to read it.
        return True
    return split.split("[")[0] in source.splits


def load_dataset(
    name="digits",
    *,
    data_dir=None,
    image_size=None,
    samples_per_class=None,
    seed=0,
    validation_fraction=0.0,
    train_split="train",
    test_split="test",
    test_fraction=1.0 / 3.0,
    split_seed=0,
    download=False,
):
    """Loads an image classification data set into memory.

    Sources, chosen by `name`:

    - `"digits"`: scikit-learn's 8x8 handwritten digits (1,797 images, 10
      classes, bundled with scikit-learn, offline). Pixel values `0..16`
      are scaled to `[0, 1]`; images have shape `(8, 8, 1)`. The data has
      no test split: a stratified third (`test_fraction`) is held out with
      `split_seed`, the same for every `seed`.
    - a TensorFlow Datasets catalog name such as `"cifar100"`, `"mnist"`
      or `"cifar10"` (configs and versions as in `tfds.load`), read from
      `data_dir` (default `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
      Nothing is downloaded unless `download=True`: a missing data set
      raises `DatasetNotAvailableError` saying how to provide it (build it
      with `tfds build NAME --data_dir=DIR` on a machine with network
      access, copy `DIR` and pass `data_dir=DIR`).
    - an image folder, given as `"folder:<root>"` or as a `pathlib.Path`
      (a plain string is always a catalog name, so that a directory named
      like a catalog data set cannot change the meaning of a name), read
      with `tfds.folder_dataset.ImageFolder`. Class names are the sorted
      folder names; images are decoded to 3 channels; `data_dir` is not
      used. Images usually differ in size, so `image_size` is required.

    Image folders are laid out as `root/<split>/<class>/<image>.jpg` (or
    `.jpeg`, `.png`). MIT Indoor 67, which is not in the TFDS catalog, is
    distributed as `Images/<class>/*.jpg` with the lists `TrainImages.txt`
    and `TestImages.txt` (80 + 20 images per class); copy or link the files
    of each list into:

    ```
    mit_indoor67/
      train/
        airport_inside/
          airport_inside_0001.jpg
          ...
        ... (67 class folders)
      test/
        airport_inside/
          ...
    ```

    then call `load_dataset("folder:/path/to/mit_indoor67",
    image_size=(224, 224))`.

    When the source has no `test_split`, a stratified `test_fraction` of the
    training split is held out as the test set (with `split_seed`).

    The training examples are then chosen in this order, always among
    examples of the training split that are not in the test set: first a
    stratified `validation_fraction` is held out as the validation set
    (with `split_seed`, so it is the same for every `seed`); then, when
    `samples_per_class=k`, exactly `k` examples of each class are drawn
    from the rest with `stratified_subsample(labels, k, seed)`. Only the
    selected images are decoded and kept in memory.

    Images are resized (antialiased bilinear) to `image_size` when given,
    and stored as `float32` in `[0, 1]`. Normalisation and augmentation are
    left to `ImageDataset.pipeline` / `make_pipeline`.

    Args:
        name: `"digits"`, a TFDS catalog name, `"folder:<root>"` or a
            `pathlib.Path` to an image folder.
        data_dir: TFDS data directory for catalog data sets.
        image_size: `None` (keep the native size), an int or a pair
            `(height, width)`. Required for image folders.
        samples_per_class: `None` to keep all training examples, or the
            number `k` of training examples per class (an error names any
            class with fewer than `k` examples).
        seed: Seed of the `samples_per_class` draw.
        validation_fraction: Fraction in `[0, 1)` of each class of the
            training split held out for validation.
        train_split: Name of the source's training split (TFDS split
            syntax allowed, e.g. `"train[:90%]"`).
        test_split: Name of the source's test split.
        test_fraction: Fraction of the training split held out as test set
            when the source has no `test_split` (e.g. `"digits"`).
        split_seed: Seed of the test and validation hold-outs.
        download: Whether TFDS may download and prepare a missing catalog
            data set. Off by default, so that a machine without network
            access fails fast with a clear message instead of hanging.

    Returns:
        An `ImageDataset`.

    Raises:
        DatasetNotAvailableError: if a catalog data set is not in
            `data_dir` (and `download=False`, or the download fails), or an
            image folder does not exist.
        ValueError: for unknown names, bad arguments, or classes with fewer
            than `samples_per_class` training examples.

    Example:

    >>> data = load_dataset("digits", samples_per_class=10, seed=1)
    >>> data.train_images.shape
    (100, 8, 8, 1)
    >>> ds = data.pipeline("train", 32, augment=False)
    """
    if not 0.0 <= float(validation_fraction) < 1.0:
        raise ValueError(
            "Expected `validation_fraction` in [0, 1). Received: "
            f"validation_fraction={validation_fraction!r}. Pass e.g. 0.1."
        )
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(
            "Expected `test_fraction` in (0, 1). Received: "
            f"test_fraction={test_fraction!r}. Pass e.g. 1/3."
        )
    if samples_per_class is not None:
        # Validate early, before any image is read.
        stratified_subsample(np.zeros((0,), np.int64), samples_per_class)
    source = _resolve_source(name, data_dir, image_size, download)
    num_classes = len(source.class_names)

    if isinstance(source, _DigitsSource):
        train_split_name = test_split_name = "all"
        labels = source.labels("all")
        pool, test_idx = stratified_split(labels, test_fraction, split_seed)
        train_labels_all = test_labels_all = labels
    else:
        train_split_name = train_split
        train_labels_all = source.labels(train_split)
        if _split_exists(source, test_split):
            test_split_name = test_split
            test_labels_all = source.labels(test_split)
            pool = np.arange(train_labels_all.shape[0], dtype=np.int64)
            test_idx = np.arange(test_labels_all.shape[0], dtype=np.int64)
        else:
            test_split_name = train_split
            test_labels_all = train_labels_all
            pool, test_idx = stratified_split(
                train_labels_all, test_fraction, split_seed
            )

    val_idx = None
    if validation_fraction > 0:
        keep, held = stratified_split(
            train_labels_all[pool], validation_fraction, split_seed
        )
        val_idx = pool[held]
        pool = pool[keep]
    if samples_per_class is not None:
        chosen = stratified_subsample(
            train_labels_all[pool],
            samples_per_class,
            seed,
            num_classes=num_classes,
        )
        train_idx = pool[chosen]
    else:
        train_idx = pool

    train_images = source.images(train_split_name, train_idx)
    test_images = source.images(test_split_name, test_idx)
    val_images = val_labels = None
    if val_idx is not None:
        val_images = source.images(train_split_name, val_idx)
        val_labels = train_labels_all[val_idx].astype(np.int32)
    if train_images is None or len(train_idx) == 0:
        raise ValueError(
            f"Expected training examples in '{source.name}' split "
            f"{train_split_name!r}. Received an empty split. Check "
            "`train_split`."
        )
    return ImageDataset(
        name=source.name,
        train_images=train_images,
        train_labels=train_labels_all[train_idx].astype(np.int32),
        test_images=test_images,
        test_labels=test_labels_all[test_idx].astype(np.int32),
        num_classes=num_classes,
        class_names=source.class_names,
        val_images=val_images,
        val_labels=val_labels,
        train_indices=train_idx,
        val_indices=val_idx,
        test_indices=test_idx,
    )
