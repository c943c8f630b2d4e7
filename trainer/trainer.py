"""`Trainer`: the validated constructor, `fit` / `validate` / `test` / `predict`, the
default steps, and the training loop itself, in plain Python a reader follows top to bottom.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn

from trainer.callbacks.base import Callback, CallbackList
from trainer.callbacks.csv_logger import CSVLogger
from trainer.callbacks.model_checkpoint import ModelCheckpoint
from trainer.callbacks.monitor import Monitor
from trainer.callbacks.progress import ProgressBar
from trainer.callbacks.tensorboard import TensorBoardLogger
from trainer.checkpoint import (
    CheckpointError,
    capture_rng_states,
    export_weights,
    find_checkpoint,
    last_checkpoint_name,
    restore_rng_states,
    rotate_last_checkpoints,
    save_checkpoint,
)
from trainer.device import batch_size_of, batches_on_device
from trainer.distributed import Distributed
from trainer.hparams import default_hparams
from trainer.metrics import RunningMeans, Throughput, compute_metrics, is_stateful_metric
from trainer.optim import build_optimizer, build_scheduler, is_plateau, learning_rates
from trainer.precision import Precision
from trainer.preemption import PreemptionWatch, exit_code_for
from trainer.sampling import (
    ResumableSampler,
    check_same_data,
    data_position,
    length_or_none,
    why_not_resumable,
)
from trainer.state import TrainState

__all__ = ["NanPolicy", "NonFiniteLossError", "Trainer", "seed_everything"]

NanPolicy = Literal["raise", "skip"]
NAN_POLICIES: tuple[str, ...] = get_args(NanPolicy)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class Trainer:
    """Trains any `nn.Module` with a loader, a loss and an optimizer; subclass it to change a step.

    The loop, with every hook where it fires::

        fit(ckpt_path):
            restore the checkpoint, if any            -> on_load_checkpoint
            on_fit_start
            while epochs and steps remain and not should_stop:
                on_train_epoch_start
                for batch_idx, batch in train_loader (a resumed epoch skips what it consumed):
                    on_train_batch_start(batch, batch_idx)
                    loss = training_step(batch, batch_idx)      # under autocast
                    backward(loss / accumulate_grad_batches)    # DDP: all-reduce at window end
                    if the accumulation window is full or the epoch's batches are done:
                        unscale gradients, clip them to gradient_clip_val
                        on_before_optimizer_step(optimizer)
                        optimizer.step(); optimizer.zero_grad(set_to_none=True)
                        scheduler.step()          # scheduler_interval="step"; not on a skipped step
                        global_step += 1
                        every log_every_n_steps steps: on_log(step figures, global_step)
                                      # loss, lr, samples/s, grad norm when clipped or asked
                    on_train_batch_end(outputs, batch, batch_idx)
                    leave the epoch if should_stop or max_steps is reached
                    on SIGTERM/SIGINT: save a checkpoint here, exit 128 + signal
                    (several ranks agree on should_stop and signals at log steps and epoch ends)
                if val_loader:
                    on_validation_start
                    validation_step(batch, batch_idx) per batch   # eval(), inference_mode
                    on_validation_end(val figures)
                scheduler.step()                  # "epoch"; ReduceLROnPlateau gets its monitor
                on_log(epoch figures, global_step)   # on_log fires on rank 0 only
                on_train_epoch_end                # ModelCheckpoint saves -> on_save_checkpoint
            on_fit_end
        on any exception: on_exception(exception), then it propagates
        a NaN/inf loss raises where the loss is read: log steps, epoch ends, checkpoints

    Example:
        >>> trainer = Trainer(model, optimizer=torch.optim.AdamW(model.parameters()),
        ...                   loss_fn=nn.CrossEntropyLoss(), train_loader=train_dl,
        ...                   val_loader=val_dl, max_epochs=10, run_dir="runs/demo")
        >>> history = trainer.fit()
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        optimizer: torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] | None = None,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        train_loader: Iterable[Any] | None = None,
        val_loader: Iterable[Any] | None = None,
        scheduler: Any = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
        metrics: Mapping[str, Any] | None = None,
        max_epochs: int | None = None,
        max_steps: int | None = None,
        precision: str = "32",
        device: str | torch.device = "auto",
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        callbacks: list[Callback] | None = None,
        run_dir: str | Path | None = None,
        log_every_n_steps: int = 50,
        seed: int | None = None,
        compile: bool | dict[str, Any] = False,
        progress_bar: bool | ProgressBar = True,
        logger: bool | TensorBoardLogger | CSVLogger = True,
        checkpoint: bool | ModelCheckpoint = True,
        nan_policy: str = "raise",
        hparams: Mapping[str, Any] | None = None,
        log_grad_norm: bool = False,
        strategy: str | Distributed = "auto",
    ) -> None:
        # First, while the only locals are the arguments: they give the default hyperparameters.
        self.hparams = dict(hparams) if hparams is not None else default_hparams(locals())
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        _check_limits(max_epochs, max_steps)
        _check_positive_int("accumulate_grad_batches", accumulate_grad_batches)
        _check_positive_int("log_every_n_steps", log_every_n_steps)
        if gradient_clip_val is not None and not gradient_clip_val > 0:
            raise ValueError(f"gradient_clip_val must be > 0 or None, got {gradient_clip_val}.")
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy={nan_policy!r} is not supported; use 'raise' or 'skip'.")
        self.nan_policy = nan_policy
        if seed is not None:
            seed_everything(seed)
        self.distributed = _as_distributed(strategy, nan_policy)
        self.device = self.distributed.setup(device)  # joins the process group under torchrun
        self.precision = Precision(precision, self.device)
        self.model = self._place_model(model, compile)
        self.loss_fn = loss_fn
        self.train_loader = _check_loader(train_loader, "train_loader")
        self.val_loader = self.distributed.shard_for_evaluation(val_loader)
        self.metric_fns = {
            name: _to_device(fn, self.device) for name, fn in dict(metrics or {}).items()
        }
        self.max_epochs, self.max_steps = max_epochs, max_steps
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = gradient_clip_val
        self.log_every_n_steps, self.log_grad_norm = log_every_n_steps, log_grad_norm
        self.scheduler_interval, self.scheduler_monitor = scheduler_interval, scheduler_monitor
        self._check_default_steps_have_loss()
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self._scheduler_arg = scheduler
        if optimizer is not None:
            self._set_optimization(optimizer, scheduler)
        self.run_dir = Path(run_dir) if run_dir else _default_run_dir()
        self.state = TrainState()
        self.callbacks = CallbackList(
            _assemble_callbacks(
                list(callbacks or []), progress_bar, logger, checkpoint, self.is_global_zero
            )
        )
        self.last_batch_size = 0
        self._phase: str | None = None
        self._step_logs: dict[str, torch.Tensor | float] = {}
        self._train_means, self._eval_means = RunningMeans(), RunningMeans()
        self._throughput = Throughput()
        self._epoch_done = False
        self._last_logged_step = -1
        self._sampler: ResumableSampler | None = None
        self._epoch_start_rng: torch.Tensor | None = None
        self._resume_point: dict[str, Any] | None = None
        self._preemption = PreemptionWatch()
        self._warned_inexact = False
        self._last_finite_step = 0
        self._epoch_length: int | None = None

    # ----------------------------------------------------------------- state a callback reads
    @property
    def epoch(self) -> int:
        """The current epoch, counted from 0."""
        return self.state.epoch

    @property
    def global_step(self) -> int:
        """Optimizer steps done since the run began."""
        return self.state.global_step

    @property
    def metrics(self) -> dict[str, float]:
        """The latest value of every logged name, as floats."""
        return self.state.metrics

    @property
    def should_stop(self) -> bool:
        """Set to True to end training after the current step."""
        return self.state.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self.state.should_stop = bool(value)

    @property
    def checkpoint_dir(self) -> Path:
        """Where the run's checkpoints live: `run_dir/checkpoints`."""
        return self.run_dir / "checkpoints"

    @property
    def is_global_zero(self) -> bool:
        """True on the process that writes logs, progress and checkpoints (rank 0, or alone)."""
        return self.distributed.is_global_zero

    @property
    def num_train_batches(self) -> int | None:
        """Batches per training epoch, or None for a loader without a length."""
        return length_or_none(self.train_loader)

    # ------------------------------------------------------------------------- override points
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | dict[str, Any]:
        """Compute the loss of one batch of `(inputs, targets)`; override for other batches."""
        inputs, targets = _unpack(batch, "training_step")
        return self.loss_fn(self.model(inputs), targets)

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor | dict[str, Any]:
        """Return the loss and every `metrics` entry for one batch of `(inputs, targets)`."""
        inputs, targets = _unpack(batch, "validation_step")
        outputs = self.model(inputs)
        return {"loss": self.loss_fn(outputs, targets)} | compute_metrics(
            self.metric_fns, outputs, targets
        )

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor | dict[str, Any]:
        """Like `validation_step`; figures are reported under `test/`."""
        return self.validation_step(batch, batch_idx)

    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        """The model's outputs for a batch of inputs, or of `(inputs, targets)`."""
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.model(inputs)

    def configure_optimizers(self) -> Any:
        """Return an optimizer, or `(optimizer, scheduler)`, when none was passed in."""
        raise ValueError(
            "no optimizer: pass optimizer=... to Trainer (an Optimizer or a callable "
            "params -> Optimizer), or override configure_optimizers() in a subclass."
        )

    def log(self, name: str, value: torch.Tensor | float) -> None:
        """Record a scalar; it stays on the device until a log step or epoch end reads it."""
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(
                    f"self.log({name!r}, ...) needs a scalar, got a tensor of shape "
                    f"{tuple(value.shape)}; reduce it first, e.g. with .mean()."
                )
            value = value.detach()
        if self._phase == "train":
            self._step_logs[name] = value
            self._train_means.add(name, value, self.last_batch_size)
        elif self._phase is not None:
            self._eval_means.add(name, value, self.last_batch_size)
        else:
            self.state.metrics[name] = float(value)

    # -------------------------------------------------------------------------------- entry points
    def fit(self, ckpt_path: str | Path | None = None) -> list[dict[str, float]]:
        """Train until `max_epochs` or `max_steps`; `ckpt_path` resumes a saved run.

        Returns one record per epoch: `epoch`, the epoch means of training figures such as
        `train/loss`, the validation figures and the learning rate.
        """
        if self.train_loader is None:
            raise ValueError("fit() needs a train_loader: pass train_loader=... to Trainer.")
        if self.optimizer is None:
            self._set_optimization(*_split_optimization(self.configure_optimizers()))
        self.state.should_stop = False
        self.train_loader, self._sampler = self.distributed.shard_training_loader(
            self.train_loader, pin_memory=self.device.type == "cuda"
        )
        self.distributed.check_loader_length(self.num_train_batches, self.accumulate_grad_batches)
        if ckpt_path is not None:
            self._resume(ckpt_path)
        history: list[dict[str, float]] = []
        with _kept_module_modes(self.model), self._preemption:
            if not self.model.training:
                self.model.train()
            try:
                self.callbacks.call("on_fit_start", self)
                while not self._is_finished():
                    history.append(self._run_train_epoch())
                self.callbacks.call("on_fit_end", self)
            except BaseException as exception:
                self.distributed.report_failure(exception)
                self.callbacks.call("on_exception", self, exception)
                raise
        return history

    def validate(
        self, loader: Iterable[Any] | None = None, ckpt_path: str | Path | None = None
    ) -> dict[str, float]:
        """Average the loss and metrics over `loader` (the `val_loader` by default)."""
        loader = loader if loader is not None else self.val_loader
        if loader is None:
            raise ValueError("validate() needs a loader: pass one, or val_loader=... to Trainer.")
        self._load_weights(ckpt_path)
        return self._run_validation(loader)

    def test(
        self, loader: Iterable[Any], ckpt_path: str | Path | None = None
    ) -> dict[str, float]:
        """Average the loss and metrics over `loader`, named `test/...`."""
        self._load_weights(ckpt_path)
        return self._run_eval_loop(loader, "test")

    def predict(self, loader: Iterable[Any], ckpt_path: str | Path | None = None) -> list[Any]:
        """The outputs of `predict_step` for every batch of `loader`, in order."""
        self._load_weights(ckpt_path)
        return self._run_eval_loop(loader, "predict")

    # ------------------------------------------------------------------------------------ the loop
    def _run_train_epoch(self) -> dict[str, float]:
        self.callbacks.call("on_train_epoch_start", self)
        self._train_means.reset()
        self._epoch_done = False
        self._step_logs.clear()
        first = self.state.batches_in_epoch
        self._epoch_length = self.num_train_batches  # len() of a DataLoader is not free
        self._throughput.restart()
        is_exhausted = True
        batches = batches_on_device(
            self._epoch_batches(first), self.device, self.precision.input_dtype
        )
        for batch_idx, batch in enumerate(batches, start=first):
            self.last_batch_size = batch_size_of(batch) or 1
            self._throughput.samples += self.last_batch_size
            self._phase = "train"
            self.callbacks.call("on_train_batch_start", self, batch, batch_idx)
            outputs = self._run_train_batch(batch, batch_idx)
            self.callbacks.call("on_train_batch_end", self, outputs, batch, batch_idx)
            self._phase = None
            should_stop, signum = self._shared_decisions()
            if should_stop or self._is_step_limit_reached():
                self.state.should_stop = should_stop
                is_exhausted = self.state.batches_in_epoch == self._epoch_length
                break
            if signum:
                self._save_and_exit(signum)
        if is_exhausted:
            self._finish_epoch(first)
        return self._end_train_epoch()

    def _epoch_batches(self, first: int) -> Iterator[Any]:
        """This epoch's batches; a resumed epoch starts at `first` without loading earlier ones."""
        resume, self._resume_point = self._resume_point, None
        _set_sampler_epoch(self.train_loader, self.state.epoch)
        if not first or resume is None:
            self._epoch_start_rng = torch.get_rng_state()
            return iter(self.train_loader)
        if self._sampler is None:  # warned about when the checkpoint was saved
            return islice(iter(self.train_loader), first, None)
        # Start the iterator from the epoch's own random state (its worker seeds come from
        # there), have the sampler skip the consumed indices, then continue from the
        # checkpoint's random state.
        data = resume["data"]
        self._epoch_start_rng = data["epoch_start_rng"]
        torch.set_rng_state(self._epoch_start_rng)
        self._sampler.resume_at(data["epoch_order"], first * data["batch_size"])
        batches = iter(self.train_loader)
        restore_rng_states(resume["rng"])
        return batches

    def _run_train_batch(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        scale = self.accumulate_grad_batches
        is_last = self.state.batches_in_epoch + 1 == self._epoch_length
        is_boundary = (batch_idx + 1) % scale == 0 or is_last
        # Under DDP, micro-steps inside an accumulation window skip the gradient all-reduce.
        with self.distributed.no_sync(is_boundary):
            with self.precision.autocast():
                outputs = _as_step_outputs(self._training_step(batch, batch_idx))
            loss = outputs["loss"]
            # "skip" pays one host sync per batch to keep a non-finite loss out of the weights.
            is_used = self.nan_policy != "skip" or self._is_finite_or_skipped(loss)
            if is_used:
                self.precision.backward(loss / scale if scale > 1 else loss)
            else:  # other ranks still expect this one in the gradient all-reduce
                self.distributed.contribute_no_gradient(self.model)
        outputs["loss"] = loss = loss.detach()
        if is_used:  # what self.log does, without its checks
            self._step_logs["train/loss"] = loss
            self._train_means.add("train/loss", loss, self.last_batch_size)
        self.state.batches_in_epoch += 1
        if is_boundary:
            self._optimizer_step(window=(batch_idx % scale) + 1)
        return outputs

    def _optimizer_step(self, window: int) -> None:
        """Unscale, clip, step, zero and count; `window` is how many micro-batches it covers."""
        optimizer = self.optimizer
        if window < self.accumulate_grad_batches:  # a short last window: undo the 1/N scaling
            _scale_gradients(optimizer, self.accumulate_grad_batches / window)
        self.precision.unscale(optimizer)
        if self.gradient_clip_val is not None:
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            norm = nn.utils.clip_grad_norm_(parameters, self.gradient_clip_val)
            self._step_logs["train/grad_norm"] = norm
        elif self.log_grad_norm and (self.state.global_step + 1) % self.log_every_n_steps == 0:
            # Only on log steps: the norm is a reduction over every gradient.
            grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
            norm = nn.utils.get_total_norm([grad for grad in grads if grad is not None])
            self._step_logs["train/grad_norm"] = norm
        self.callbacks.call("on_before_optimizer_step", self, optimizer)
        stepped = self.precision.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        if not stepped:  # the GradScaler found inf/nan gradients: the schedule waits too
            self.state.skipped_steps += 1
        elif self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        self.state.global_step += 1
        if self.state.global_step % self.log_every_n_steps == 0:
            self._log_step_figures()

    def _finish_epoch(self, first_batch: int) -> None:
        """Mark the epoch complete; step the short last window of a loader without a length."""
        if self.state.batches_in_epoch == 0:
            raise ValueError(
                "train_loader produced no batches; check the data set is not empty and that "
                "batch_size with drop_last=True does not exceed its length."
            )
        self._epoch_done = True
        pending = self.state.batches_in_epoch % self.accumulate_grad_batches
        if pending and self._epoch_length is None and self.state.batches_in_epoch > first_batch:
            self._optimizer_step(window=pending)

    def _end_train_epoch(self) -> dict[str, float]:
        train_figures = self.distributed.reduce_means(self._train_means)
        self._check_finite_loss(train_figures.get("train/loss"))
        self.state.metrics.update(train_figures)
        record = {"epoch": float(self.state.epoch), **train_figures}
        if self.val_loader is not None:
            record |= self._run_validation(self.val_loader)
        rates = learning_rates(self.optimizer)
        record |= rates
        self.state.metrics.update(rates)
        self._step_scheduler_on_epoch()
        epoch_figures = {f"{name}_epoch": value for name, value in train_figures.items()}
        just_logged = self.state.global_step == self._last_logged_step
        epoch_figures |= {
            name: value
            for name, value in record.items()
            if name not in train_figures and not (just_logged and name in rates)
        }
        if self.is_global_zero:
            self.callbacks.call("on_log", self, epoch_figures, self.state.global_step)
        self.callbacks.call("on_train_epoch_end", self)
        self.state.should_stop = self.distributed.agree(self.state.should_stop, 0, is_due=True)[0]
        if self._epoch_done:
            self.state.epoch += 1
            self.state.batches_in_epoch = 0
            self._epoch_done = False
        return record

    def _run_validation(self, loader: Iterable[Any]) -> dict[str, float]:
        self.callbacks.call("on_validation_start", self)
        figures = self._run_eval_loop(loader, "val")
        self.state.metrics.update(figures)
        self.callbacks.call("on_validation_end", self, figures)
        return figures

    def _run_eval_loop(self, loader: Iterable[Any], stage: str) -> Any:
        """Run validation, test or predict over `loader` in eval mode without autograd."""
        step = {"val": self.validation_step, "test": self.test_step, "predict": self.predict_step}
        predictions: list[Any] = []
        if stage != "predict":  # predictions stay whole and in order on every rank
            loader = self.distributed.shard_for_evaluation(loader)
        self._eval_means.reset()
        with _kept_module_modes(self.model), torch.inference_mode():
            self.model.eval()
            batches = batches_on_device(loader, self.device, self.precision.input_dtype)
            for batch_idx, batch in enumerate(batches):
                self.last_batch_size = batch_size_of(batch) or 1
                self._phase = stage
                with self.precision.autocast():
                    outputs = step[stage](batch, batch_idx)
                self._phase = None
                if stage == "predict":
                    predictions.append(outputs)
                else:
                    self._log_eval_outputs(outputs, stage)
        if stage == "predict":
            return predictions
        figures = self.distributed.reduce_means(self._eval_means)
        for name, metric in self.metric_fns.items():
            if is_stateful_metric(metric):
                figures[f"{stage}/{name}"] = float(metric.compute())
                metric.reset()
        return figures

    def _log_eval_outputs(self, outputs: Any, stage: str) -> None:
        if outputs is None:
            return
        if isinstance(outputs, torch.Tensor):
            outputs = {"loss": outputs}
        if not isinstance(outputs, Mapping):
            raise TypeError(
                f"{stage}_step must return a loss tensor, a dict of scalar tensors or None, "
                f"got {type(outputs).__name__}."
            )
        self._phase = stage
        for name, value in outputs.items():
            self.log(f"{stage}/{name}", value)
        self._phase = None

    # ----------------------------------------------------------------------- figures and limits
    def _log_step_figures(self) -> None:
        """Read this step's logged values from the device and hand them to loggers."""
        figures = {name: float(value) for name, value in self._step_logs.items()}
        self._check_finite_loss(figures.get("train/loss"))
        figures["train/samples_per_sec"] = self._throughput.rate()  # after float() waited
        figures |= learning_rates(self.optimizer)
        self.state.metrics.update(figures)
        self._last_logged_step = self.state.global_step
        if self.is_global_zero:
            self.callbacks.call("on_log", self, figures, self.state.global_step)

    def _check_finite_loss(self, loss: float | None) -> None:
        """Raise for a NaN/inf loss; checked where the loss is read anyway, so it costs no sync."""
        if loss is None or math.isfinite(loss) or self.nan_policy != "raise":
            self._last_finite_step = self.state.global_step
            return
        raise NonFiniteLossError(
            f"the training loss is {loss} at optimizer step {self.state.global_step} (epoch "
            f"{self.state.epoch}); it was finite up to step {self._last_finite_step}. Look at the "
            "learning rate (too high diverges), the data (NaN or inf inputs?) and the loss "
            "(log of 0, division by 0). log_every_n_steps=1 finds the exact step; "
            "nan_policy='skip' skips such batches. Checkpoints saved so far are intact."
        )

    def _is_finite_or_skipped(self, loss: torch.Tensor) -> bool:
        loss = loss.detach()
        if bool(torch.isfinite(loss)):
            return True
        if not self.state.skipped_batches:
            warnings.warn(
                f"skipping a batch with a non-finite loss ({loss.item()}) at optimizer step "
                f"{self.state.global_step} (nan_policy='skip'); trainer.state.skipped_batches "
                "counts them.",
                stacklevel=2,
            )
        self.state.skipped_batches += 1
        return False

    def _step_scheduler_on_epoch(self) -> None:
        if self.scheduler is None or self.scheduler_interval != "epoch":
            return
        if is_plateau(self.scheduler):
            monitor = Monitor(self.scheduler_monitor)
            self.scheduler.step(monitor.read(self.state.metrics, "ReduceLROnPlateau"))
        else:
            self.scheduler.step()

    def _shared_decisions(self) -> tuple[bool, int]:
        """`should_stop` and a preemption signal as every rank acts on them.

        A signal counts only at an optimizer-step boundary. Several ranks agree at log steps
        (or every `agree_every_n_steps`) and at the epoch's last step, not at every batch.
        """
        is_boundary = self._is_step_boundary()
        signum = (self._preemption.received or 0) if is_boundary else 0
        interval = self.distributed.agree_every_n_steps or self.log_every_n_steps
        is_due = is_boundary and (
            self.state.global_step % interval == 0
            or self.state.batches_in_epoch == self._epoch_length
        )
        return self.distributed.agree(self.state.should_stop, signum, is_due=is_due)

    def _is_step_limit_reached(self) -> bool:
        return self.max_steps is not None and self.state.global_step >= self.max_steps

    def _is_step_boundary(self) -> bool:
        done = self.state.batches_in_epoch
        return done % self.accumulate_grad_batches == 0 or done == self._epoch_length

    def _is_finished(self) -> bool:
        out_of_epochs = self.max_epochs is not None and self.state.epoch >= self.max_epochs
        return self.state.should_stop or out_of_epochs or self._is_step_limit_reached()

    # ------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: str | Path) -> Path:
        """Save everything needed to continue this run to `path`, atomically.

        On several ranks, call it on every rank: it gathers their states, rank 0 writes.
        """
        self._check_finite_loss(self._train_means.mean("train/loss"))
        state = self.state.state_dict()
        if self._epoch_done:  # saved at an epoch's end: resume at the next epoch's start
            state |= {"epoch": self.state.epoch + 1, "batches_in_epoch": 0}
        elif state["batches_in_epoch"]:
            self._warn_if_inexact_mid_epoch()
        rng = capture_rng_states()
        ranks = self.distributed.gather({"rng": rng, "epoch_start_rng": self._epoch_start_rng})
        optimizer = self.optimizer
        checkpoint: dict[str, Any] = {
            "model": self.distributed.model_state_dict(self.model),
            "optimizer": self.distributed.optimizer_state_dict(self.model, optimizer)
            if optimizer
            else {},
            "scheduler": self.scheduler.state_dict() if self.scheduler else {},
            "precision": self.precision.state_dict(),
            "state": state,
            # Ranks 1.. keep their own random streams (dropout, workers) for an exact resume.
            "rng": rng | {"other_ranks": ranks[1:]},
            "data": data_position(self.train_loader, self._sampler, self._epoch_start_rng),
            "callbacks": self.callbacks.state_dicts(),
        }
        self.callbacks.call("on_save_checkpoint", self, checkpoint)
        # Rank 0 writes; every rank returns only once the file is complete.
        self.distributed.run_on_zero("save a checkpoint", save_checkpoint, checkpoint, path)
        return Path(path)

    def export_weights(self, path: str | Path) -> Path:
        """Write the model's weights alone as a `.safetensors` file, for inference and sharing.

        On several ranks, call it on every rank (FSDP gathers the weights); rank 0 writes.
        """
        weights = self.distributed.model_state_dict(self.model)
        self.distributed.run_on_zero("export weights", export_weights, weights, path)
        return Path(path)

    def _save_and_exit(self, signum: int) -> None:
        """Preemption: save the last state at this step boundary, then exit with 128 + signum."""
        path = self.save_checkpoint(
            self.checkpoint_dir / last_checkpoint_name(self.state.epoch, self.state.global_step)
        )
        keep = max(
            (
                callback.keep_last
                for callback in self.callbacks
                if isinstance(callback, ModelCheckpoint) and callback.dirpath == self.checkpoint_dir
            ),
            default=2,
        )
        self.distributed.run_on_zero(
            "remove old checkpoints", rotate_last_checkpoints, self.checkpoint_dir, keep
        )
        if self.is_global_zero:
            print(
                f"Received signal {signum}: saved {path} at optimizer step "
                f"{self.state.global_step}. Resume with fit(ckpt_path='last') or "
                "trainer fit ... --ckpt_path last.",
                file=sys.stderr,
            )
        raise SystemExit(exit_code_for(signum))

    def _warn_if_inexact_mid_epoch(self) -> None:
        reason = why_not_resumable(self.train_loader)
        if reason is None or self._warned_inexact:
            return
        self._warned_inexact = True
        warnings.warn(
            f"this checkpoint is saved mid-epoch, but the train_loader cannot resume there "
            f"exactly: {reason}. A resumed run will draw and discard the consumed batches, and "
            "their order may differ. Use a torch DataLoader (shuffle=True or False) for exact "
            "resume, or save only at epoch ends.",
            stacklevel=3,
        )

    def _resume(self, ckpt_path: str | Path) -> None:
        found = find_checkpoint(ckpt_path, self.checkpoint_dir)
        if found is None:
            if self.is_global_zero:
                print(f"No checkpoint in {self.checkpoint_dir} yet; starting from scratch.")
            return
        path, checkpoint = found
        self.distributed.load_model_state(self.model, checkpoint["model"], path)
        if checkpoint["state"]["batches_in_epoch"]:
            check_same_data(checkpoint["data"], self.train_loader, path)
        _take_own_random_states(checkpoint, self.distributed.rank)
        self.distributed.load_optimizer_state(self.model, self.optimizer, checkpoint["optimizer"])
        if self.scheduler is not None and checkpoint["scheduler"]:
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.precision.load_state_dict(checkpoint["precision"])
        self.state.load_state_dict(checkpoint["state"])
        self.callbacks.load_state_dicts(checkpoint["callbacks"])
        restore_rng_states(checkpoint["rng"])
        self._resume_point = checkpoint
        self.callbacks.call("on_load_checkpoint", self, checkpoint)

    def _load_weights(self, ckpt_path: str | Path | None) -> None:
        if ckpt_path is None:
            return
        found = find_checkpoint(ckpt_path, self.checkpoint_dir)
        if found is None:
            raise CheckpointError(f"no checkpoint in {self.checkpoint_dir} to load.")
        self.distributed.load_model_state(self.model, found[1]["model"], found[0])

    # -------------------------------------------------------------------------- set-up helpers
    def _place_model(self, model: nn.Module, compile: bool | dict[str, Any]) -> nn.Module:
        """Move, compile, shard (FSDP) or wrap the step (DDP): the model as it will train."""
        model = self.precision.convert_module(model.to(self.device))
        if compile is not False:  # in place: state_dict names stay those of the plain model
            model.compile(**_compile_options(compile))
        self.distributed.prepare_model(model)
        self._training_step = self.distributed.wrap_step(model, self.training_step)
        return model

    def _set_optimization(self, optimizer: Any, scheduler: Any) -> None:
        self.optimizer = build_optimizer(optimizer, self.model)
        self.distributed.check_optimizer(self.model, self.optimizer)
        self.scheduler = build_scheduler(
            scheduler if scheduler is not None else self._scheduler_arg,
            self.optimizer,
            self.scheduler_interval,
        )

    def _check_default_steps_have_loss(self) -> None:
        uses_default = type(self).training_step is Trainer.training_step or (
            self.val_loader is not None and type(self).validation_step is Trainer.validation_step
        )
        if self.loss_fn is None and uses_default:
            raise ValueError(
                "loss_fn is missing: the default training_step / validation_step call "
                "loss_fn(outputs, targets). Pass loss_fn=nn.CrossEntropyLoss() (or similar), "
                "or override training_step and validation_step in a subclass."
            )


def seed_everything(seed: int) -> None:
    """Seed python's `random`, numpy and torch (all devices) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------- private helpers
def _check_limits(max_epochs: int | None, max_steps: int | None) -> None:
    if max_epochs is None and max_steps is None:
        raise ValueError("set max_epochs or max_steps (or both) so the run knows when to stop.")
    for name, value in (("max_epochs", max_epochs), ("max_steps", max_steps)):
        if value is not None:
            _check_positive_int(name, value)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _check_loader(loader: Iterable[Any] | None, name: str) -> Iterable[Any] | None:
    if loader is None:
        return None
    if not isinstance(loader, Iterable):
        raise TypeError(f"{name} must be an iterable of batches (a DataLoader), got "
                        f"{type(loader).__name__}.")
    if length_or_none(loader) == 0:
        raise ValueError(
            f"{name} is empty (0 batches); check its data set is not empty and that "
            "batch_size with drop_last=True does not exceed the data set's length."
        )
    return loader


def _compile_options(compile: Any) -> dict[str, Any]:
    if compile is True or isinstance(compile, dict):
        return compile if isinstance(compile, dict) else {}
    raise TypeError(
        f"compile must be True, False or a dict of torch.compile options such as "
        f"{{'mode': 'max-autotune'}}, got {type(compile).__name__} {compile!r}."
    )


def _default_run_dir() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def _to_device(metric: Any, device: torch.device) -> Any:
    return metric.to(device) if isinstance(metric, nn.Module) else metric


def _assemble_callbacks(
    callbacks: list[Callback],
    progress_bar: Any,
    logger: Any,
    checkpoint: Any,
    is_global_zero: bool = True,
) -> list[Callback]:
    """Defaults first, then the user's; callbacks that save checkpoints go last so they
    capture every other callback's state for the step.

    `logger` stands for two defaults, TensorBoard and CSV; an instance of one replaces that
    one, and an instance in `callbacks` replaces the default of its class. Only rank 0 gets
    the default progress bar and loggers: one process shows and writes what all of them do."""
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
                if is_global_zero or kind is ModelCheckpoint:
                    defaults.append(kind())
    ordered = defaults + callbacks
    return sorted(ordered, key=lambda callback: isinstance(callback, ModelCheckpoint))


def _as_distributed(strategy: str | Distributed, nan_policy: str) -> Distributed:
    if isinstance(strategy, str):
        strategy = Distributed(strategy)
    elif isinstance(strategy, Distributed):
        strategy = copy.copy(strategy)  # its own wrapped model: one object may serve two runs
    else:
        raise TypeError(
            f"strategy must be 'auto', 'ddp', 'fsdp' or a trainer.distributed.Distributed, "
            f"got {type(strategy).__name__}."
        )
    if strategy.strategy == "fsdp" and nan_policy == "skip":
        raise ValueError(
            "nan_policy='skip' does not work with strategy='fsdp': a rank that leaves its batch "
            "out cannot take part in FSDP's gradient reduce-scatter. Use nan_policy='raise', "
            "or strategy='ddp'."
        )
    return strategy


def _set_sampler_epoch(loader: Any, epoch: int) -> None:
    """A DistributedSampler (or any sampler with `set_epoch`) reshuffles per epoch."""
    for sampler in (
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
    ):
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(epoch)


def _take_own_random_states(checkpoint: dict[str, Any], rank: int) -> None:
    """Rank r > 0 resumes from its own saved random states (when the run had that rank)."""
    others = checkpoint["rng"].get("other_ranks") or []
    if 0 < rank <= len(others):
        checkpoint["rng"] = others[rank - 1]["rng"]
        checkpoint["data"]["epoch_start_rng"] = others[rank - 1]["epoch_start_rng"]


def _split_optimization(configured: Any) -> tuple[Any, Any]:
    if isinstance(configured, (tuple, list)):
        if len(configured) != 2:
            raise ValueError(
                "configure_optimizers must return an optimizer or (optimizer, scheduler)."
            )
        return configured[0], configured[1]
    return configured, None


def _unpack(batch: Any, step_name: str) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    shape = f"a {type(batch).__name__}"
    if isinstance(batch, (tuple, list)):
        shape += f" of {len(batch)} items"
    raise TypeError(
        f"the default {step_name} expects each batch to be (inputs, targets), got {shape}. "
        f"Override {step_name}(self, batch, batch_idx) in a Trainer subclass to unpack your "
        "batches and return the loss."
    )


def _as_step_outputs(outputs: Any) -> dict[str, Any]:
    """Check a training step's result and return it as a dict holding `"loss"`."""
    if isinstance(outputs, torch.Tensor):
        outputs = {"loss": outputs}
    elif outputs is None:
        raise ValueError(
            "training_step returned None; return the loss tensor or a dict with 'loss'."
        )
    elif isinstance(outputs, Mapping):
        if "loss" not in outputs:
            raise ValueError(
                f"training_step returned a dict without 'loss' (keys: {sorted(outputs)}); "
                "put the tensor to minimise under 'loss'."
            )
        outputs = dict(outputs)
    else:
        outputs = {"loss": outputs}
    loss = outputs["loss"]
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"the loss must be a tensor, got {type(loss).__name__}.")
    if loss.numel() != 1:
        raise ValueError(
            f"the loss must be a scalar tensor, got shape {tuple(loss.shape)}; did you forget "
            ".mean()? (or reduction='mean' in the loss function)"
        )
    if not loss.requires_grad:
        raise ValueError(
            "the loss does not require grad: it was computed without autograd (under "
            "torch.no_grad(), from detached tensors, or from a model whose parameters are "
            "all frozen)."
        )
    return outputs


def _scale_gradients(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            if parameter.grad is not None:
                parameter.grad.mul_(factor)


@contextlib.contextmanager
def _kept_module_modes(model: nn.Module) -> Iterator[None]:
    """Restore each submodule's own train/eval mode afterwards (a frozen backbone stays eval)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
