"""Reference teacher and student networks as Functional Keras models.

All models output logits (no softmax), accept any `input_shape` of the form
`(height, width, channels)` and any number of classes, and are built only
from twice-differentiable layers (Conv2D, BatchNormalization, ReLU,
MaxPooling2D, global pooling, Dense, Dropout, Add), so that Jacobian
matching can backpropagate through input gradients. They contain no
resizing layer: resize images in the input pipeline (see
`keras_jacobian.experiments.data.make_pipeline`).

Layers are named so that intermediate feature maps can be taken by name,
e.g. for attention transfer:

- VGG models: `block{i}_out` is the last ReLU output of convolution block
  `i` (before its pooling layer `block{i}_pool`), at resolution
  `input / 2**(i - 1)`. VGG-9 and VGG-4 have the same blocks and pooling, so
  `block{i}_out` has the same spatial size in both.
- ResNet models: `group{i}_out` is the output of residual group `i`, at
  resolution `input / 2**(i - 1)` (the same as VGG's `block{i}_out`).
- All models: `features` is the input of the classifier layer and
  `logits` is the classifier (the model's output).
"""

import numbers

import keras
from keras import layers


def _check_common(input_shape, num_classes, width):
    shape = tuple(input_shape) if input_shape is not None else ()
    if len(shape) != 3 or any(
        s is not None and (not isinstance(s, numbers.Integral) or s < 1)
        for s in shape
    ):
        raise ValueError(
            "Expected `input_shape` to be (height, width, channels) with "
            f"positive sizes. Received: input_shape={input_shape!r}. Pass "
            "e.g. input_shape=(32, 32, 3), or (8, 8, 1) for digits."
        )
    if shape[-1] is None:
        raise ValueError(
            "Expected a known number of channels in `input_shape`. "
            f"Received: input_shape={input_shape!r}. Pass e.g. "
            "(None, None, 3)."
        )
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, numbers.Integral)
        or num_classes < 1
    ):
        raise ValueError(
            "Expected a positive integer `num_classes`. Received: "
            f"num_classes={num_classes!r}."
        )
    if (
        isinstance(width, bool)
        or not isinstance(width, numbers.Integral)
        or width < 1
    ):
        raise ValueError(
            f"Expected a positive integer `width`. Received: width={width!r}."
        )
    return shape


def _check_dropout(dropout):
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(
            "Expected `dropout` in [0, 1). Received: "
            f"dropout={dropout!r}. Pass e.g. 0.3, or 0.0 to disable it."
        )
    return float(dropout)


def _vgg(
    input_shape,
    num_classes,
    *,
    blocks,
    dense_units,
    batch_norm,
    dropout,
    pooling,
    name,
):
    if pooling not in ("avg", "max", "flatten"):
        raise ValueError(
            "Expected `pooling` to be 'avg', 'max' or 'flatten'. Received: "
            f"pooling={pooling!r}."
        )
    if pooling == "flatten" and None in tuple(input_shape)[:2]:
        raise ValueError(
            "Expected a fixed spatial size in `input_shape` with "
            f"pooling='flatten'. Received: input_shape={input_shape!r}. "
            "Pass pooling='avg' for variable-size inputs."
        )
    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    for i, filters_list in enumerate(blocks, start=1):
        for j, filters in enumerate(filters_list, start=1):
            last = j == len(filters_list)
            x = layers.Conv2D(
                filters,
                3,
                padding="same",
                use_bias=not batch_norm,
                kernel_initializer="he_normal",
                name=f"block{i}_conv{j}",
            )(x)
            if batch_norm:
                x = layers.BatchNormalization(name=f"block{i}_bn{j}")(x)
            x = layers.Activation(
                "relu", name=f"block{i}_out" if last else f"block{i}_relu{j}"
            )(x)
        # "same" padding never pools below 1x1 (a 1x1 map stays 1x1).
        x = layers.MaxPooling2D(2, padding="same", name=f"block{i}_pool")(x)
    if pooling == "avg":
        pool_name = "global_pool" if dense_units else "features"
        x = layers.GlobalAveragePooling2D(name=pool_name)(x)
    elif pooling == "max":
        pool_name = "global_pool" if dense_units else "features"
        x = layers.GlobalMaxPooling2D(name=pool_name)(x)
    else:
        x = layers.Flatten(name="flatten" if dense_units else "features")(x)
    for k, units in enumerate(dense_units, start=1):
        last = k == len(dense_units)
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"fc{k}_dropout")(x)
        x = layers.Dense(units, kernel_initializer="he_normal", name=f"fc{k}")(
            x
        )
        x = layers.Activation(
            "relu", name="features" if last else f"fc{k}_relu"
        )(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="logits_dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def vgg9(
    input_shape,
    num_classes,
    *,
    width=64,
    batch_norm=True,
    dropout=0.3,
    pooling="avg",
    name="vgg9",
):
    """VGG-9: the teacher network of the paper's CIFAR-100 experiments.

    Seven 3x3 convolutions in three blocks of `width`, `2 * width` and
    `4 * width` channels (2 + 2 + 3 convolutions), each block followed by a
    2x2 max pooling with "same" padding (so small inputs, down to 1x1, are
    never pooled below 1x1), then global pooling, a hidden dense layer of
    `8 * width` units and the classifier: 9 weight layers. Convolutions are
    followed by BatchNormalization (when `batch_norm`) and ReLU.

    Named layers:
    `block1_out`, `block2_out`, `block3_out`: last ReLU of each block,
    before its pooling (`block{i}_pool`), at resolutions `H`, `H/2`, `H/4`;
    `features`: ReLU of the hidden dense layer; `logits`: the output.

    Args:
        input_shape: `(height, width, channels)`; spatial sizes may be
            `None` with `pooling="avg"` or `"max"`.
        num_classes: Number of classes (size of the logits).
        width: Channels of the first block (64 in the paper's VGG).
        batch_norm: Whether to use BatchNormalization after convolutions.
            In training mode it couples the examples of a batch (also in
            their input gradients).
        dropout: Dropout rate before each dense layer (0 disables it).
        pooling: `"avg"` (global average, default), `"max"` (global max) or
            `"flatten"` before the dense layers.
        name: Model name.

    Returns:
        A Functional `keras.Model` mapping images to logits.

    Example:

    >>> model = vgg9((32, 32, 3), 100)
    >>> model.output_shape
    (None, 100)
    >>> model.get_layer("block1_out").output.shape
    (None, 32, 32, 64)
    """
    _check_common(input_shape, num_classes, width)
    return _vgg(
        input_shape,
        num_classes,
        blocks=[[width] * 2, [2 * width] * 2, [4 * width] * 3],
        dense_units=[8 * width],
        batch_norm=batch_norm,
        dropout=_check_dropout(dropout),
        pooling=pooling,
        name=name,
    )


def vgg4(
    input_shape,
    num_classes,
    *,
    width=64,
    batch_norm=True,
    dropout=0.0,
    pooling="avg",
    name="vgg4",
):
    """VGG-4: the student network of the paper's CIFAR-100 experiments.

    Three 3x3 convolutions, one per block, of `width`, `2 * width` and
    `4 * width` channels, each followed by BatchNormalization (when
    `batch_norm`), ReLU and a 2x2 max pooling with "same" padding, then
    global pooling and the classifier: 4 weight layers. The blocks pool like
    VGG-9's, so `block{i}_out` has the same spatial size in both networks
    and attention maps can be matched pairwise, e.g.
    `[("block1_out", "block1_out"), ("block2_out", "block2_out")]`.

    Named layers:
    `block1_out`, `block2_out`, `block3_out`: ReLU of each block, before its
    pooling (`block{i}_pool`), at resolutions `H`, `H/2`, `H/4`;
    `features`: the global pooling output; `logits`: the output.

    Args:
        input_shape: `(height, width, channels)`; spatial sizes may be
            `None` with `pooling="avg"` or `"max"`.
        num_classes: Number of classes (size of the logits).
        width: Channels of the first block.
        batch_norm: Whether to use BatchNormalization after convolutions.
        dropout: Dropout rate before the classifier (0 disables it).
        pooling: `"avg"` (global average, default), `"max"` (global max) or
            `"flatten"` before the classifier.
        name: Model name.

    Returns:
        A Functional `keras.Model` mapping images to logits.

    Example:

    >>> model = vgg4((8, 8, 1), 10, width=16)
    >>> model.output_shape
    (None, 10)
    """
    _check_common(input_shape, num_classes, width)
    return _vgg(
        input_shape,
        num_classes,
        blocks=[[width], [2 * width], [4 * width]],
        dense_units=[],
        batch_norm=batch_norm,
        dropout=_check_dropout(dropout),
        pooling=pooling,
        name=name,
    )


def _bn_relu(x, batch_norm, name):
    if batch_norm:
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def resnet(
    input_shape,
    num_classes,
    *,
    depth=16,
    width=2,
    batch_norm=True,
    dropout=0.0,
    name="resnet",
):
    """A wide residual network (WRN-depth-width, pre-activation).

    A 3x3 stem convolution of 16 channels, then three groups of
    `n = (depth - 4) / 6` pre-activation residual blocks (BN, ReLU, 3x3
    convolution, twice) with `16 * width`, `32 * width` and `64 * width`
    channels; the first block of groups 2 and 3 has stride 2 (and a 1x1
    projection shortcut); then BN, ReLU, global average pooling and the
    classifier. `depth=16, width=2` (WRN-16-2) has about 0.7M weights;
    `depth=10, width=1` is a small, fast variant.

    Named layers:
    `group1_out`, `group2_out`, `group3_out`: output (residual sum) of each
    group, at resolutions `H`, `H/2`, `H/4`; `features`: the global average
    pooling output; `logits`: the output.

    Args:
        input_shape: `(height, width, channels)`; spatial sizes may be
            `None`.
        num_classes: Number of classes (size of the logits).
        depth: Number of weight layers, of the form `6 * n + 4` (10, 16,
            22, 28, 40, ...).
        width: Widening factor of the groups.
        batch_norm: Whether to use BatchNormalization.
        dropout: Dropout rate between the two convolutions of each block.
        name: Model name.

    Returns:
        A Functional `keras.Model` mapping images to logits.

    Example:

    >>> model = resnet((32, 32, 3), 10, depth=10, width=1)
    >>> model.get_layer("group2_out").output.shape
    (None, 16, 16, 32)
    """
    _check_common(input_shape, num_classes, width)
    dropout = _check_dropout(dropout)
    if (
        isinstance(depth, bool)
        or not isinstance(depth, numbers.Integral)
        or depth < 10
        or (depth - 4) % 6
    ):
        raise ValueError(
            "Expected `depth` of the form 6 * n + 4 with n >= 1 (10, 16, "
            f"22, 28, 40, ...). Received: depth={depth!r}."
        )
    blocks_per_group = (depth - 4) // 6

    def conv(filters, kernel, stride, layer_name):
        return layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding="same",
            use_bias=not batch_norm,
            kernel_initializer="he_normal",
            name=layer_name,
        )

    inputs = keras.Input(shape=input_shape, name="input")
    x = conv(16, 3, 1, "stem_conv")(inputs)
    in_channels = 16
    for g, (filters, stride) in enumerate(
        [(16 * width, 1), (32 * width, 2), (64 * width, 2)], start=1
    ):
        for b in range(1, blocks_per_group + 1):
            prefix = f"group{g}_block{b}"
            block_stride = stride if b == 1 else 1
            h = _bn_relu(x, batch_norm, f"{prefix}_pre")
            if block_stride != 1 or in_channels != filters:
                shortcut = conv(filters, 1, block_stride, f"{prefix}_proj")(h)
            else:
                shortcut = x
            h = conv(filters, 3, block_stride, f"{prefix}_conv1")(h)
            h = _bn_relu(h, batch_norm, f"{prefix}_mid")
            if dropout > 0:
                h = layers.Dropout(dropout, name=f"{prefix}_dropout")(h)
            h = conv(filters, 3, 1, f"{prefix}_conv2")(h)
            out_name = (
                f"group{g}_out" if b == blocks_per_group else f"{prefix}_out"
            )
            x = layers.Add(name=out_name)([h, shortcut])
            in_channels = filters
    x = _bn_relu(x, batch_norm, "final")
    x = layers.GlobalAveragePooling2D(name="features")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


MODELS = {
    "vgg9": vgg9,
    "vgg4": vgg4,
    "resnet": resnet,
}


def get_model(name, input_shape, num_classes, **kwargs):
    """Builds a reference model by name.

    Args:
        name: One of the keys of `MODELS`: `"vgg9"`, `"vgg4"`, `"resnet"`.
        input_shape: `(height, width, channels)`.
        num_classes: Number of classes (size of the logits).
        **kwargs: Keyword arguments of the model function (`width`,
            `batch_norm`, `dropout`, `depth`, `name`, ...).

    Returns:
        A Functional `keras.Model` mapping images to logits.

    Example:

    >>> student = get_model("vgg4", (32, 32, 3), 100, width=32)
    """
    if name not in MODELS:
        raise ValueError(
            f"Expected a model name in {sorted(MODELS)}. Received: "
            f"name={name!r}. Pass one of the known names."
        )
    return MODELS[name](input_shape, num_classes, **kwargs)


def batch_norm_layers(model):
    """The `BatchNormalization` layers of a model, nested models included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(batch_norm_layers(layer))
    return found


def recompute_batch_norm_statistics(model, dataset, steps):
    """Sets BatchNorm moving statistics to their training batches' mean.

    Runs `model` in training mode on the first `steps` batches of
    `dataset` (its `(images, labels)` training batches, so with the
    training batch size and augmentation) and sets each BatchNorm layer's
    moving mean and variance to the average of those batches' statistics:
    the statistics the trained weights were fitted with. The moving
    averages kept during training lag behind weights that still move
    (momentum 0.99: about the last 100 steps); in few-image runs of
    `examples/distill.py` the Jacobian term moves the mean of the student's
    last block by several of its standard deviations within that window,
    and inference with the lagging averages fails (docs/reproducing.md).
    The model's weights are unchanged.

    Args:
        model: a Keras model; without BatchNorm layers nothing is done.
        dataset: a training pipeline yielding `(images, labels)` batches.
        steps: number of batches to average (at least 1).

    Example:

    ```python
    distiller.fit(train_ds.repeat(), epochs=20, steps_per_epoch=20)
    recompute_batch_norm_statistics(
        distiller.student, train_ds, steps=math.ceil(n / batch_size)
    )
    ```
    """
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise ValueError(
            f"Expected an integer `steps` >= 1. Received: steps={steps!r}."
        )
    if steps < 1:
        raise ValueError(
            f"Expected an integer `steps` >= 1. Received: steps={steps!r}. "
            "Pass the number of training batches to average, e.g. one "
            "pass: ceil(num_examples / batch_size)."
        )
    bn_layers = batch_norm_layers(model)
    if not bn_layers:
        return
    momenta = [layer.momentum for layer in bn_layers]
    try:
        for k, (images, _) in enumerate(dataset.take(int(steps))):
            # Momentum k / (k + 1) makes the moving statistics the running
            # mean of the batches' statistics (the first one replaces them).
            for layer in bn_layers:
                layer.momentum = k / (k + 1)
            model(images, training=True)
    finally:
        for layer, momentum in zip(bn_layers, momenta):
            layer.momentum = momentum
