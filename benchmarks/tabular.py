"""scikit-learn's bundled tabular sets and small MLPs for the
whole-Jacobian study (`whole_jacobian_study.py --dataset=wine`).

The splits follow `load_dataset("digits", validation_fraction=...)`: a
stratified third of the data is the test split, then a stratified
`validation_fraction` of the rest is the validation split, both drawn
with `split_seed`; the remainder is the training pool. Features are
standardised with the mean and standard deviation of the training pool.
"""

import dataclasses

import keras
import numpy as np

from keras_jacobian.experiments.data.sampling import stratified_split

LOADERS = {
    "wine": "load_wine",
    "breast_cancer": "load_breast_cancer",
}


@dataclasses.dataclass(repr=False)
class TabularDataset:
    """Features `(N, D)` float32 and labels `(N,)` int32 of one data set.

    `mean` and `std` are the per-feature statistics of the training pool:
    `(x - mean) / std` standardises every split with them.
    """

    name: str
    features: np.ndarray
    labels: np.ndarray
    train_indices: np.ndarray
    val_indices: np.ndarray
    test_indices: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    @property
    def num_classes(self):
        return int(self.labels.max()) + 1

    @property
    def input_shape(self):
        return (int(self.features.shape[1]),)

    def split(self, split):
        """Returns the raw `(features, labels)` of `"train"`, `"val"` or
        `"test"`."""
        indices = {
            "train": self.train_indices,
            "val": self.val_indices,
            "test": self.test_indices,
        }
        if split not in indices:
            raise ValueError(
                "Expected split 'train', 'val' or 'test'. Received: "
                f"split={split!r}."
            )
        idx = indices[split]
        return self.features[idx], self.labels[idx]


def load_tabular(
    name, validation_fraction=0.2, test_fraction=1.0 / 3.0, split_seed=0
):
    """Loads `"wine"` or `"breast_cancer"` from scikit-learn (offline).

    Args:
        name: a key of `LOADERS`.
        validation_fraction: fraction of each class of the non-test data
            held out for validation.
        test_fraction: fraction of each class held out as the test split.
        split_seed: seed of both hold-outs.

    Returns:
        A `TabularDataset`.
    """
    if name not in LOADERS:
        raise ValueError(
            f"Expected a tabular data set among {sorted(LOADERS)}. "
            f"Received: name={name!r}."
        )
    from sklearn import datasets

    bunch = getattr(datasets, LOADERS[name])()
    features = np.asarray(bunch.data, dtype="float32")
    labels = np.asarray(bunch.target, dtype="int32")
    pool, test = stratified_split(labels, test_fraction, split_seed)
    keep, held = stratified_split(labels[pool], validation_fraction, split_seed)
    train = pool[keep]
    mean = features[train].mean(axis=0)
    # A constant feature would divide by zero.
    std = np.maximum(features[train].std(axis=0), 1e-6)
    return TabularDataset(
        name=name,
        features=features,
        labels=labels,
        train_indices=train,
        val_indices=pool[held],
        test_indices=test,
        mean=mean.astype("float32"),
        std=std.astype("float32"),
    )


def mlp(input_shape, num_classes, widths, *, batch_norm=False, name=None):
    """ReLU MLP; with `batch_norm`, BatchNormalization before each ReLU."""
    inputs = keras.Input(input_shape, name="input")
    x = inputs
    for i, width in enumerate(widths, start=1):
        x = keras.layers.Dense(
            width,
            use_bias=not batch_norm,
            kernel_initializer="he_normal",
            name=f"fc{i}",
        )(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"fc{i}_bn")(x)
        x = keras.layers.Activation("relu", name=f"fc{i}_relu")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)
