"""Tests of keras_jacobian.experiments.data."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_jacobian.experiments import data

# ---------------------------------------------------------------------------
# stratified_subsample / stratified_split
# ---------------------------------------------------------------------------


def _labels():
    # Unequal class sizes: 12 of class 0, 7 of class 1, 30 of class 2.
    labels = np.array([0] * 12 + [1] * 7 + [2] * 30)
    return np.random.default_rng(5).permutation(labels)


def test_stratified_subsample_exact_counts():
    labels = _labels()
    for k in (1, 3, 7):
        idx = data.stratified_subsample(labels, k, seed=0)
        assert np.bincount(labels[idx]).tolist() == [k, k, k]
        assert len(np.unique(idx)) == len(idx)
        assert np.all(np.diff(idx) > 0)


def test_stratified_subsample_seeded():
    labels = _labels()
    a = data.stratified_subsample(labels, 5, seed=3)
    b = data.stratified_subsample(labels, 5, seed=3)
    c = data.stratified_subsample(labels, 5, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_stratified_subsample_too_many_names_class():
    labels = _labels()
    with pytest.raises(ValueError, match=r"only 7 examples of class 1"):
        data.stratified_subsample(labels, 8, seed=0)


def test_stratified_subsample_missing_class_and_bad_k():
    labels = np.array([0, 0, 2, 2])
    with pytest.raises(ValueError, match=r"only 0 examples of class 1"):
        data.stratified_subsample(labels, 1, seed=0, num_classes=3)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            data.stratified_subsample(labels, bad, seed=0)
    with pytest.raises(ValueError, match="1-D"):
        data.stratified_subsample(np.eye(3, dtype=int), 1)


def test_stratified_split_disjoint_and_balanced():
    labels = _labels()
    kept, held = data.stratified_split(labels, 0.2, seed=1)
    assert len(np.intersect1d(kept, held)) == 0
    np.testing.assert_array_equal(
        np.sort(np.concatenate([kept, held])), np.arange(len(labels))
    )
    assert np.bincount(labels[held]).tolist() == [2, 1, 6]
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        data.stratified_split(labels, 1.0)


# ---------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------


def test_digits_full():
    ds = data.load_dataset("digits")
    assert ds.input_shape == (8, 8, 1)
    assert ds.num_classes == 10
    assert ds.class_names == tuple(str(i) for i in range(10))
    assert ds.train_images.dtype == np.float32
    assert ds.train_labels.dtype == np.int32
    n_train, n_test = len(ds.train_labels), len(ds.test_labels)
    assert n_train + n_test == 1797
    assert abs(n_test - 1797 / 3) < 10
    for x in (ds.train_images, ds.test_images):
        assert x.min() == 0.0 and x.max() == 1.0
    assert len(np.intersect1d(ds.train_indices, ds.test_indices)) == 0
    # Stratified: each class has about a third of its examples in test.
    test_counts = np.bincount(ds.test_labels)
    all_counts = test_counts + np.bincount(ds.train_labels)
    np.testing.assert_allclose(test_counts / all_counts, 1 / 3, atol=0.01)
    np.testing.assert_allclose(ds.mean, ds.train_images.mean(), rtol=1e-5)
    assert "digits" in repr(ds)


def test_digits_samples_per_class_seeded_and_disjoint():
    a = data.load_dataset(
        "digits", samples_per_class=10, seed=1, validation_fraction=0.1
    )
    b = data.load_dataset(
        "digits", samples_per_class=10, seed=1, validation_fraction=0.1
    )
    c = data.load_dataset(
        "digits", samples_per_class=10, seed=2, validation_fraction=0.1
    )
    assert np.bincount(a.train_labels).tolist() == [10] * 10
    assert a.train_images.shape == (100, 8, 8, 1)
    np.testing.assert_array_equal(a.train_indices, b.train_indices)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    assert not np.array_equal(a.train_indices, c.train_indices)
    # Test and validation sets do not depend on the subsampling seed.
    np.testing.assert_array_equal(a.test_indices, c.test_indices)
    np.testing.assert_array_equal(a.val_indices, c.val_indices)
    for d in (a, c):
        assert len(np.intersect1d(d.train_indices, d.test_indices)) == 0
        assert len(np.intersect1d(d.train_indices, d.val_indices)) == 0
        assert len(np.intersect1d(d.val_indices, d.test_indices)) == 0
    # The selected images are the source images at those indices.
    from sklearn.datasets import load_digits

    source = load_digits()
    np.testing.assert_allclose(
        a.train_images[..., 0], source.images[a.train_indices] / 16.0
    )
    np.testing.assert_array_equal(
        a.train_labels, source.target[a.train_indices]
    )
    np.testing.assert_array_equal(a.test_labels, source.target[a.test_indices])


def test_digits_too_many_samples_per_class():
    with pytest.raises(
        ValueError, match=r"Received only \d+ examples of class"
    ):
        data.load_dataset("digits", samples_per_class=500)


def test_digits_resized_and_arguments_checked():
    ds = data.load_dataset("digits", image_size=16, samples_per_class=2)
    assert ds.input_shape == (16, 16, 1)
    assert ds.train_images.min() >= 0.0 and ds.train_images.max() <= 1.0
    with pytest.raises(ValueError, match="validation_fraction"):
        data.load_dataset("digits", validation_fraction=1.5)
    with pytest.raises(ValueError, match="image_size"):
        data.load_dataset("digits", image_size=(3, 4, 5))
    with pytest.raises(ValueError, match="positive integer"):
        data.load_dataset("digits", samples_per_class=0)


# ---------------------------------------------------------------------------
# TFDS catalog
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))]
)
def test_tfds_catalog_with_mock_data(name, shape, tmp_path):
    with tfds.testing.mock_data(num_examples=80):
        ds = data.load_dataset(
            name, data_dir=str(tmp_path), samples_per_class=3, seed=0
        )
        again = data.load_dataset(
            name, data_dir=str(tmp_path), samples_per_class=3, seed=0
        )
        other = data.load_dataset(
            name, data_dir=str(tmp_path), samples_per_class=3, seed=1
        )
    assert ds.input_shape == shape
    assert ds.num_classes == 10
    assert len(ds.class_names) == 10
    assert np.bincount(ds.train_labels, minlength=10).tolist() == [3] * 10
    assert ds.train_images.dtype == np.float32
    assert 0.0 <= ds.train_images.min() and ds.train_images.max() <= 1.0
    assert ds.train_images.max() > 0.5  # uint8 scaled by 1/255, not clipped
    assert len(ds.test_labels) == 80  # mock_data: the same 80 per split
    np.testing.assert_array_equal(ds.train_indices, again.train_indices)
    np.testing.assert_array_equal(ds.train_images, again.train_images)
    assert not np.array_equal(ds.train_indices, other.train_indices)


def test_tfds_images_follow_indices(tmp_path):
    with tfds.testing.mock_data(num_examples=40):
        ds = data.load_dataset(
            "mnist", data_dir=str(tmp_path), samples_per_class=2, seed=0
        )
        full = data.load_dataset("mnist", data_dir=str(tmp_path))
    # mock_data yields the same examples for every split: the test set is
    # the full source split, and the subset is read at its indices.
    np.testing.assert_array_equal(
        ds.train_images, full.test_images[ds.train_indices]
    )
    np.testing.assert_array_equal(
        ds.train_labels, full.test_labels[ds.train_indices]
    )


def test_tfds_absent_dataset_clear_error(tmp_path, monkeypatch):
    def _no_download(self, *args, **kwargs):
        raise AssertionError("download_and_prepare must not be called")

    monkeypatch.setattr(
        tfds.core.DatasetBuilder, "download_and_prepare", _no_download
    )
    with pytest.raises(data.DatasetNotAvailableError) as info:
        data.load_dataset("mnist", data_dir=str(tmp_path))
    message = str(info.value)
    assert "'mnist'" in message
    assert str(tmp_path) in message
    assert "tfds build mnist" in message
    assert "data_dir" in message
    assert isinstance(info.value, RuntimeError)


def test_unknown_name_error():
    with pytest.raises(ValueError, match="not in the catalog") as info:
        data.load_dataset("no_such_dataset_anywhere")
    assert "Did you mean" not in str(info.value)


@pytest.mark.parametrize(
    "name, suggestion", [("digitz", "digits"), ("cifar1000", "cifar100")]
)
def test_misspelt_name_suggests_the_closest(name, suggestion):
    with pytest.raises(ValueError, match="not in the catalog") as info:
        data.load_dataset(name)
    assert f"Did you mean {suggestion!r}?" in str(info.value)


# ---------------------------------------------------------------------------
# image folders
# ---------------------------------------------------------------------------

_COLORS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "owl": (0, 0, 255)}


def _write_folder(root, splits=(("train", 4), ("test", 2))):
    rng = np.random.default_rng(0)
    for split, count in splits:
        for name, color in _COLORS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = (int(s) for s in rng.integers(9, 30, size=2))
                image = np.zeros((h, w, 3), np.uint8) + np.uint8(color)
                png = tf.io.encode_png(image)
                tf.io.write_file(str(folder / f"{name}_{i}.png"), png)
    return root


def test_image_folder(tmp_path):
    root = _write_folder(tmp_path / "scenes")
    ds = data.load_dataset(
        f"folder:{root}", image_size=(12, 16), samples_per_class=3, seed=0
    )
    assert ds.class_names == ("cat", "dog", "owl")
    assert ds.num_classes == 3
    assert ds.input_shape == (12, 16, 3)
    assert np.bincount(ds.train_labels).tolist() == [3, 3, 3]
    assert np.bincount(ds.test_labels).tolist() == [2, 2, 2]
    # Uniform images keep their colour when resized: labels match images.
    for images, labels in [
        (ds.train_images, ds.train_labels),
        (ds.test_images, ds.test_labels),
    ]:
        colors = np.array([_COLORS[n] for n in ds.class_names]) / 255.0
        np.testing.assert_allclose(
            images,
            np.broadcast_to(colors[labels][:, None, None, :], images.shape),
            atol=1e-5,
        )
    # A pathlib.Path selects the same folder source.
    same = data.load_dataset(
        pathlib.Path(root), image_size=(12, 16), samples_per_class=3, seed=0
    )
    np.testing.assert_array_equal(same.train_indices, ds.train_indices)


def test_image_folder_without_test_split(tmp_path):
    root = _write_folder(tmp_path / "scenes", splits=(("train", 6),))
    ds = data.load_dataset(root, image_size=8, test_fraction=1 / 3)
    assert np.bincount(ds.test_labels).tolist() == [2, 2, 2]
    assert np.bincount(ds.train_labels).tolist() == [4, 4, 4]
    assert len(np.intersect1d(ds.train_indices, ds.test_indices)) == 0


def test_image_folder_of_one_size_needs_no_image_size(tmp_path):
    # A folder whose images all have one size used to require image_size.
    rng = np.random.default_rng(0)
    root = tmp_path / "scenes"
    pixels = {}
    for split in ("train", "test"):
        for name in _COLORS:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                image = rng.integers(0, 256, (10, 14, 3)).astype(np.uint8)
                path = str(folder / f"{name}_{i}.png")
                tf.io.write_file(path, tf.io.encode_png(image))
                pixels[image.tobytes()] = image
    # A JPEG of the same size: its size comes from the JPEG header.
    jpeg = tf.io.encode_jpeg(np.zeros((10, 14, 3), np.uint8) + 128)
    tf.io.write_file(str(root / "train" / "cat" / "cat_2.jpg"), jpeg)
    ds = data.load_dataset(root)
    assert ds.input_shape == (10, 14, 3)
    assert len(ds.train_labels) == 7 and len(ds.test_labels) == 6
    # Not resized: every PNG image comes back exactly (1/255 steps).
    for image in ds.test_images:
        key = np.round(image * 255).astype(np.uint8)
        np.testing.assert_array_equal(key, pixels[key.tobytes()])
    # One image of another size: image_size is required again.
    odd = np.zeros((11, 14, 3), np.uint8)
    tf.io.write_file(
        str(root / "test" / "owl" / "owl_9.png"), tf.io.encode_png(odd)
    )
    with pytest.raises(ValueError, match="--image_size=224"):
        data.load_dataset(root)


def test_image_folder_errors(tmp_path):
    root = _write_folder(tmp_path / "scenes")
    with pytest.raises(ValueError, match="image_size"):
        data.load_dataset(root)
    with pytest.raises(data.DatasetNotAvailableError, match="does not exist"):
        data.load_dataset(f"folder:{tmp_path / 'missing'}", image_size=8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="laid out as"):
        data.load_dataset(empty, image_size=8)


# ---------------------------------------------------------------------------
# noisy copies
# ---------------------------------------------------------------------------


def test_noisy_copies_statistics():
    images = np.random.default_rng(0).random((50, 8, 8, 3)).astype("float32")
    copies = data.noisy_copies(images, [0.0, 0.05, 0.2], seed=3)
    assert sorted(copies) == [0.0, 0.05, 0.2]
    np.testing.assert_array_equal(copies[0.0], images)
    for sigma in (0.05, 0.2):
        diff = copies[sigma] - images
        assert copies[sigma].dtype == np.float32
        assert copies[sigma].shape == images.shape
        assert abs(diff.std() - sigma) < 0.03 * sigma
        assert abs(diff.mean()) < 0.03 * sigma
    # Reproducible, and a different seed gives a different draw.
    again = data.noisy_copies(images, 0.05, seed=3)
    np.testing.assert_array_equal(again[0.05], copies[0.05])
    other = data.noisy_copies(images, 0.05, seed=4)
    assert not np.array_equal(other[0.05], copies[0.05])


def test_noisy_copies_clip_and_errors():
    images = np.full((10, 4, 4, 1), 0.5, np.float32)
    clipped = data.noisy_copies(images, [1.0], seed=0, clip=(0.0, 1.0))[1.0]
    assert clipped.min() == 0.0 and clipped.max() == 1.0
    with pytest.raises(ValueError, match="non-negative"):
        data.noisy_copies(images, [-0.1])
    with pytest.raises(ValueError, match="low < high"):
        data.noisy_copies(images, [0.1], clip=(1.0, 0.0))


# ---------------------------------------------------------------------------
# pipelines
# ---------------------------------------------------------------------------


def _collect(ds):
    xs, ys = [], []
    for x, y in ds.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def test_pipeline_normalisation_matches_numpy():
    ds = data.load_dataset("digits", samples_per_class=20, seed=0)
    x_np = ds.train_images.reshape(-1, 1).astype(np.float64)
    mean, std = x_np.mean(axis=0), x_np.std(axis=0)
    np.testing.assert_allclose(ds.mean, mean, rtol=1e-5)
    np.testing.assert_allclose(ds.std, std, rtol=1e-5)

    pipe = ds.pipeline("train", 32, training=False)
    x, y = _collect(pipe)
    assert x.shape == (200, 8, 8, 1)
    np.testing.assert_array_equal(y, ds.train_labels)
    np.testing.assert_allclose(x.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(), 1.0, atol=1e-4)
    expected = (ds.train_images - mean) / std
    np.testing.assert_allclose(x, expected, atol=1e-5)
    first = next(iter(pipe))
    assert tuple(first[0].shape) == (32, 8, 8, 1)


def test_pipeline_per_channel_and_resize():
    rng = np.random.default_rng(0)
    images = rng.random((30, 6, 6, 3)).astype("float32") * [1.0, 0.5, 0.2]
    mean, std = data.channel_stats(images)
    pipe = data.make_pipeline(
        images, None, 8, training=False, mean=mean, std=std
    )
    x = np.concatenate(list(pipe.as_numpy_iterator()))
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(0, 1, 2)), 1.0, atol=1e-4)
    resized = data.make_pipeline(images, None, 8, training=False, image_size=12)
    assert tuple(next(iter(resized)).shape) == (8, 12, 12, 3)


def test_pipeline_shuffle_keeps_pairs_and_is_seeded():
    images = np.arange(40, dtype=np.float32).reshape(10, 2, 2, 1)
    labels = np.arange(10)
    teacher = np.arange(10, dtype=np.float32) * 2
    pipe = data.make_pipeline(
        images, (labels, teacher), 4, training=True, seed=7
    )
    epoch1 = [(x, y) for x, y in pipe.as_numpy_iterator()]
    epoch2 = [(x, y) for x, y in pipe.as_numpy_iterator()]
    x1 = np.concatenate([x for x, _ in epoch1])
    y1 = np.concatenate([y[0] for _, y in epoch1])
    t1 = np.concatenate([y[1] for _, y in epoch1])
    y2 = np.concatenate([y[0] for _, y in epoch2])
    np.testing.assert_array_equal(x1[:, 0, 0, 0], y1 * 4)
    np.testing.assert_array_equal(t1, y1 * 2)
    assert sorted(y1.tolist()) == list(range(10))
    assert not np.array_equal(y1, np.arange(10))
    assert not np.array_equal(y1, y2)  # reshuffled each epoch
    same = data.make_pipeline(
        images, (labels, teacher), 4, training=True, seed=7
    )
    y_same = np.concatenate([y[0] for _, y in same.as_numpy_iterator()])
    np.testing.assert_array_equal(y_same, y1)
    assert not data.is_random_pipeline(pipe)
    assert data.pipeline_info(pipe).shuffle


def test_pipeline_augmentation_is_random_and_seeded():
    ds = data.load_dataset("digits", samples_per_class=4, seed=0)
    pipe = ds.pipeline("train", 40, augment=True, shuffle=False, seed=1)
    assert data.is_random_pipeline(pipe)
    assert data.pipeline_info(pipe).augment
    x1, y1 = _collect(pipe)
    x2, _ = _collect(pipe)
    assert x1.shape == (40, 8, 8, 1)
    np.testing.assert_array_equal(y1, ds.train_labels)
    assert not np.allclose(x1, x2)  # new augmentations each epoch
    again = ds.pipeline("train", 40, augment=True, shuffle=False, seed=1)
    np.testing.assert_array_equal(_collect(again)[0], x1)
    plain = ds.pipeline("test", 64)
    assert not data.is_random_pipeline(plain)
    with pytest.raises(ValueError, match="training=True"):
        ds.pipeline("test", 64, augment=True)


def test_is_random_pipeline_inspects_other_datasets():
    base = tf.data.Dataset.from_tensor_slices(np.zeros((4, 3), "float32"))
    assert not data.is_random_pipeline(base.map(lambda v: v * 2.0))
    noisy = base.map(lambda v: v + tf.random.normal(tf.shape(v)))
    assert data.is_random_pipeline(noisy.batch(2))
    shuffled = base.shuffle(4, seed=0).batch(2)
    assert not data.is_random_pipeline(shuffled)
    with pytest.raises(ValueError, match="tf.data.Dataset"):
        data.is_random_pipeline([1, 2, 3])


def test_dataset_pipeline_with_noisy_test_images():
    ds = data.load_dataset("digits", samples_per_class=2)
    noisy = data.noisy_copies(ds.test_images, [0.1], seed=0)[0.1]
    x, y = _collect(ds.pipeline("test", 128, images=noisy, normalize=False))
    np.testing.assert_allclose(x, noisy)
    np.testing.assert_array_equal(y, ds.test_labels)
    with pytest.raises(ValueError, match="validation"):
        ds.pipeline("val")


def test_image_folder_corrupt_file_is_named(tmp_path):
    root = _write_folder(tmp_path / "scenes")
    broken = root / "train" / "dog" / "dog_broken.png"
    broken.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="dog_broken.png") as info:
        data.load_dataset(root, image_size=8, samples_per_class=4, seed=0)
    message = str(info.value)
    assert "train" in message and "JPEG" in message
