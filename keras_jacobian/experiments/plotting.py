"""A PNG grid comparing teacher and student: attention and saliency."""

import numpy as np

from keras_jacobian import inspection


def _normalize_image(image):
    image = np.asarray(image, "float32")
    low, high = image.min(), image.max()
    if high > low:
        image = (image - low) / (high - low)
    else:
        image = np.zeros_like(image)
    if image.shape[-1] == 1:
        image = image[..., 0]
    return image


def _scaled(values):
    values = np.asarray(values, "float32")
    peak = values.max()
    return values / peak if peak > 0 else values


def save_transfer_grid(
    path,
    distiller,
    x,
    layer_pairs=None,
    max_images=4,
    target="teacher_top1",
    y=None,
    p=2,
    cmap="viridis",
):
    """Saves a PNG grid of attention and saliency maps of a batch.

    One row per example; columns: the (student's) input image, then for
    each layer pair the teacher's and the student's attention maps
    (`mean_c |A_c|^p`, each at its own resolution, scaled by its
    maximum), then the teacher's and the student's saliency maps
    (`max_c |dz/dx|` for the teacher's top-1 class or the label). Uses
    matplotlib's Agg backend, so it works without a display.

    Args:
        path: output file (PNG).
        distiller: a `Distiller`.
        x: a batch: a tensor, or a dict `{"student": ..., "teacher": ...}`.
        layer_pairs: `(teacher layer, student layer)` pairs; by default
            those of the distiller's attention terms (none: no attention
            columns).
        max_images: number of rows.
        target: `"teacher_top1"` or `"label"` (then pass `y`).
        y: labels for `target="label"`.
        p: power of the attention maps.
        cmap: matplotlib colour map of the maps.

    Returns:
        `path`.

    Example:

    ```python
    keras_jacobian.experiments.plotting.save_transfer_grid(
        "grid.png", distiller, x_val[:4], [("t_conv1", "s_conv1")]
    )
    ```
    """
    from matplotlib.figure import Figure

    if target not in inspection.SALIENCY_TARGETS:
        raise ValueError(
            f"`target` must be one of {inspection.SALIENCY_TARGETS}. "
            f"Received: target={target!r}"
        )
    if layer_pairs is None:
        layer_pairs = inspection.layer_pairs_of(distiller)
    x = inspection.take(x, max_images)
    y = None if y is None else y[:max_images]
    xs, xt = inspection.split_inputs(distiller, x)
    maps = []
    if layer_pairs:
        reader = inspection.AttentionReader(distiller, layer_pairs, p)
        layer_pairs = reader.layer_pairs
        maps = reader(xs, xt)
    t_rows, s_rows, _ = inspection.input_saliency(distiller, xs, xt, target, y)
    columns = [("input", np.asarray(xs), None)]
    for (t_name, s_name), (t_map, s_map) in zip(layer_pairs, maps):
        columns.append((f"teacher att.\n{t_name}", np.asarray(t_map), cmap))
        columns.append((f"student att.\n{s_name}", np.asarray(s_map), cmap))
    columns.append(
        ("teacher saliency", np.asarray(inspection.saliency_map(t_rows)), cmap)
    )
    columns.append(
        ("student saliency", np.asarray(inspection.saliency_map(s_rows)), cmap)
    )
    rows = int(xs.shape[0])
    # A bare Figure draws with its own canvas: pyplot's global state and
    # the user's backend (inline plots in notebooks) are left alone.
    figure = Figure(figsize=(1.6 * len(columns), 1.6 * rows))
    axes = figure.subplots(rows, len(columns), squeeze=False)
    for j, (title, images, colours) in enumerate(columns):
        for i in range(rows):
            axis = axes[i, j]
            if colours is None:
                axis.imshow(_normalize_image(images[i]), cmap="gray")
            else:
                axis.imshow(_scaled(images[i]), cmap=colours, vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            if i == 0:
                axis.set_title(title, fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path
