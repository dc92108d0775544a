"""A small Distiller training job for the resume and multi-worker tests.

Trains a tiny conv pair with LogitsDistillation + JacobianMatching
(random projections, so the seed generator matters) on fixed data,
backing up every `--save_freq` steps. A callback sleeps `--sleep` seconds
per step (so a test can kill the job mid-epoch), raises the Jacobian
term's weight every epoch (so a restored weight is checked), and appends
one JSON line per step to `--log`: epoch, step, optimizer iterations,
seed state, term weight, loss.

    --loop keras         Model.fit + keras.callbacks.BackupAndRestore
                         (double_checkpoint=True)
    --loop keras_plain   Model.fit + keras.callbacks.BackupAndRestore
    --loop safe          Model.fit + keras_jacobian.callbacks.BackupAndRestore
    --loop multi_worker  keras_jacobian.distribute.multi_worker.fit (any
                         strategy)
    --loop fit           Model.fit, no backup (fails under multi_worker in
                         Keras 3.15)

`--save_sleep S` holds every backup open for S seconds while its weights
file is being written (after the Distiller's own variables, with an
`in_save` record in the log), so that a test can kill the job during a
save.

At the end the chief writes `results.json` and `student.weights.h5` into
`--output_dir`; every worker writes its student weights to `--weights_out`.
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

parser = argparse.ArgumentParser()
parser.add_argument("--strategy", default="default")
parser.add_argument("--loop", default="keras")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--steps", type=int, default=6)
parser.add_argument("--batch", type=int, default=8)
parser.add_argument("--save_freq", type=int, default=2)
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--save_sleep", type=float, default=0.0)
parser.add_argument("--backup_dir", required=True)
parser.add_argument("--output_dir", required=True)
parser.add_argument("--log", required=True)
parser.add_argument("--weights_out", default=None)
args = parser.parse_args()

from keras_jacobian.distribute import strategies  # noqa: E402

strategy = strategies.get_strategy(args.strategy)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tiny_models  # noqa: E402

from keras_jacobian.distiller import Distiller  # noqa: E402
from keras_jacobian.distribute import multi_worker  # noqa: E402
from keras_jacobian.terms.jacobian import JacobianMatching  # noqa: E402
from keras_jacobian.terms.logits import LogitsDistillation  # noqa: E402


class Progress(keras.callbacks.Callback):
    def __init__(self, distiller):
        super().__init__()
        self.distiller = distiller
        self.epoch = 0

    def _write(self, **record):
        with open(args.log, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _state(self):
        d = self.distiller
        return {
            "iterations": int(d.optimizer.iterations.numpy()),
            "seed": d.seed_generator.state.numpy().tolist(),
            "term_weight": float(d.term_weights[1].numpy()),
        }

    def on_train_begin(self, logs=None):
        self._write(event="begin", **self._state())

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.distiller.term_weights[1].assign(0.5 + epoch)
        self._write(event="epoch_begin", epoch=epoch, **self._state())

    def on_train_batch_end(self, batch, logs=None):
        # Written before sleeping: a kill during the sleep of a step that
        # is not a backup step leaves the last backup complete.
        self._write(
            event="step",
            epoch=self.epoch,
            step=batch,
            loss=float(logs["loss"]),
            **self._state(),
        )
        time.sleep(args.sleep)

    def on_epoch_end(self, epoch, logs=None):
        self._write(event="epoch_end", epoch=epoch, loss=float(logs["loss"]))


with strategy.scope():
    teacher, student = tiny_models.pair()
    distiller = Distiller(
        teacher,
        student,
        [
            LogitsDistillation(temperature=2.0, loss="kd"),
            JacobianMatching(target="random", num_projections=2),
        ],
        seed=7,
        supervised_loss_weight=1.0,
    )
    distiller.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )

x, y = tiny_models.data(args.steps * args.batch)
dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(
    args.batch, drop_remainder=True
)
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = (
    tf.data.experimental.AutoShardPolicy.DATA
)
dataset = dataset.with_options(options)
progress = Progress(distiller)

if args.save_sleep:
    save_own_variables = Distiller.save_own_variables

    def slow_save_own_variables(self, store):
        save_own_variables(self, store)
        progress._write(event="in_save")
        time.sleep(args.save_sleep)

    Distiller.save_own_variables = slow_save_own_variables

if args.loop in ("keras", "keras_plain", "safe"):
    if args.loop == "safe":
        from keras_jacobian.callbacks import BackupAndRestore

        backup = BackupAndRestore(args.backup_dir, save_freq=args.save_freq)
    else:
        backup = keras.callbacks.BackupAndRestore(
            args.backup_dir,
            save_freq=args.save_freq,
            double_checkpoint=args.loop == "keras",
        )
    history = distiller.fit(
        dataset, epochs=args.epochs, callbacks=[backup, progress], verbose=0
    )
elif args.loop == "fit":
    history = distiller.fit(
        dataset, epochs=args.epochs, callbacks=[progress], verbose=0
    )
else:
    history = multi_worker.fit(
        distiller,
        dataset,
        epochs=args.epochs,
        callbacks=[progress],
        verbose=0,
        backup_dir=args.backup_dir,
        save_freq=args.save_freq,
    )

weights = student.get_weights()
if args.weights_out:
    np.savez(args.weights_out, *weights)
if strategies.is_chief(strategy):
    os.makedirs(args.output_dir, exist_ok=True)
    student.save_weights(os.path.join(args.output_dir, "student.weights.h5"))
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(
            {
                "epochs": history.epoch,
                "loss": history.history["loss"],
                "iterations": int(distiller.optimizer.iterations.numpy()),
            },
            f,
        )
