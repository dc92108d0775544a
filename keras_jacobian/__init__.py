"""Knowledge transfer with Jacobian matching for Keras 3.

Srinivas & Fleuret, "Knowledge Transfer with Jacobian Matching", ICML 2018.
"""

from keras_jacobian.distiller import Distiller
from keras_jacobian.regularized import JacobianRegularizedModel
from keras_jacobian.terms.base import DistillationTerm
from keras_jacobian.terms.jacobian import JacobianMatching
from keras_jacobian.terms.logits import LogitsDistillation
from keras_jacobian.terms.noise import NoiseDistillation
from keras_jacobian.version import __version__

__all__ = [
    "DistillationTerm",
    "Distiller",
    "JacobianMatching",
    "JacobianRegularizedModel",
    "LogitsDistillation",
    "NoiseDistillation",
    "__version__",
]
