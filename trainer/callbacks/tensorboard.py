"""`TensorBoardLogger`: the run as TensorBoard dashboards, written from the figures of `on_log`.

Scalars carry the metric names themselves (`train/loss`, `val/acc`, `lr`, ...) against the
optimizer step. A fresh run also records its hyperparameters for the HParams tab, its config as
text, and a Custom Scalars layout that puts training and validation loss on one chart, so
overfitting shows at a glance. Events go through `trainer.event_file`, which encodes them
itself: a run imports neither tensorboard, protobuf nor a YAML library. Only the global-zero
process writes.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.callbacks.base import Callback
from trainer.event_file import EventFileWriter
from trainer.hparams import flatten_hparams, to_yaml

if TYPE_CHECKING:
    import torch

    from trainer.trainer import Trainer

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger(Callback):
    """Write scalars, hyperparameters, the config and optional histograms to TensorBoard.

    Args:
        log_dir: where the event files go; the run's folder (`trainer.log_dir`,
            `run_dir/version_N`) when None.
        log_hparams: record `trainer.hparams` for the HParams tab, where each run's last
            value of every scalar (`val/loss`, `val/acc`, ...) stands beside them.
        histogram_every_n_epochs: every N epochs, write a histogram of each parameter
            (`weights/NAME`) at the epoch's end and of its gradient (`gradients/NAME`) at the
            epoch's last optimizer step; None writes none (they cost a device-to-host copy).

    Open the dashboards with `tensorboard --logdir RUN_DIR`.

    Example:
        >>> Trainer(model, ..., logger=TensorBoardLogger(histogram_every_n_epochs=5))
    """

    def __init__(
        self,
        log_dir: str | Path | None = None,
        log_hparams: bool = True,
        histogram_every_n_epochs: int | None = None,
    ) -> None:
        if histogram_every_n_epochs is not None and (
            isinstance(histogram_every_n_epochs, bool)
            or not isinstance(histogram_every_n_epochs, int)
            or histogram_every_n_epochs < 1
        ):
            raise ValueError(
                f"histogram_every_n_epochs must be a positive integer or None, got "
                f"{histogram_every_n_epochs!r}."
            )
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.log_hparams = log_hparams
        self.histogram_every_n_epochs = histogram_every_n_epochs
        self._writer: EventFileWriter | None = None
        self._epoch_length: int | None = None

    def uses_hook(self, hook: str) -> bool:
        """Without histograms, the per-step and epoch hooks have nothing to do."""
        is_histogram_hook = hook in (
            "on_train_epoch_start", "on_before_optimizer_step", "on_train_epoch_end"
        )
        is_idle = is_histogram_hook and self.histogram_every_n_epochs is None
        if is_idle and self._hook_is_from(TensorBoardLogger, hook):
            return False
        return super().uses_hook(hook)

    def on_fit_start(self, trainer: Trainer) -> None:
        """Open the writer; on resume, drop points a killed run wrote after its checkpoint."""
        if not trainer.is_global_zero:
            return
        self.log_dir = self.log_dir or trainer.log_dir
        purge_step = trainer.global_step + 1 if trainer.global_step else None
        self._writer = EventFileWriter(self.log_dir, purge_step=purge_step)
        if trainer.global_step == 0:  # a resumed run has these from its start
            self._write_run_description(trainer, self._writer)

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        """Note the epoch's length, to find its last optimizer step for gradient histograms."""
        if self._is_histogram_epoch(trainer):
            self._epoch_length = trainer.num_train_batches

    def on_before_optimizer_step(
        self, trainer: Trainer, optimizer: torch.optim.Optimizer
    ) -> None:
        """Write gradient histograms at the last step of a histogram epoch."""
        if self._writer is None or not self._is_histogram_epoch(trainer):
            return
        done = trainer.state.batches_in_epoch
        is_last = done == self._epoch_length
        if is_last or (self._epoch_length is None and done <= trainer.accumulate_grad_batches):
            for name, parameter in trainer.model.named_parameters():
                if parameter.grad is not None:
                    self._writer.add_histogram(
                        f"gradients/{name}", parameter.grad, global_step=trainer.global_step + 1
                    )

    def on_log(self, trainer: Trainer, metrics: dict[str, float], step: int) -> None:
        """Write each figure at `step`."""
        if self._writer is None:
            return
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, global_step=step)

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        """Write weight histograms when due.

        Nothing needs flushing here or before a checkpoint: each event reaches the operating
        system as it is written, so a killed run keeps every point it logged.
        """
        if not self._is_histogram_epoch(trainer):
            return
        for name, parameter in trainer.model.named_parameters():
            self._writer.add_histogram(
                f"weights/{name}", parameter.detach(), global_step=trainer.global_step
            )

    def on_fit_end(self, trainer: Trainer) -> None:
        """Mark the HParams session finished and close the event file."""
        if self._writer is not None and self.log_hparams:
            self._writer.add_hparams_session_end(global_step=trainer.global_step)
        self._close()

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        """Close the event file so what was logged stays readable."""
        self._close()

    def _is_histogram_epoch(self, trainer: Trainer) -> bool:
        every = self.histogram_every_n_epochs
        return self._writer is not None and every is not None and (trainer.epoch + 1) % every == 0

    def _write_run_description(self, trainer: Trainer, writer: EventFileWriter) -> None:
        """Hyperparameters, config text and the chart layout, at step 0 of a fresh run."""
        if self.log_hparams and trainer.hparams:
            writer.add_hparams_session_start(
                flatten_hparams(trainer.hparams), start_time_secs=time.time(), global_step=0
            )
            writer.add_text("config", _as_markdown_yaml(trainer.hparams), global_step=0)
        writer.add_custom_scalars(_layout(trainer), global_step=0)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _layout(trainer: Trainer) -> dict[str, dict[str, list[Any]]]:
    """Custom Scalars charts: each figure of training beside its validation counterpart."""

    def chart(*tags: str) -> list[Any]:
        return ["Multiline", [f"^{re.escape(tag)}$" for tag in tags]]

    compared = {"loss": chart("train/loss_epoch", "val/loss")}
    if trainer.val_loader is not None:
        compared |= {
            name: chart(f"train/{name}_epoch", f"val/{name}") for name in trainer.metric_fns
        }
    return {
        "train vs validation": compared,
        "optimization": {
            "learning rate": ["Multiline", [r"^lr(/group\d+)?$"]],
            "gradient norm": chart("train/grad_norm"),
            "throughput (samples/s)": chart("train/samples_per_sec"),
        },
    }


def _as_markdown_yaml(hparams: dict[str, Any]) -> str:
    """The hyperparameters as YAML, indented so TensorBoard's markdown shows it verbatim."""
    return "\n".join(f"    {line}" for line in to_yaml(hparams).splitlines())
