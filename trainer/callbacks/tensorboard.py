"""`TensorBoardLogger`: the run as TensorBoard dashboards, written from the figures of `on_log`.

Scalars carry the metric names themselves (`train/loss`, `val/acc`, `lr`, ...) against the
optimizer step; `epoch` stays in the CSV and the history, since TensorBoard's step axis already
orders the points and an `epoch` chart would open the dashboards. A fresh run also records the
hyperparameters that tell runs apart for the HParams tab (its row named after the run's folder,
the monitored metric and the validation figures first), its config as text, and a Custom Scalars
layout that puts each validation figure beside its training counterpart. Events go through
PyTorch's `SummaryWriter` (tensorboard's own writer and summaries), imported when a run starts
so that `import trainer` stays fast; they are flushed before every checkpoint and on an
exception, so a killed run keeps every point up to its last checkpoint. Only the global-zero
process writes. What the dashboards show (the layout, the HParams columns, the pinned
cards) is built by `tensorboard_dashboards`; this callback decides when it is written.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.callbacks.base import Callback
from trainer.callbacks.tensorboard_dashboards import (
    as_markdown_yaml,
    custom_scalars_layout,
    hparams_experiment,
    hparams_session_end,
    metric_order,
    monitored_metrics,
    time_series_address,
)
from trainer.hparams import dashboard_hparams

if TYPE_CHECKING:
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from trainer.trainer import Trainer

__all__ = ["TensorBoardLogger"]

# Written to the CSV and the history, not to TensorBoard (see the module's docstring).
_NOT_SCALARS = frozenset({"epoch"})


class TensorBoardLogger(Callback):
    """Write scalars, hyperparameters, the config and optional histograms to TensorBoard.

    Args:
        log_dir: where the event files go; None asks the trainer for its run's folder
            (`trainer.log_dir`, `run_dir/version_N`) when a run starts.
        log_hparams: record the run's hyperparameters for the HParams tab, where each run's
            last value of every scalar (`val/loss`, `val/acc`, ...) stands beside them, and
            `trainer.hparams` as YAML for the Text tab.
        histogram_every_n_epochs: every N epochs, write a histogram of each parameter
            (`weights/NAME`) at the epoch's end and of its gradient (`gradients/NAME`) at the
            epoch's last optimizer step; None writes none (they cost a device-to-host copy).

    Open the dashboards with `tensorboard --logdir RUN_DIR`.

    Example:
        >>> Trainer(model, ..., logger=TensorBoardLogger(histogram_every_n_epochs=5))
    """

    writes_files = True

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
        self._writer: SummaryWriter | None = None
        self._epoch_length: int | None = None
        self._tags: dict[str, None] = {}  # scalar tags in the order first logged
        self._is_layout_due = False

    def time_series_url(self, trainer: Trainer, port: int = 6006) -> str | None:
        """The Time Series tab with the monitored metric and the losses pinned on top.

        TensorBoard sorts its groups by name, so `lr` and `train` would open first; pinned
        cards come before every group, and TensorBoard reads them from the address. None
        when none of those figures was logged.
        """
        return time_series_address(list(self._tags), monitored_metrics(trainer), port)

    def dashboard_url(self, trainer: Trainer) -> str | None:
        """The Time Series tab with the figures that judge the run pinned on top."""
        return self.time_series_url(trainer)

    def uses_hook(self, hook: str) -> bool:
        """Without histograms, the per-step histogram hooks have nothing to do."""
        is_histogram_hook = hook in ("on_train_epoch_start", "on_before_optimizer_step")
        is_idle = is_histogram_hook and self.histogram_every_n_epochs is None
        if is_idle and self._hook_is_from(TensorBoardLogger, hook):
            return False
        return super().uses_hook(hook)

    def on_fit_start(self, trainer: Trainer) -> None:
        """Open the writer; on resume, drop points a killed run wrote after its checkpoint."""
        if not trainer.is_global_zero:
            return
        # tensorboard and protobuf load here, once per run that logs, not at `import trainer`.
        from torch.utils.tensorboard import SummaryWriter

        folder = self.log_dir or trainer.log_dir
        purge_step = trainer.global_step + 1 if trainer.global_step else None
        # Events are flushed at checkpoints and at the end; the timer is for long epochs.
        self._writer = SummaryWriter(str(folder), purge_step=purge_step, flush_secs=30)
        self._tags = {}
        self._is_layout_due = False
        if trainer.global_step == 0:  # a resumed run has these from its start
            self._write_run_description(trainer)

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
                    step = trainer.global_step + 1
                    self._add_histogram(f"gradients/{name}", parameter.grad, step)

    def on_log(self, trainer: Trainer, metrics: dict[str, float], step: int) -> None:
        """Write each figure at `step`."""
        if self._writer is None:
            return
        for name, value in metrics.items():
            if name not in _NOT_SCALARS:
                self._writer.add_scalar(name, value, global_step=step)
                self._tags[name] = None

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        """Write weight histograms when due; after a fresh run's first epoch, its layout."""
        if self._is_layout_due:
            self._write_layout(trainer)
        if not self._is_histogram_epoch(trainer):
            return
        for name, parameter in trainer.model.named_parameters():
            self._add_histogram(f"weights/{name}", parameter, trainer.global_step)

    def on_save_checkpoint(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None:
        """Put every event so far on disk before the checkpoint is: a run killed after it
        keeps every point up to it."""
        if self._writer is not None:
            self._writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        """Mark the HParams session finished and close the event file."""
        if self._writer is not None and self._is_layout_due:
            self._write_layout(trainer)
        if self._writer is not None and self.log_hparams and trainer.hparams:
            ended = hparams_session_end()
            self._writer.file_writer.add_summary(ended, global_step=trainer.global_step)
        self._close()

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        """Flush and close the event file so what was logged stays readable."""
        self._close()

    def _is_histogram_epoch(self, trainer: Trainer) -> bool:
        every = self.histogram_every_n_epochs
        return self._writer is not None and every is not None and (trainer.epoch + 1) % every == 0

    def _add_histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        """A histogram of the finite values: one NaN weight must not flatten the picture."""
        flat = values.detach().reshape(-1).float()
        finite = flat[flat.isfinite()]
        if finite.numel():
            self._writer.add_histogram(tag, finite, global_step=step)

    def _write_run_description(self, trainer: Trainer) -> None:
        """Hyperparameters and config text at step 0 of a fresh run; its layout is due."""
        assert self._writer is not None
        if self.log_hparams and trainer.hparams:
            from tensorboard.plugins.hparams import summary_v2

            options = inspect.signature(type(trainer).__init__).parameters
            hparams = dashboard_hparams(trainer.hparams, trainer_options=options)
            # The row is named after the run's folder ("version_0 (digits_mlp)"): the hash
            # TensorBoard would use says nothing, and the job keeps two jobs' rows apart.
            folder = Path(self._writer.log_dir)
            trial = f"{folder.name} ({folder.parent.name})"
            summary = summary_v2.hparams_pb(hparams, trial_id=trial, start_time_secs=time.time())
            self._writer.file_writer.add_summary(summary, global_step=0)
            self._writer.add_text("config", as_markdown_yaml(trainer.hparams), global_step=0)
        self._is_layout_due = True

    def _write_layout(self, trainer: Trainer) -> None:
        """The Custom Scalars charts and the HParams tab's columns, monitored metric first.

        Written once the first epoch has logged its figures, so no chart stays empty; the
        HParams tab shows the first five hyperparameters and metrics as it opens.
        """
        self._is_layout_due = False
        tags, monitored = list(self._tags), monitored_metrics(trainer)
        self._writer.add_custom_scalars(custom_scalars_layout(tags, monitored))
        if not (self.log_hparams and trainer.hparams):
            return
        options = inspect.signature(type(trainer).__init__).parameters
        hparams = dashboard_hparams(trainer.hparams, trainer_options=options)
        experiment = hparams_experiment(hparams, metric_order(tags, monitored))
        self._writer.file_writer.add_summary(experiment, global_step=trainer.global_step)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
