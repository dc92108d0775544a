"""One data set in memory, with its few-sample subset: `load_dataset`.

`load_dataset` reads a source (`sources.py`: `"digits"`, a TFDS name, or
an image folder `"folder:<root>"`), holds out test and validation splits
(stratified when the source has none), and draws the seeded per-class
training subset. The `ImageDataset` it returns builds `tf.data` pipelines
(`pipelines.py`) that normalise with the training images' statistics.
"""

import dataclasses
from typing import Optional

import numpy as np

from keras_jacobian.experiments.data.pipelines import make_pipeline
from keras_jacobian.experiments.data.sampling import channel_stats
from keras_jacobian.experiments.data.sampling import stratified_split
from keras_jacobian.experiments.data.sampling import stratified_subsample
from keras_jacobian.experiments.data.sources import FOLDER_PREFIX  # noqa: F401
from keras_jacobian.experiments.data.sources import DatasetNotAvailableError  # noqa: F401
from keras_jacobian.experiments.data.sources import _DigitsSource
from keras_jacobian.experiments.data.sources import _resolve_source
from keras_jacobian.experiments.data.sources import _split_exists


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
      used. `image_size` is required when the images differ in size (their
      sizes are read from the PNG and JPEG headers).

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
            `(height, width)`. Required for image folders whose images
            differ in size.
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
