"""Packaging for keras_jacobian."""

import pathlib

from setuptools import find_packages
from setuptools import setup

HERE = pathlib.Path(__file__).parent
VERSION = {}
exec((HERE / "keras_jacobian" / "version.py").read_text(), VERSION)

EXAMPLES = [
    "absl-py>=2.5,<3",
    "tensorflow-datasets>=4.9.10,<5",
    "scikit-learn>=1.9,<2",
    "matplotlib>=3.11,<4",
]
DOCS = [
    "mkdocs>=1.6.1,<2",
    "mkdocs-material>=9.8.2,<10",
    "mkdocstrings[python]>=1.0.8,<2",
]

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
    python_requires=">=3.11",
    # Lower bounds: the versions tested. No upper bounds below the next
    # major release (none of a newer minor release is known to break).
    install_requires=[
        "tensorflow>=2.21,<3",
        "keras>=3.15,<4",
        "keras-tuner>=1.4.8,<2",
        # keras-tuner imports tensorboard, which TensorFlow 2.21 no longer
        # pulls in.
        "tensorboard>=2.21,<3",
        "numpy>=2.4,<3",
    ],
    extras_require={
        # The example scripts and `keras_jacobian.experiments`.
        "examples": EXAMPLES,
        "docs": DOCS,
        "test": ["pytest>=8", "pytest-xdist>=3.6,<4", "ruff>=0.6"]
        + EXAMPLES
        + DOCS,
        # The PyTorch reference of the benchmarks.
        "torch": ["torch==2.13.0"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
