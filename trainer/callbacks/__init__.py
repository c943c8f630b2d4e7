"""Callbacks: the hook base class and the ready-made callbacks of the public API."""

from trainer.callbacks.base import BestEpoch, Callback, CallbackList, CheckpointFolder
from trainer.callbacks.csv_logger import CSVLogger
from trainer.callbacks.early_stopping import EarlyStopping
from trainer.callbacks.ema import EMA
from trainer.callbacks.lr_monitor import LearningRateMonitor
from trainer.callbacks.model_checkpoint import ModelCheckpoint
from trainer.callbacks.monitor import MissingMetricError, Monitor
from trainer.callbacks.overfitting import OverfittingMonitor, OverfittingWarning
from trainer.callbacks.progress import ProgressBar
from trainer.callbacks.tensorboard import TensorBoardLogger

__all__ = [
    "EMA",
    "BestEpoch",
    "CSVLogger",
    "Callback",
    "CallbackList",
    "CheckpointFolder",
    "EarlyStopping",
    "LearningRateMonitor",
    "MissingMetricError",
    "ModelCheckpoint",
    "Monitor",
    "OverfittingMonitor",
    "OverfittingWarning",
    "ProgressBar",
    "TensorBoardLogger",
]
