"""Few-sample subsets, stratified splits, normalisation and noisy copies.

Pure NumPy helpers: seeded, stratified per-class sampling (split slicing in
TFDS is not stratified), per-channel statistics, and Gaussian-noise copies
of a test set for robustness experiments.
"""

import math
import numbers

import numpy as np


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


def stratified_split(labels, fraction, seed=0, minimum=0):
    """Splits indices into two disjoint parts with the same class balance.

    In every class, `round(fraction * n_c)` of its `n_c` examples (drawn with
    a NumPy generator seeded with `seed`) go to the held-out part, the rest
    to the kept part.

    Args:
        labels: 1-D array of integer class ids.
        fraction: Fraction of each class to hold out, in `[0, 1)`.
        seed: Integer seed of the draw.
        minimum: Fewest examples held out of each class that has more
            than `minimum` (e.g. 1: every class of two or more examples
            gets a held-out example).

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
        count = int(round(fraction * members.size))
        if members.size > minimum:
            count = max(count, int(minimum))
        held.append(members[:count])
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
