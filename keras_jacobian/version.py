"""The version of keras_jacobian, read by `setup.py`."""

__version__ = "0.2.0"
