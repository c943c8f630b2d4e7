"""`CSVLogger`: every logged figure as a row per step in a plain CSV file.

Rows are kept by step, so the step figures and the epoch figures of one step share a row.
The file is rewritten whole (through a rename, so it is never half written) at each epoch
end and before each checkpoint, when rows came in since the last write; rewriting keeps its
columns stable when new names appear. A resumed run reads it back, keeps every row up to its
checkpoint and drops the rows a killed run wrote after it, so each step appears exactly
once. Only the global-zero process writes.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.callbacks.base import Callback

if TYPE_CHECKING:
    from trainer.trainer import Trainer

__all__ = ["CSVLogger"]


class CSVLogger(Callback):
    """Write `step` and every logged figure to a CSV file.

    Args:
        path: the file; None asks the trainer for `metrics.csv` in its run's folder
            (`trainer.log_dir`) when a run starts.
    """

    writes_files = True

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._rows: dict[int, dict[str, float]] = {}
        self._is_writing = False
        self._has_unwritten_rows = False

    def on_fit_start(self, trainer: Trainer) -> None:
        """Pick up the rows of an earlier run up to the step this run continues from."""
        path = self._file(trainer)
        self._rows = {}
        self._is_writing = trainer.is_global_zero
        self._has_unwritten_rows = True  # a resumed run's file may hold rows to drop
        if trainer.global_step and path.exists():
            with path.open(newline="") as file:
                for row in csv.DictReader(file):
                    step = int(row.pop("step"))
                    if step <= trainer.global_step:
                        self._rows[step] = {k: float(v) for k, v in row.items() if v != ""}

    def on_log(self, trainer: Trainer, metrics: dict[str, float], step: int) -> None:
        """Merge these figures into the row of `step`."""
        if self._is_writing:
            self._rows.setdefault(step, {}).update(metrics)
            self._has_unwritten_rows = True

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        """Write the file so far."""
        self._write(trainer)

    def on_save_checkpoint(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None:
        """Write the file, so every row up to the checkpoint is on disk before it is."""
        self._write(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        """Write the final file."""
        self._write(trainer)

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        """Keep what was logged before the failure."""
        self._write(trainer)

    def _file(self, trainer: Trainer) -> Path:
        """`path`, else `metrics.csv` in the trainer's run folder."""
        return self.path or trainer.log_dir / "metrics.csv"

    def _write(self, trainer: Trainer) -> None:
        # An epoch end that saves a checkpoint asks twice; the second write would be the same.
        if not self._rows or not self._has_unwritten_rows:
            return
        path = self._file(trainer)
        columns = list(dict.fromkeys(name for row in self._rows.values() for name in row))
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        with temporary.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=["step", *columns])
            writer.writeheader()
            for step in sorted(self._rows):
                writer.writerow({"step": step, **self._rows[step]})
        os.replace(temporary, path)
        self._has_unwritten_rows = False
