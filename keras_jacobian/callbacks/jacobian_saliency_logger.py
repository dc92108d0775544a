"""Writes teacher and student input-gradient maps to TensorBoard."""

import keras
import numpy as np
import tensorflow as tf

from keras_jacobian import attention_maps
from keras_jacobian import inspection
from keras_jacobian.callbacks.attention_map_logger import _check_every
from keras_jacobian.distribute.strategies import is_chief


class JacobianSaliencyLogger(keras.callbacks.Callback):
    """Logs input-gradient (saliency) maps of a fixed batch to TensorBoard.

    At the end of every `every_n_epochs`-th epoch, takes the input
    gradient of one class of the teacher's and the student's distillation
    outputs, the same class for both (the teacher's top-1 class, or the
    label), on the first `max_images` examples of `x`; writes
    `max_c |dz/dx|` scaled to [0, 1] as images under
    `saliency/teacher` and `saliency/student`, and the mean over the batch
    of the cosine similarity of the two gradients (the teacher's resized
    to the student's input size) as the scalar `saliency/jacobian_cosine`
    (step = epoch). The cosine is also added to the epoch's `logs` as
    `jacobian_cosine` on the epochs it is computed. Only the chief worker
    writes.

    Args:
        log_dir: directory of the TensorBoard event files.
        x: a batch: a tensor fed to both networks, or a dict
            `{"student": x_s, "teacher": x_t}`.
        target: `"teacher_top1"` or `"label"` (then pass `y`).
        every_n_epochs: logging period in epochs.
        max_images: number of examples shown (and used for the cosine).
        y: labels of `x`, for `target="label"`.

    Example:

    ```python
    logger = keras_jacobian.callbacks.JacobianSaliencyLogger(
        "logs", x_val[:8]
    )
    distiller.fit(x, y, epochs=5, callbacks=[logger])
    ```
    """

    def __init__(
        self,
        log_dir,
        x,
        target="teacher_top1",
        every_n_epochs=1,
        max_images=4,
        y=None,
    ):
        super().__init__()
        _check_every(every_n_epochs, max_images)
        if target not in inspection.SALIENCY_TARGETS:
            raise ValueError(
                f"`target` must be one of {inspection.SALIENCY_TARGETS}. "
                f"Received: target={target!r}"
            )
        if target == "label" and y is None:
            raise ValueError(
                "target='label' needs the labels of `x`: pass `y`."
            )
        self.log_dir = log_dir
        self.x = inspection.take(x, max_images)
        self.y = None if y is None else y[:max_images]
        self.target = target
        self.every_n_epochs = every_n_epochs
        self.max_images = max_images
        self.writer = None

    def on_train_begin(self, logs=None):
        if self.writer is None and is_chief(self.model.distribute_strategy):
            self.writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        xs, xt = inspection.split_inputs(self.model, self.x)
        t_rows, s_rows, cosine = inspection.input_saliency(
            self.model, xs, xt, self.target, self.y
        )
        mean_cosine = float(np.mean(keras.ops.convert_to_numpy(cosine)))
        if logs is not None:
            logs["jacobian_cosine"] = mean_cosine
        if self.writer is None:
            return
        with self.writer.as_default(step=epoch):
            for role, rows in (("teacher", t_rows), ("student", s_rows)):
                tf.summary.image(
                    f"saliency/{role}",
                    attention_maps.map_to_image(inspection.saliency_map(rows)),
                    max_outputs=self.max_images,
                )
            tf.summary.scalar("saliency/jacobian_cosine", mean_cosine)
        self.writer.flush()

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
