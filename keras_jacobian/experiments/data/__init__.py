"""Data for the example experiments: sources, few-sample subsets, pipelines.

- `datasets.py`: `load_dataset` and `ImageDataset` (one data set in memory,
  with its few-sample training subset and held-out splits).
- `sources.py`: where images come from (scikit-learn's digits, the TFDS
  catalog, image folders) and `DatasetNotAvailableError`.
- `sampling.py`: seeded stratified subsets and splits, channel statistics,
  Gaussian-noise copies.
- `pipelines.py`: `make_pipeline` (`tf.data`: normalise, resize, augment,
  shuffle, batch) and `is_random_pipeline`.
"""

from keras_jacobian.experiments.data.datasets import ImageDataset
from keras_jacobian.experiments.data.datasets import load_dataset
from keras_jacobian.experiments.data.pipelines import PipelineInfo
from keras_jacobian.experiments.data.pipelines import is_random_pipeline
from keras_jacobian.experiments.data.pipelines import make_pipeline
from keras_jacobian.experiments.data.pipelines import pipeline_info
from keras_jacobian.experiments.data.sampling import channel_stats
from keras_jacobian.experiments.data.sampling import noisy_copies
from keras_jacobian.experiments.data.sampling import stratified_split
from keras_jacobian.experiments.data.sampling import stratified_subsample
from keras_jacobian.experiments.data.sources import FOLDER_PREFIX
from keras_jacobian.experiments.data.sources import DatasetNotAvailableError

__all__ = [
    "FOLDER_PREFIX",
    "DatasetNotAvailableError",
    "ImageDataset",
    "PipelineInfo",
    "channel_stats",
    "is_random_pipeline",
    "load_dataset",
    "make_pipeline",
    "noisy_copies",
    "pipeline_info",
    "stratified_split",
    "stratified_subsample",
]
