"""Knowledge transfer with Jacobian matching for Keras 3.

Srinivas & Fleuret, "Knowledge Transfer with Jacobian Matching", ICML 2018.

Where things are (every module holds one concern):

The models you train
- `distiller.py`: `Distiller`, a `keras.Model` whose training step runs the
  frozen teacher and the student under nested tapes and adds the terms.
- `construction.py`: what the `Distiller` derives from its built networks
  (endpoint models, checks), and building unbuilt ones on the first batch.
- `loss_weights.py`: Keras' convex mix of the losses, or an independent
  supervised weight.
- `regularized.py`: `JacobianRegularizedModel`, the teacher-free
  Jacobian-norm penalty (robustness to input noise).
- `steps.py`: the `train_step`/`test_step` both share: loss scaling for
  `tf.distribute` replicas (done once), random draws per replica.
- `label_range.py`: out-of-range class labels (of `target="label"`, of a
  sparse compiled loss) as a `ValueError`, under XLA after the step.
- `saving.py`: saving the random-draw state with the weights, and atomic
  `save`/`save_weights` (a kill never leaves a half-written file).

The loss terms (`terms/`), one file per family
- `terms/base.py`: `DistillationTerm`, the two-phase protocol (teacher
  targets, then a per-example loss) and the `StepContext` terms read.
- `terms/logits.py`: `LogitsDistillation` (Keras' losses with their Keras
  meaning; `"kd"`, Hinton's KD with softmax and `T^2`; squared logits).
- `terms/jacobian.py`: `JacobianMatching` (which rows, normalised or raw,
  squared or alignment, and the choice of estimator).
- `terms/jacobian_options.py`: its arguments checked and their defaults
  resolved (`RECOMMENDED`).
- `terms/cotangents.py`: the output-space vectors `v` whose rows
  `v^T J` are matched (classes picked, random, per-pixel outputs).
- `terms/projections.py`: its whole-Jacobian estimators along random
  input directions (forward mode, finite differences).
- `terms/noise.py`: `NoiseDistillation` (matching under input noise).
- `terms/features.py`: `FeatureDistillation` (intermediate activations).
- `terms/attention.py`: `AttentionTransfer`, `AttentionJacobianMatching`.
- `terms/conversion.py`: accepting `keras.distillation` terms, custom
  `DistillationLoss` subclasses included (`KerasDistillationLoss`).
- `terms/keras_losses.py`: Keras losses inside terms, with Keras' meaning.

The operations the terms use
- `jacobians/`: where every input Jacobian is computed, all names
  importable from `keras_jacobian.jacobians`: `rows.py` (rows by reverse
  mode, normalisation), `resolution.py` (the teacher's rows on the
  student's grid), `directions.py` (random input directions),
  `directional.py` (`J v` by forward mode), `differences.py` (`J v` by
  finite differences, their steps), `precision.py` (a network's dtype).
- `attention_maps.py`: attention maps of feature maps, resizing them.
- `endpoints.py`: reading intermediate layer outputs by name.
- `validation.py`: argument and model checks shared by the constructors.
- `probes.py`: the networks run once at construction (input gradients,
  twice differentiable; an input size for fully convolutional models).
- `kinks.py`: the kinks of a network (ReLU, max pooling, ...) read from
  its graph; the difference estimators refuse a student that has them.
- `_quiet.py`: imports TensorFlow without its start-up lines.
- `_compat.py`: every private Keras or TensorFlow API the library uses
  (pinned by tests/test_compat.py), e.g. forward-mode rules kept at exact
  shapes (relaxed ones break XLA compilation).

Around training
- `callbacks/`: `LossWeightScheduler`, `AttentionMapLogger`,
  `JacobianSaliencyLogger`, and a kill-safe `BackupAndRestore`.
- `inspection.py`: attention and saliency maps read from a `Distiller`.
- `caching.py`: `cache_teacher` (the teacher's targets computed once).
- `transfer.py`: Learning-without-Forgetting students and task models.
- `tuning.py`: a keras-tuner `HyperModel` over the loss weights.
- `distribute/`: strategies by name, `split_cpu`, `is_chief`, the
  multi-worker training loop with backups, determinism.

Apart from the core
- `experiments/`: data sets, reference models and plots used by the example
  scripts (needs the `examples` extra).
"""

from keras_jacobian import _quiet  # noqa: F401
from keras_jacobian import attention_maps
from keras_jacobian import callbacks
from keras_jacobian import distribute
from keras_jacobian.caching import cache_teacher
from keras_jacobian.caching import dataset_random_ops
from keras_jacobian.distiller import Distiller
from keras_jacobian.distribute.determinism import enable_determinism
from keras_jacobian.distribute.strategies import get_strategy
from keras_jacobian.distribute.strategies import is_chief
from keras_jacobian.distribute.strategies import split_cpu
from keras_jacobian.regularized import JacobianRegularizedModel
from keras_jacobian.terms.attention import AttentionJacobianMatching
from keras_jacobian.terms.attention import AttentionTransfer
from keras_jacobian.terms.base import DistillationTerm
from keras_jacobian.terms.conversion import DistillationLoss
from keras_jacobian.terms.features import FeatureDistillation
from keras_jacobian.terms.jacobian import JacobianMatching
from keras_jacobian.terms.logits import LogitsDistillation
from keras_jacobian.terms.noise import NoiseDistillation
from keras_jacobian.transfer import build_lwf_student
from keras_jacobian.transfer import extract_task_model
from keras_jacobian.transfer import task_model
from keras_jacobian.version import __version__


def __getattr__(name):
    import importlib

    if name == "experiments":
        return importlib.import_module("keras_jacobian.experiments")
    raise AttributeError(f"module 'keras_jacobian' has no attribute {name!r}")


__all__ = [
    "AttentionJacobianMatching",
    "AttentionTransfer",
    "DistillationLoss",
    "DistillationTerm",
    "Distiller",
    "FeatureDistillation",
    "JacobianMatching",
    "JacobianRegularizedModel",
    "LogitsDistillation",
    "NoiseDistillation",
    "__version__",
    "attention_maps",
    "build_lwf_student",
    "cache_teacher",
    "callbacks",
    "dataset_random_ops",
    "distribute",
    "enable_determinism",
    "extract_task_model",
    "get_strategy",
    "is_chief",
    "split_cpu",
    "task_model",
]
