"""Training under `tf.distribute`: strategies, multi-worker loop, determinism.

- `strategies.py`: `get_strategy` by name, `split_cpu` (logical CPU
  devices for replicas on one machine), `is_chief` (who writes files).
- `multi_worker.py`: `fit`, the training loop for
  `MultiWorkerMirroredStrategy` (Keras' own `fit` fails there), with
  backups that survive a killed worker.
- `determinism.py`: `enable_determinism` (seeds and deterministic ops).
"""

from keras_jacobian.distribute import multi_worker
from keras_jacobian.distribute.determinism import enable_determinism
from keras_jacobian.distribute.strategies import STRATEGIES
from keras_jacobian.distribute.strategies import get_strategy
from keras_jacobian.distribute.strategies import is_chief
from keras_jacobian.distribute.strategies import split_cpu

__all__ = [
    "STRATEGIES",
    "enable_determinism",
    "get_strategy",
    "is_chief",
    "multi_worker",
    "split_cpu",
]
