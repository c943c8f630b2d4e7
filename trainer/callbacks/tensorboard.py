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
process writes.
"""

from __future__ import annotations

import inspect
import json
import re
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.callbacks.base import Callback
from trainer.hparams import dashboard_hparams, to_yaml

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
        tags = _pinned_tags(list(self._tags), _monitored(trainer))
        if not tags:
            return None
        cards = json.dumps([{"plugin": "scalars", "tag": tag} for tag in tags], separators=",:")
        query = urllib.parse.quote(cards, safe="/:,")
        return f"http://localhost:{port}/?pinnedCards={query}#timeseries"

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
            from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

            end = plugin_data_pb2.SessionEndInfo(
                status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time()
            )
            self._write_hparams_data(trainer.global_step, session_end_info=end)
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
            self._writer.add_text("config", _as_markdown_yaml(trainer.hparams), global_step=0)
        self._is_layout_due = True

    def _write_layout(self, trainer: Trainer) -> None:
        """The Custom Scalars charts and the HParams tab's columns, monitored metric first.

        Written once the first epoch has logged its figures, so no chart stays empty; the
        HParams tab shows the first five hyperparameters and metrics as it opens.
        """
        from tensorboard.plugins.hparams import api_pb2

        self._is_layout_due = False
        self._writer.add_custom_scalars(_layout(list(self._tags), _monitored(trainer)))
        if not (self.log_hparams and trainer.hparams):
            return
        options = inspect.signature(type(trainer).__init__).parameters
        hparams = dashboard_hparams(trainer.hparams, trainer_options=options)
        metrics = _metric_order(list(self._tags), _monitored(trainer))
        experiment = api_pb2.Experiment(
            hparam_infos=[
                api_pb2.HParamInfo(name=name, type=_hparam_type(value))
                for name, value in hparams.items()
            ],
            metric_infos=[
                api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metrics
            ],
            time_created_secs=time.time(),
        )
        self._write_hparams_data(trainer.global_step, experiment=experiment)

    def _write_hparams_data(self, step: int, **data: Any) -> None:
        """One record of the HParams plugin (its experiment or a session's end)."""
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.plugins.hparams import metadata, plugin_data_pb2

        plugin_data = plugin_data_pb2.HParamsPluginData(**data)
        tag = metadata.EXPERIMENT_TAG if "experiment" in data else metadata.SESSION_END_INFO_TAG
        value = summary_pb2.Summary.Value(
            tag=tag,
            metadata=metadata.create_summary_metadata(plugin_data),
            tensor=metadata.NULL_TENSOR,
        )
        summary = summary_pb2.Summary(value=[value])
        self._writer.file_writer.add_summary(summary, global_step=step)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _monitored(trainer: Trainer) -> list[str]:
    """The metrics the run's callbacks watch (early stopping, best checkpoints)."""
    from trainer.callbacks.monitor import Monitor

    names = (getattr(callback, "monitor", None) for callback in trainer.callbacks)
    return list(dict.fromkeys(m.name for m in names if isinstance(m, Monitor)))


def _metric_order(tags: list[str], monitored: list[str]) -> list[str]:
    """Monitored metrics first, then validation figures, training epoch figures, the rest."""

    def rank(tag: str) -> tuple[int, bool]:
        if tag in monitored:
            return 0, False
        if tag.startswith("val/"):
            return 1, tag != "val/loss"
        if tag.startswith("train/") and tag.endswith("_epoch"):
            return 2, tag != "train/loss_epoch"
        return 3, False

    return sorted(tags, key=rank)


def _pinned_tags(tags: list[str], monitored: list[str]) -> list[str]:
    """The figures a run is judged by: what the callbacks watch, then the losses (the
    training loss of the log steps, or of the epochs when no log step came)."""
    train_loss = "train/loss" if "train/loss" in tags else "train/loss_epoch"
    wanted = dict.fromkeys([*monitored, "val/loss", train_loss])
    return [tag for tag in wanted if tag in tags]


def _hparam_type(value: bool | int | float | str) -> int:
    """The HParams plugin's type of `value` (it has no integer type)."""
    from tensorboard.plugins.hparams import api_pb2

    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL
    if isinstance(value, (int, float)):
        return api_pb2.DATA_TYPE_FLOAT64
    return api_pb2.DATA_TYPE_STRING


def _layout(tags: list[str], monitored: list[str]) -> dict[str, dict[str, list[Any]]]:
    """Custom Scalars charts, one per figure the run logged: validation first, monitored first.

    TensorBoard colours lines by run, so a training and a validation line in one chart would
    share a colour: a validation figure with a training counterpart is drawn as its line with
    the gap to training shaded (a gap that widens is overfitting).
    """

    def chart(*names: str) -> list[Any]:
        return ["Multiline", [f"^{re.escape(name)}$" for name in names if name in tags]]

    compared: dict[str, list[Any]] = {}
    for tag in _metric_order([tag for tag in tags if tag.startswith("val/")], monitored):
        train = f"train/{tag.removeprefix('val/')}_epoch"
        is_paired = train in tags
        title = f"{tag}, shaded to {train}" if is_paired else tag
        compared[title] = ["Margin", [tag, train, tag]] if is_paired else chart(tag)
    if not compared and "train/loss_epoch" in tags:
        compared["train/loss_epoch"] = chart("train/loss_epoch")
    optimization = {
        "learning rate": ["Multiline", [r"^lr(/group\d+)?$"]],
        "train/loss at log steps": chart("train/loss"),
        "throughput (samples/s)": chart("train/samples_per_sec"),
        "gradient norm": chart("train/grad_norm"),
    }
    if not any(tag == "lr" or tag.startswith("lr/") for tag in tags):
        del optimization["learning rate"]
    optimization = {title: spec for title, spec in optimization.items() if spec[1]}
    layout = {"train vs validation": compared, "optimization": optimization}
    return {title: charts for title, charts in layout.items() if charts}


def _as_markdown_yaml(hparams: dict[str, Any]) -> str:
    """The hyperparameters as YAML, indented so TensorBoard's markdown shows it verbatim."""
    return "\n".join(f"    {line}" for line in to_yaml(hparams).splitlines())
