"""Where the example data sets come from: digits, TFDS, image folders.

Each source reads one data set into memory as float32 images in `[0, 1]`.
`DatasetNotAvailableError` says where a missing data set was looked for and
how to provide it (nothing is downloaded unless asked).
"""

import difflib
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from keras_jacobian.experiments.data.pipelines import normalize_size
from keras_jacobian.experiments.data.pipelines import resize_image

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
            images = resize_image(images, image_size).numpy()
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

    def __init__(
        self, builder, name, image_size, data_dir=None, common_size=None
    ):
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
        if (
            image_size is None
            and common_size is None
            and (image_shape is None or None in tuple(image_shape)[:2])
        ):
            raise ValueError(
                f"Expected `image_size` for '{name}', whose images differ "
                f"in size (image shape {image_shape}). Received "
                "image_size=None. Pass e.g. image_size=(224, 224) "
                "(`--image_size=224` in the example scripts): images are "
                "resized when loaded."
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
        try:
            return self._images(split, indices)
        except tf.errors.InvalidArgumentError as error:
            bad = self._undecodable(split)
            if not bad:
                raise
            shown = ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else "")
            raise ValueError(
                f"Could not decode {len(bad)} image(s) of split '{split}' of "
                f"'{self.name}': {shown}. Expected JPEG, PNG, GIF, BMP or "
                "WebP files. Remove or replace these files and load again."
            ) from error

    def _undecodable(self, split):
        """Names (or indices) of the examples whose image cannot decode."""
        import tensorflow_datasets as tfds

        image_key = self._builder.info.supervised_keys[0]
        ds = self._builder.as_dataset(
            split=split,
            shuffle_files=False,
            decoders={image_key: tfds.decode.SkipDecoding()},
        )
        bad = []
        for i, example in enumerate(ds.as_numpy_iterator()):
            try:
                tf.io.decode_image(example[image_key], expand_animations=False)
            except tf.errors.InvalidArgumentError:
                name = example.get("image/filename", b"")
                name = name.decode() if isinstance(name, bytes) else name
                bad.append(name or f"example {i}")
        return bad

    def _images(self, split, indices):
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
                image = tf.clip_by_value(resize_image(image, size), 0.0, 1.0)
            return image

        ds = ds.map(_convert, num_parallel_calls=_AUTOTUNE).batch(256)
        chunks = [np.asarray(b) for b in ds.as_numpy_iterator()]
        return np.concatenate(chunks).astype(np.float32)


def _did_you_mean(name):
    """' Did you mean ...?' for the closest data set name, or ''."""
    import tensorflow_datasets as tfds

    base = name.split(":")[0].split("/")[0]
    names = ["digits"] + list(tfds.list_builders())
    close = difflib.get_close_matches(base, names, n=1, cutoff=0.75)
    return f" Did you mean {close[0]!r}?" if close else ""


def _tfds_source(name, data_dir, image_size, download):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(
            "Expected 'digits', 'folder:<root>' or a TensorFlow Datasets "
            f"catalog name (e.g. 'cifar100', 'mnist'). Received "
            f"name={name!r}, which is not in the catalog.{_did_you_mean(name)}"
            " See `tfds.list_builders()` for the catalog names."
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
    size = normalize_size(image_size)
    common = None if size is not None else _common_image_size(root)
    return _TfdsSource(builder, name, size, common_size=common)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _image_size(path):
    """(height, width) of a PNG or JPEG file, read from its header."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] == _PNG_SIGNATURE:
        return int.from_bytes(head[20:24], "big"), int.from_bytes(
            head[16:20], "big"
        )
    shape = tf.io.extract_jpeg_shape(tf.io.read_file(path)).numpy()
    return int(shape[0]), int(shape[1])


def _common_image_size(root):
    """The size every image of an image folder has, or None if they differ.

    Read from the files' headers (no image is decoded), so that a folder
    of equal-size images needs no `image_size`.
    """
    size = None
    for split in sorted(os.listdir(root)):
        for directory, _, files in os.walk(os.path.join(root, split)):
            for file in sorted(files):
                if not file.lower().endswith(_IMAGE_SUFFIXES):
                    continue
                try:
                    found = _image_size(os.path.join(directory, file))
                except (OSError, tf.errors.OpError):
                    return None
                if size is None:
                    size = found
                elif found != size:
                    return None
    return size


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
        return _DigitsSource(normalize_size(image_size))
    if name.startswith(FOLDER_PREFIX):
        return _folder_source(name[len(FOLDER_PREFIX) :], image_size)
    return _tfds_source(name, data_dir, normalize_size(image_size), download)


def _split_exists(source, split):
    if source.splits is None:  # Unknown split names: try to read it.
        return True
    return split.split("[")[0] in source.splits
