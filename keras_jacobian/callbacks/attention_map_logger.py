"""Writes teacher and student attention maps to TensorBoard."""

import keras
import tensorflow as tf

from keras_jacobian import attention_maps
from keras_jacobian import inspection
from keras_jacobian.distribute.strategies import is_chief


def _check_every(every_n_epochs, max_images):
    if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
        raise ValueError(
            "`every_n_epochs` must be an integer >= 1. Received: "
            f"every_n_epochs={every_n_epochs!r}"
        )
    if not isinstance(max_images, int) or max_images < 1:
        raise ValueError(
            "`max_images` must be an integer >= 1. Received: "
            f"max_images={max_images!r}"
        )


class AttentionMapLogger(keras.callbacks.Callback):
    """Logs attention maps of a fixed batch as TensorBoard images.

    At the end of every `every_n_epochs`-th epoch, runs the distiller's
    teacher and student (inference mode) on the first `max_images`
    examples of `x` and writes, for each `(teacher layer, student layer)`
    pair, the spatial attention maps `mean_c |A_c|^p` of both networks,
    each scaled to [0, 1] by its maximum, under the tags
    `attention/<teacher layer>/teacher` and
    `attention/<student layer>/student` (step = epoch). Each map keeps its
    network's resolution. Only the chief worker writes.

    Args:
        log_dir: directory of the TensorBoard event files.
        x: a batch: a tensor fed to both networks, or a dict
            `{"student": x_s, "teacher": x_t}`.
        layer_pairs: list of `(teacher layer name, student layer name)`.
        every_n_epochs: logging period in epochs.
        max_images: number of examples shown.
        p: power of the attention map.

    Example:

    ```python
    logger = keras_jacobian.callbacks.AttentionMapLogger(
        "logs", x_val[:8], [("t_conv1", "s_conv1")]
    )
    distiller.fit(x, y, epochs=5, callbacks=[logger])
    ```
    """

    def __init__(
        self, log_dir, x, layer_pairs, every_n_epochs=1, max_images=4, p=2
    ):
        super().__init__()
        _check_every(every_n_epochs, max_images)
        self.log_dir = log_dir
        self.x = inspection.take(x, max_images)
        self.layer_pairs = layer_pairs
        self.every_n_epochs = every_n_epochs
        self.max_images = max_images
        self.p = p
        self.reader = None
        self.writer = None

    def set_model(self, model):
        super().set_model(model)
        self.reader = inspection.AttentionReader(
            model, self.layer_pairs, self.p
        )

    def on_train_begin(self, logs=None):
        if self.writer is None and is_chief(self.model.distribute_strategy):
            self.writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        if self.writer is None or (epoch + 1) % self.every_n_epochs:
            return
        xs, xt = inspection.split_inputs(self.model, self.x)
        maps = self.reader(xs, xt)
        with self.writer.as_default(step=epoch):
            for (t_name, s_name), (t_map, s_map) in zip(
                self.reader.layer_pairs, maps
            ):
                tf.summary.image(
                    f"attention/{t_name}/teacher",
                    attention_maps.map_to_image(t_map),
                    max_outputs=self.max_images,
                )
                tf.summary.image(
                    f"attention/{s_name}/student",
                    attention_maps.map_to_image(s_map),
                    max_outputs=self.max_images,
                )
        self.writer.flush()

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
