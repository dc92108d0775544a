"""Knowledge transfer with Jacobian matching for Keras 3.

Srinivas & Fleuret, "Knowledge Transfer with Jacobian Matching", ICML 2018.
"""

from keras_jacobian.version import __version__

__all__ = ["__version__"]
