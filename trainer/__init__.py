"""trainer: a small, fast PyTorch Trainer whose runs are never lost.

Only the public names live here; optional libraries (tqdm, the config parser, safetensors,
torchvision) are imported where first needed, so `import trainer` stays fast.
"""

from trainer.callbacks import (
    EMA,
    Callback,
    CSVLogger,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    OverfittingMonitor,
    ProgressBar,
    TensorBoardLogger,
)
from trainer.preemption import TrainingInterrupted
from trainer.state import TrainState
from trainer.trainer import Trainer, seed_everything

__version__ = "0.1.0"

__all__ = [
    "EMA",
    "CSVLogger",
    "Callback",
    "EarlyStopping",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "OverfittingMonitor",
    "ProgressBar",
    "TensorBoardLogger",
    "TrainState",
    "Trainer",
    "TrainingInterrupted",
    "__version__",
    "seed_everything",
]
