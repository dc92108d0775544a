"""Tooling for the example experiments, apart from the library's core.

Nothing here is needed to distil a model: these modules serve the scripts
in `examples/` and the benchmarks. They need the `examples` extra
(`pip install "keras_jacobian[examples]"`: scikit-learn, TensorFlow
Datasets, matplotlib), imported only when used.

- `data/`: data sets (digits, TFDS, image folders), few-sample subsets,
  `tf.data` pipelines, noisy test sets.
- `models.py`: the paper's reference networks (VGG-9, VGG-4, a small
  ResNet) with named blocks.
- `plotting.py`: figures of inputs, attention maps and saliency maps.
"""

from keras_jacobian.experiments import data
from keras_jacobian.experiments import models
from keras_jacobian.experiments import plotting

__all__ = ["data", "models", "plotting"]
