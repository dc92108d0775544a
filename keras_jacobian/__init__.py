"""Knowledge transfer with Jacobian matching for Keras 3.

Srinivas & Fleuret, "Knowledge Transfer with Jacobian Matching", ICML 2018.
"""

from keras_jacobian import attention
from keras_jacobian import callbacks
from keras_jacobian import data
from keras_jacobian import models
from keras_jacobian import multi_worker
from keras_jacobian import plotting
from keras_jacobian.caching import cache_teacher
from keras_jacobian.caching import dataset_random_ops
from keras_jacobian.determinism import enable_determinism
from keras_jacobian.distiller import Distiller
from keras_jacobian.regularized import JacobianRegularizedModel
from keras_jacobian.strategies import get_strategy
from keras_jacobian.strategies import is_chief
from keras_jacobian.strategies import split_cpu
from keras_jacobian.terms.attention import AttentionJacobianMatching
from keras_jacobian.terms.attention import AttentionTransfer
from keras_jacobian.terms.base import DistillationTerm
from keras_jacobian.terms.features import FeatureDistillation
from keras_jacobian.terms.jacobian import JacobianMatching
from keras_jacobian.terms.logits import LogitsDistillation
from keras_jacobian.terms.noise import NoiseDistillation
from keras_jacobian.transfer import build_lwf_student
from keras_jacobian.transfer import extract_task_model
from keras_jacobian.transfer import task_model
from keras_jacobian.version import __version__

__all__ = [
    "AttentionJacobianMatching",
    "AttentionTransfer",
    "DistillationTerm",
    "Distiller",
    "FeatureDistillation",
    "JacobianMatching",
    "JacobianRegularizedModel",
    "LogitsDistillation",
    "NoiseDistillation",
    "attention",
    "enable_determinism",
    "get_strategy",
    "is_chief",
    "multi_worker",
    "split_cpu",
    "build_lwf_student",
    "cache_teacher",
    "dataset_random_ops",
    "callbacks",
    "data",
    "extract_task_model",
    "models",
    "plotting",
    "task_model",
    "__version__",
]
