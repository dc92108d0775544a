"""Packaging for keras_jacobian."""

import pathlib

from setuptools import find_packages
from setuptools import setup

HERE = pathlib.Path(__file__).parent
VERSION = {}
exec((HERE / "keras_jacobian" / "version.py").read_text(), VERSION)

setup(
    name="keras_jacobian",
    version=VERSION["__version__"],
    description=(
        "Knowledge transfer with Jacobian matching (Srinivas & Fleuret, "
        "ICML 2018) for Keras 3 on TensorFlow."
    ),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["keras_jacobian", "keras_jacobian.*"]),
    python_requires=">=3.11,<3.14",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<3.16",
        "tensorflow-datasets>=4.9.10,<4.10",
        "keras-tuner>=1.4.8,<1.5",
        "tensorboard>=2.21,<2.22",
        "absl-py>=2.5,<3",
        "scikit-learn>=1.9,<2",
        "matplotlib>=3.11,<4",
        "numpy>=2.4,<3",
    ],
    extras_require={
        "test": ["pytest>=8", "ruff>=0.6"],
        "torch": ["torch==2.13.0"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
