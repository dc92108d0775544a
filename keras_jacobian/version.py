"""The version of keras_jacobian, read by `setup.py`."""

__version__ = "0.3.0.dev0"
