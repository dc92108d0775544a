"""Callbacks for distillation: TensorBoard images, loss-weight schedules
and a backup that survives a kill."""

from keras_jacobian.callbacks.attention_map_logger import AttentionMapLogger
from keras_jacobian.callbacks.backup import BackupAndRestore
from keras_jacobian.callbacks.jacobian_saliency_logger import (
    JacobianSaliencyLogger,
)
from keras_jacobian.callbacks.loss_weight_scheduler import LossWeightScheduler
from keras_jacobian.callbacks.loss_weight_scheduler import ramp
from keras_jacobian.callbacks.loss_weight_scheduler import step
from keras_jacobian.callbacks.loss_weight_scheduler import warmup

__all__ = [
    "AttentionMapLogger",
    "BackupAndRestore",
    "JacobianSaliencyLogger",
    "LossWeightScheduler",
    "ramp",
    "step",
    "warmup",
]
