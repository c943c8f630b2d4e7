"""The callbacks a run gets: the defaults (progress bar, TensorBoard and CSV loggers, a
checkpoint of the last state), the user's own, and the order they are called in.

`Trainer(progress_bar=..., logger=..., checkpoint=...)` switches a default off with `False`
or replaces it with an instance; an instance in `callbacks` replaces the default of its class.
"""

from __future__ import annotations

from typing import Any

from trainer.callbacks.base import Callback
from trainer.callbacks.csv_logger import CSVLogger
from trainer.callbacks.model_checkpoint import ModelCheckpoint
from trainer.callbacks.progress import ProgressBar
from trainer.callbacks.tensorboard import TensorBoardLogger

__all__ = ["assemble_callbacks"]


def assemble_callbacks(
    callbacks: list[Callback] | None,
    progress_bar: Any,
    logger: Any,
    checkpoint: Any,
    is_global_zero: bool = True,
    writes_files: bool = True,
) -> list[Callback]:
    """Defaults first, then the user's; callbacks that declare `writes_checkpoints` go last
    so they capture every other callback's state for the step. A run that writes no files
    (`writes_files=False`: a `fast_dev_run`) keeps none that declare they write any, the
    user's included: the progress bar stays, the loggers and checkpoints go.

    `logger` stands for two defaults, TensorBoard and CSV; an instance of one replaces that
    one, and an instance in `callbacks` replaces the default of its class. Only rank 0 gets
    the default progress bar and loggers (one process shows and writes what all of them do);
    every rank gets the default checkpoint, as a save gathers every rank's state."""
    callbacks = list(callbacks or [])
    defaults: list[Callback] = []
    for name, wanted, kinds in (
        ("progress_bar", progress_bar, (ProgressBar,)),
        ("logger", logger, (TensorBoardLogger, CSVLogger)),
        ("checkpoint", checkpoint, (ModelCheckpoint,)),
    ):
        if not isinstance(wanted, (bool, *kinds)):
            choices = " or ".join(kind.__name__ for kind in kinds)
            raise TypeError(
                f"{name} must be True, False or a {choices}, got {type(wanted).__name__}."
            )
        for kind in kinds:
            if isinstance(wanted, kind):
                defaults.append(wanted)
            elif wanted is not False and not any(isinstance(cb, kind) for cb in callbacks):
                if is_global_zero or kind.writes_checkpoints:
                    defaults.append(kind())
    ordered = defaults + callbacks
    if not writes_files:
        ordered = [callback for callback in ordered if not _writes_files(callback)]
    # What is not a Callback sorts as one that writes nothing; CallbackList refuses it, named.
    return sorted(ordered, key=lambda callback: getattr(callback, "writes_checkpoints", False))


def _writes_files(callback: Any) -> bool:
    """What a callback declares it writes: checkpoints or other files."""
    return bool(getattr(callback, "writes_checkpoints", False)) or bool(
        getattr(callback, "writes_files", False)
    )
