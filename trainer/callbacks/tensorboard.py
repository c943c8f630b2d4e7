"""`TensorBoardLogger`: every figure passed to `on_log` becomes a TensorBoard scalar.

Tags are the metric names themselves (`train/loss`, `val/acc`, `lr`, ...), plotted
against the optimizer step. The files are written by `trainer.event_file`, so a run never
imports tensorboard itself (only the dashboard needs it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.callbacks.base import Callback

if TYPE_CHECKING:
    from trainer.trainer import Trainer

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger(Callback):
    """Write scalars to TensorBoard event files.

    Args:
        log_dir: where the event files go; the trainer's `run_dir` when None.

    Open the dashboard with `tensorboard --logdir RUN_DIR`.
    """

    def __init__(self, log_dir: str | Path | None = None) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._writer: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        """Open the writer; on resume, drop points a killed run wrote after its checkpoint."""
        from trainer.event_file import EventFileWriter

        self.log_dir = self.log_dir or trainer.run_dir
        purge_step = trainer.global_step + 1 if trainer.global_step else None
        self._writer = EventFileWriter(self.log_dir, purge_step=purge_step)

    def on_log(self, trainer: Trainer, metrics: dict[str, float], step: int) -> None:
        """Write each figure at `step`."""
        if self._writer is None:
            return
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, global_step=step)

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        """Flush so the dashboard shows the epoch and a killed run loses nothing logged."""
        if self._writer is not None:
            self._writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        """Close the event file."""
        self._close()

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        """Close the event file so what was logged stays readable."""
        self._close()

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
