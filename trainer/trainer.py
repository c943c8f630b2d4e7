"""`Trainer`: the validated constructor, `fit` / `validate` / `test` / `predict`, the
default steps, and the training loop itself, in plain Python a reader follows top to bottom.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.callbacks.base import Callback, CallbackList
from trainer.callbacks.csv_logger import CSVLogger
from trainer.callbacks.defaults import assemble_callbacks
from trainer.callbacks.model_checkpoint import ModelCheckpoint
from trainer.callbacks.progress import ProgressBar
from trainer.callbacks.tensorboard import TensorBoardLogger
from trainer.callbacks.timer import with_timer
from trainer.checkpoint import capture_rng_states, restore_rng_states
from trainer.checks import (
    NanPolicy,
    as_distributed,
    as_eval_outputs,
    as_step_outputs,
    check_loader,
    check_loop_arguments,
    check_loss_fn,
    check_optimization_mode,
    check_val_loader,
    compile_options,
    inputs_and_targets,
    is_finite_or_skipped,
    non_finite_loss_message,
    split_optimization,
)
from trainer.data_position import DataPosition, stop_persistent_workers
from trainer.device import batches_on_device
from trainer.distributed import Distributed
from trainer.hparams import default_hparams
from trainer.limits import RunLimits
from trainer.loop_schedule import (
    DEFAULT_SANITY_VAL_STEPS,
    LoopSchedule,
    each_loader,
    first_batches,
)
from trainer.metrics import (
    LogBook,
    compute_metrics,
    is_stateful_metric,
    metrics_on_device,
)
from trainer.optimization import Optimization
from trainer.precision import Precision
from trainer.preemption import PreemptionWatch, save_and_exit
from trainer.resume import restore_run, run_checkpoint
from trainer.run_files import RunFiles
from trainer.sampling import evaluation_loader
from trainer.state import TrainState
from trainer.validation_loaders import check_monitored_names, named_figures, named_loaders

__all__ = ["NanPolicy", "NonFiniteLossError", "Trainer", "seed_everything"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class Trainer:
    """Trains any `nn.Module` with a loader, a loss and an optimizer; subclass it to change a step.

    The loop, with every hook where it fires::

        fit(ckpt_path):
            choose log_dir: a new run_dir/version_N, or the folder of the run ckpt_path continues
            restore the checkpoint, if any            -> on_load_checkpoint
            or, starting from scratch, seed_everything(seed) when a seed is given
            on_fit_start
            sanity pass: num_sanity_val_steps val batches, no hooks, no figures, RNG put back
            while epochs and steps remain and not should_stop:
                on_train_epoch_start
                for batch_idx, batch in train_loader (a resumed epoch skips what it consumed;
                                       limit_train_batches: the epoch is its first N):
                    on_train_batch_start(batch, batch_idx)
                    loss = training_step(batch, batch_idx)      # under autocast
                        # automatic_optimization = False: the step calls self.backward and
                        # self.step(optimizer), which do the update below per optimizer;
                        # global_step counts batches, gradients are cleared at window ends
                    backward(loss * n / n_first / accumulate_grad_batches)  # DDP: all-reduce
                        # n: the step's num_items, else its batch size; n / n_first is 1 and
                        # skipped when the window's counts are equal
                    if the accumulation window is full or the epoch's batches are done:
                        gradients *= n_first * window / sum(n), when the counts differ
                        unscale gradients, clip them to gradient_clip_val (by total norm,
                                          or each value: gradient_clip_algorithm)
                        on_before_optimizer_step(optimizer)
                        optimizer.step(); optimizer.zero_grad(set_to_none=True)
                        scheduler.step()          # scheduler_interval="step"; not on a skipped step
                        global_step += 1
                        every log_every_n_steps steps: on_log(step figures, global_step)
                                      # loss, lr, samples/s, grad norm when clipped or asked
                        if val_check_interval says this step (inside the epoch):
                            validation as below, on_log(val figures); ReduceLROnPlateau steps
                    on_train_batch_end(outputs, batch, batch_idx)
                    at a step boundary, leave the epoch if should_stop or max_steps is reached
                                      # max_time spent (Timer): should_stop
                    on SIGTERM/SIGINT: save a checkpoint here, raise TrainingInterrupted
                    (several ranks agree on should_stop and signals at log steps and epoch ends)
                if the epoch's batches are all done (a cut-short epoch ends when resumed):
                    if val_loader and this epoch end is due (check_val_every_n_epoch):
                        on_validation_start
                        validation_step(batch, batch_idx) per batch   # eval(), no autograd
                                                    # (the first limit_val_batches)
                        on_validation_end(val figures)
                    scheduler.step()              # "epoch"; ReduceLROnPlateau gets its monitor
                    on_log(epoch figures, global_step)   # on_log fires on rank 0 only
                    on_train_epoch_end            # ModelCheckpoint saves -> on_save_checkpoint
            on_train_end                          # ModelCheckpoint saves a state not yet saved
            if val_loader and the last step was not validated: validation as above, on_log
            wait for checkpoint files to be fsynced and renamed into place (done in background)
            on_fit_end
        on any exception: on_exception(exception), then it propagates
        test(loader): on_test_start, test_step(batch, batch_idx) per batch, on_test_end(figures)
        a NaN/inf loss raises where the loss is read: log steps, epoch ends, checkpoints

    Args:
        model: any `nn.Module`; it is moved to `device` (and compiled, sharded or wrapped).
        optimizer: an `Optimizer`, a callable `params -> Optimizer`, or a list or dict of
            optimizers (several need `automatic_optimization = False`); None calls
            `configure_optimizers()` when `fit` starts.
        loss_fn: `(outputs, targets) -> scalar tensor`, used by the default steps.
        train_loader: the training batches, usually a `DataLoader`.
        val_loader: batches validated at every epoch end, when given; a dict of named
            loaders (`{"clean": a, "noisy": b}`) validates each, its figures named
            `val/clean/loss`, `val/noisy/acc`, ... (monitor those names).
        scheduler: an LR scheduler or a callable `optimizer -> scheduler` (with several
            optimizers: a list or dict matched to them, or one callable for all);
            `ReduceLROnPlateau` works.
        scheduler_interval: `"epoch"` (after each finished epoch) or `"step"`.
        scheduler_monitor: the metric `ReduceLROnPlateau` reads.
        metrics: name -> callable `(outputs, targets) -> tensor`, or `torchmetrics` objects.
        max_epochs: stop after this many epochs.
        max_steps: stop after this many optimizer steps (whichever limit comes first).
        limit_train_batches: train on the first N batches of each epoch (an int), or that
            fraction of them (a float in (0, 1]; needs a loader with a length); the limited
            epoch is a whole epoch: its last window steps, it validates and ends. Per rank.
        limit_val_batches: likewise for every validation; 0 switches validation off.
        overfit_batches: train on the same first N batches (or fraction) every epoch, a
            shuffled loader drawn in its data set's order, and validate on the first N.
        fast_dev_run: `True` or N: one epoch of N (1) batches of training and validation,
            N batches in `test`/`predict`, writing no files at all; a smoke test of a job.
        precision: `"32"`, `"16-mixed"`, `"bf16-mixed"` or `"bf16-true"`.
        device: `"auto"`, `"cpu"`, `"cuda"`, `"cuda:1"`, `"mps"` or a `torch.device`.
        accumulate_grad_batches: step the optimizer every N batches.
        gradient_clip_val: clip the gradients to this value (None: no clipping).
        gradient_clip_algorithm: `"norm"` clips the total gradient norm to
            `gradient_clip_val`, `"value"` each gradient element into
            `[-gradient_clip_val, gradient_clip_val]`.
        callbacks: added to the defaults; an instance of a default's class replaces it.
        run_dir: the folder for this run's logs and `checkpoints/`.
        log_every_n_steps: how often step figures go to the loggers.
        seed: when given, `fit` seeds python, numpy and torch as it starts a run from
            scratch (a resumed run takes its random states from the checkpoint); None
            leaves every generator as it is, so a script that seeded itself keeps its stream.
        compile: `True`, or a dict of `torch.compile` options, compiles the model in place.
        progress_bar: the default tqdm bar; False switches it off, an instance replaces it.
        logger: the default TensorBoard and CSV loggers; False or an instance, likewise.
        checkpoint: the default last-state `ModelCheckpoint`; False or an instance, likewise.
        nan_policy: `"raise"` on a NaN/inf loss, or `"skip"` the batch (one sync a batch).
        hparams: the hyperparameters the loggers record; by default the constructor's
            arguments.
        log_grad_norm: log `train/grad_norm` at log steps even without clipping.
        strategy: `"auto"`, `"ddp"`, `"fsdp"` or a `Distributed`; torchrun sets the ranks.
        val_check_interval: an int validates every N optimizer steps, counted across epochs
            (streams too); a float in (0, 1] at that fraction of each epoch; None: at epoch
            ends. Monitor-driven callbacks act on every validation.
        check_val_every_n_epoch: validate at the end of every N-th epoch (None: never).
        num_sanity_val_steps: validation batches run before training, so a broken
            `validation_step` fails in seconds; they change nothing of the run (0: none).
        max_time: a wall-clock budget for this process's training (seconds,
            `"DD:HH:MM:SS"` or a `timedelta`); once spent, training stops at the next step
            boundary with a checkpoint to resume from.

    Example:
        >>> trainer = Trainer(model, optimizer=torch.optim.AdamW(model.parameters()),
        ...                   loss_fn=nn.CrossEntropyLoss(), train_loader=train_dl,
        ...                   val_loader=val_dl, max_epochs=10, run_dir="runs/demo")
        >>> history = trainer.fit()
    """

    automatic_optimization: bool = True
    """False: `training_step` owns the update through `self.backward` and `self.step`."""
    log_loss_as: str | None = "train/loss"
    """The name the loss a training step returns is logged under; None logs it nowhere."""

    def __init__(
        self,
        model: nn.Module,
        *,
        optimizer: torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] | None = None,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        train_loader: Iterable[Any] | None = None,
        val_loader: Iterable[Any] | Mapping[str, Iterable[Any]] | None = None,
        scheduler: Any = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
        metrics: Mapping[str, Any] | None = None,
        max_epochs: int | None = None,
        max_steps: int | None = None,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        overfit_batches: int | float = 0,
        fast_dev_run: bool | int = False,
        precision: str = "32",
        device: str | torch.device = "auto",
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
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
        val_check_interval: int | float | None = None,
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int = DEFAULT_SANITY_VAL_STEPS,
        max_time: float | str | timedelta | None = None,
    ) -> None:
        # First, while the only locals are the arguments: they give the default hyperparameters.
        self.hparams = dict(hparams) if hparams is not None else default_hparams(locals())
        self.limits = RunLimits.of(
            limit_train_batches, limit_val_batches, overfit_batches, fast_dev_run
        )
        self.max_epochs, self.max_steps = self.limits.when_to_stop(max_epochs, max_steps)
        check_loop_arguments(
            model, self.max_epochs, self.max_steps, accumulate_grad_batches, log_every_n_steps,
            gradient_clip_val, nan_policy,
        )
        self.nan_policy = nan_policy
        self.distributed = as_distributed(strategy, nan_policy)
        self.device = self.distributed.setup(device)  # joins the process group under torchrun
        self.precision = Precision(precision, self.device)
        self.model = self._place_model(model, compile)
        self.loss_fn = loss_fn
        # Made resumable and split between ranks once: readers before fit see it as it runs.
        train_loader = self.limits.training_loader(check_loader(train_loader, "train_loader"))
        self._data = DataPosition.of(train_loader, self.distributed, self.device.type == "cuda")
        self._data.limit_to(self.limits.train_batches(self._data.loader_length))
        val_loader = evaluation_loader(check_val_loader(val_loader), self.distributed)
        self.val_loader = self.limits.validation_loader(val_loader)  # None: limit_val_batches=0
        self.metric_fns = metrics_on_device(metrics, self.device)
        setting = self.limits.setting  # a dev run validates once and runs no sanity pass
        self.schedule = LoopSchedule(
            setting("val_check_interval", val_check_interval),
            setting("check_val_every_n_epoch", check_val_every_n_epoch),
            setting("num_sanity_val_steps", num_sanity_val_steps), self._data.loader_length,
        )  # fmt: skip
        check_loss_fn(loss_fn, self._uses_default_steps())
        self.state = TrainState(window=accumulate_grad_batches)
        self._logs = LogBook(log_every_n_steps, self.device)
        self._epoch_validation: dict[str, float] = {}  # this epoch's latest validation, for
        # its record
        self.optimization = Optimization(
            self.model, self.precision, self.state, self._logs, self.sharding,
            self._before_optimizer_step, scheduler=scheduler, clip_val=gradient_clip_val,
            clip_algorithm=gradient_clip_algorithm, scheduler_interval=scheduler_interval,
            scheduler_monitor=scheduler_monitor, log_grad_norm=log_grad_norm,
        )  # fmt: skip
        if optimizer is not None:
            self.optimization.configure(optimizer)
        # The run's folders, its checkpoints and the queue that finishes its saves.
        self.run_files = RunFiles(Path(run_dir or _default_run_dir()), self.limits.writes_files)
        self.callbacks = CallbackList(assemble_callbacks(
            with_timer(callbacks, max_time), progress_bar, logger, checkpoint,
            self.is_global_zero, writes_files=self.limits.writes_files,
        ))  # fmt: skip
        check_monitored_names(self.callbacks, self.optimization, self.val_loader, self.metric_fns)
        self.seed = seed
        self.stage: str | None = None  # "train", "validate", "test", "predict" while running
        self._preemption = PreemptionWatch()

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
    def run_dir(self) -> Path:
        """The folder of this run's family: each run from scratch gets a `version_N` in it."""
        return self.run_files.run_dir

    @property
    def log_dir(self) -> Path | None:
        """This run's folder, `run_dir/version_N`: chosen when `fit` starts, None before."""
        return self.run_files.log_dir

    @property
    def checkpoint_dir(self) -> Path | None:
        """Where this run's checkpoints live: `log_dir/checkpoints` (None before `fit`)."""
        return self.run_files.checkpoint_dir

    @property
    def is_global_zero(self) -> bool:
        """True on the process that writes logs, progress and checkpoints (rank 0, or alone)."""
        return self.distributed.is_global_zero

    @property
    def last_batch_size(self) -> int:
        """Samples in the batch being run: the weight of what its step logs."""
        return self._logs.batch_size

    @property
    def samples_in_epoch(self) -> int:
        """Training samples this process has run in the current epoch (since it started)."""
        return self._logs.samples_in_epoch

    @property
    def optimizers(self) -> Any:
        """The optimizers: a list, or a dict of named ones."""
        return self.optimization.optimizers

    @property
    def schedulers(self) -> Any:
        """The schedulers, shaped like `optimizers` (None where an optimizer has none)."""
        return self.optimization.schedulers

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer when there is exactly one, else None."""
        return self.optimization.optimizer

    @property
    def scheduler(self) -> Any:
        """The only optimizer's scheduler, or None."""
        return self.optimization.scheduler

    @property
    def accumulate_grad_batches(self) -> int:
        """Batches per optimizer step."""
        return self.state.window

    @property
    def log_every_n_steps(self) -> int:
        """How often, in optimizer steps, step figures go to the loggers."""
        return self._logs.log_every_n_steps

    @property
    def train_loader(self) -> Iterable[Any] | None:
        """The training loader as it runs: made resumable and, on several ranks, split."""
        return self._data.loader

    @property
    def num_train_batches(self) -> int | None:
        """Batches per training epoch, or None for a loader without a length."""
        return self._data.loader_length

    # ------------------------------------------------------------------------- override points
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | dict[str, Any]:
        """Compute the loss of one batch of `(inputs, targets)`; override for other batches."""
        inputs, targets = inputs_and_targets(batch, "training_step")
        return self.loss_fn(self.model(inputs), targets)

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor | dict[str, Any]:
        """Return the loss and every `metrics` entry for one batch of `(inputs, targets)`."""
        inputs, targets = inputs_and_targets(batch, "validation_step")
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

    def state_dict(self) -> dict[str, Any]:
        """A subclass's own resumable state (tensors and plain data), saved in checkpoints.

        Override it with `load_state_dict` to keep what a step carries between batches,
        such as the hidden state of truncated backprop through time; the default has none.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what `state_dict` returned, when a run resumes from a checkpoint."""

    def log(
        self, name: str, value: torch.Tensor | float, batch_size: int | None = None
    ) -> None:
        """Record a scalar; it stays on the device until a log step or epoch end reads it.

        Inside a step the value joins the epoch mean weighted by `batch_size`, which by
        default is the length of the batch's first tensor (dimension 0, so pass it for
        `[seq, batch]` tensors); outside a step it is a figure of its own.
        """
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(
                    f"self.log({name!r}, ...) needs a scalar, got a tensor of shape "
                    f"{tuple(value.shape)}; reduce it first, e.g. with .mean()."
                )
            value = value.detach()
        if not self._logs.add(name, value, batch_size):  # outside a batch: a figure of its own
            self.state.metrics[name] = float(value)

    # -------------------------------------------------------------------------------- entry points
    def fit(self, ckpt_path: str | Path | None = None) -> list[dict[str, float]]:
        """Train until `max_epochs` or `max_steps`; `ckpt_path` resumes a saved run.

        Returns one record per epoch: `epoch`, the epoch means of training figures such as
        `train/loss`, the figures of the epoch's last validation (at its end, or inside it
        with `val_check_interval`) and the learning rate. The run's folder
        (`log_dir`) is chosen here: a new `run_dir/version_N`, or the one `ckpt_path` continues.

        Raises:
            TrainingInterrupted: on SIGINT/SIGTERM, once a checkpoint to resume from is saved.
        """
        if self.train_loader is None:
            raise ValueError("fit() needs a train_loader: pass train_loader=... to Trainer.")
        if not self.optimizers:
            self.optimization.configure(*split_optimization(self.configure_optimizers()))
        check_optimization_mode(self)
        self._data.check_same_length(self.distributed, self.accumulate_grad_batches)
        found = self.run_files.start(ckpt_path, self.distributed)
        if found is not None:
            checkpoint = restore_run(self, self._data, self._logs, *found)
            self.callbacks.call("on_load_checkpoint", self, checkpoint)
        if self.seed is not None and self.state.is_fresh_run:
            seed_everything(self.seed)  # a run from scratch; a resumed one has its own states
        self.state.should_stop = False  # a stop asked of an earlier fit() is done with
        history: list[dict[str, float]] = []
        with _kept_module_modes(self.model), self._preemption, self._in_stage("train"):
            if not self.model.training:
                self.model.train()
            try:
                self.callbacks.call("on_fit_start", self)
                self._run_sanity_check()
                while not self._is_finished():
                    history.append(self._run_train_epoch())
                self.callbacks.call("on_train_end", self)
                if history and not self.state.is_validated and self.val_loader is not None:
                    figures = self._run_validation(self.val_loader)  # figures where it ended
                    self._send_to_loggers(figures)
                    history[-1] |= figures
                self.distributed.run_on_zero("save checkpoints", self.run_files.writes.wait)
                self.callbacks.call("on_fit_end", self)
            except BaseException as exception:
                self.run_files.writes.wait(raise_failures=False)  # the saves that did succeed land
                self.distributed.report_failure(exception)
                self.callbacks.call("on_exception", self, exception)
                raise
            finally:
                val_loaders = (loader for _, loader in named_loaders(self.val_loader))
                stop_persistent_workers(self.train_loader, *val_loaders)
        return history

    def validate(
        self,
        loader: Iterable[Any] | Mapping[str, Iterable[Any]] | None = None,
        ckpt_path: str | Path | None = None,
    ) -> dict[str, float]:
        """Average the loss and metrics over `loader` (the `val_loader` by default); a dict
        of named loaders gives each loader's figures, `val/<name>/loss`, ..."""
        loader = check_val_loader(loader, "loader") if loader is not None else self.val_loader
        if loader is None:
            raise ValueError("validate() needs a loader: pass one, or val_loader=... to Trainer.")
        self.load_weights(ckpt_path)
        return self._run_validation(loader)

    def test(
        self, loader: Iterable[Any], ckpt_path: str | Path | None = None
    ) -> dict[str, float]:
        """Average the loss and metrics over `loader`, named `test/...`."""
        self.load_weights(ckpt_path)
        with self._in_stage("test"):
            self.callbacks.call("on_test_start", self)
            figures = self._run_eval_loop(loader, "test")
            self.callbacks.call("on_test_end", self, figures)
        return figures

    def predict(self, loader: Iterable[Any], ckpt_path: str | Path | None = None) -> list[Any]:
        """The outputs of `predict_step` for every batch of `loader`, in order."""
        self.load_weights(ckpt_path)
        with self._in_stage("predict"):
            return self._run_eval_loop(loader, "predict")

    # ------------------------------------------------------------------------------------ the loop
    def _run_train_epoch(self) -> dict[str, float]:
        self.callbacks.call("on_train_epoch_start", self)
        first = self.state.batches_in_epoch
        self._logs.start_epoch(is_resumed=first > 0)
        is_exhausted = True
        batches = batches_on_device(
            self._data.batches(self.state.epoch, first), self.device, self.precision.input_dtype
        )
        # Closed however the epoch ends, so a loader's workers stop now, not when a kept
        # traceback or the cycle collector lets go of its iterator.
        with contextlib.closing(batches):
            for batch_idx, batch in enumerate(batches, start=first):
                self._logs.open_train_batch(batch)
                self.callbacks.call("on_train_batch_start", self, batch, batch_idx)
                outputs = self._run_train_batch(batch, batch_idx)
                if self.schedule.validates_mid_epoch and self._is_mid_epoch_validation_due():
                    self._validate_mid_epoch(batch)
                self.callbacks.call("on_train_batch_end", self, outputs, batch, batch_idx)
                self._logs.close_batch()
                should_stop, signum = self._shared_decisions()
                if should_stop or self._is_step_limit_reached():
                    self.state.should_stop = should_stop
                    is_exhausted = self.state.are_epoch_batches_done(self._data.length)
                    if is_exhausted:  # the end-of-epoch draws a sampler makes past its last one
                        next(batches, None)
                    break
                if signum:
                    save_and_exit(self, signum)
        if is_exhausted:
            self._finish_epoch()
        return self._end_train_epoch()

    def _run_train_batch(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        self.state.count_batch()
        is_window_end = self.state.is_window_end(self._data.length)
        owns_update = not self.automatic_optimization
        # Under DDP, micro-steps inside an accumulation window skip the gradient all-reduce.
        with self.sharding.no_sync(is_window_end):
            with self.precision.autocast():
                outputs = as_step_outputs(self._training_step(batch, batch_idx), owns_update)
            num_items = outputs.get("num_items")  # what the loss averages, when not samples
            self._logs.count_samples(outputs.pop("batch_size", None), num_items)
            loss = outputs.get("loss")
            # "skip" pays one host sync per batch to keep a non-finite loss out of the weights.
            is_used = self.nan_policy != "skip" or is_finite_or_skipped(loss, self.state)
            if owns_update:
                pass  # the step ran its own backward passes and steps
            elif is_used:
                self.optimization.accumulate(loss, num_items)  # weighed by its items
            else:  # other ranks still expect this one in the gradient all-reduce
                self.optimization.leave_out(num_items)
        if isinstance(loss, torch.Tensor):
            outputs["loss"] = loss = loss.detach()
            if is_used and self.log_loss_as:
                self._logs.add(self.log_loss_as, loss)
        if owns_update and is_window_end:  # no gradient outlives its window
            self.optimization.zero_grad()  # (a checkpoint holds none)
        elif is_window_end:
            self.optimization.step(self.optimizer)
        if owns_update or is_window_end:
            self.optimization.end_batch()  # the loss scale moves once all optimizers stepped
            self._count_step()
        return outputs

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate `loss` in a step that owns the update (`automatic_optimization =
        False`): scaled for "16-mixed" and divided by `accumulate_grad_batches`; under DDP
        gradients are averaged over the ranks when `step` runs."""
        self.optimization.backward(loss)

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        closure: Callable[[], torch.Tensor] | None = None,
    ) -> bool:
        """Update with `optimizer` in a step that owns the update: what the loop does for one.

        On the batch that ends an accumulation window (every batch when there is none):
        average gradients over DDP ranks, unscale, clip, `on_before_optimizer_step`, step
        (through the GradScaler), zero the gradients and step this optimizer's scheduler
        when `scheduler_interval="step"`. Inside a window it does nothing. Returns whether
        the optimizer stepped (False inside a window or when the GradScaler skipped it).
        `closure` (LBFGS and the like) recomputes the loss: it calls `self.backward`.
        """
        if not self.state.is_window_end(self._data.length):
            return False
        return self.optimization.sync_and_step(optimizer, closure)

    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.callbacks.call("on_before_optimizer_step", self, optimizer)

    def _count_step(self) -> None:
        """One more optimizer step (a batch, when the step owns the update); log when due."""
        self.state.global_step += 1
        if self._logs.is_log_step(self.state.global_step):
            self._log_step_figures()

    def _finish_epoch(self) -> None:
        """Mark the epoch's batches as all consumed (an empty loader is an error)."""
        if self.state.batches_in_epoch == 0:
            raise ValueError(
                "train_loader produced no batches; check the data set is not empty and that "
                "batch_size with drop_last=True does not exceed its length."
            )
        self.state.finish_epoch()

    def _end_train_epoch(self) -> dict[str, float]:
        """The epoch's figures; only a finished epoch validates, steps and ends.

        An epoch cut short (`max_steps`, `should_stop` mid-epoch) is ended by the run that
        resumes it, so an epoch scheduler, early stopping and ranked checkpoints count
        each epoch once, whether or not the run stopped inside it.
        """
        train_figures = self.distributed.reduce_means(self._logs.train)
        self._check_finite_loss(train_figures.get(self.log_loss_as or "train/loss"))
        self.state.metrics.update(train_figures)
        record = {"epoch": float(self.state.epoch), **train_figures, **self._epoch_validation}
        self._epoch_validation = {}
        if not self.state.are_epoch_batches_done(self._data.length):
            return record
        validates = self.val_loader is not None and not self.state.is_validated and (
            self.schedule.is_due_at_epoch_end(self.state)
        )
        if validates:
            record |= self._validate_in_training()
        rates = self.optimization.learning_rates()
        record |= rates
        self.state.metrics.update(rates)
        # A plateau scheduler reads each validation once: here when this epoch end validated.
        is_plateau_due = validates or self.val_loader is None
        self.optimization.step_schedulers_on_epoch(self.state.metrics, is_plateau_due)
        epoch_figures = {f"{name}_epoch": value for name, value in train_figures.items()}
        just_logged = self._logs.was_logged_at(self.state.global_step)
        epoch_figures |= {
            name: value
            for name, value in record.items()
            if name not in train_figures and not (just_logged and name in rates)
        }
        self._send_to_loggers(epoch_figures)
        self.callbacks.call("on_train_epoch_end", self)
        self.state.should_stop = self.distributed.agree(self.state.should_stop, 0, is_due=True)[0]
        self._epoch_validation = {}
        self.state.start_next_epoch()
        return record

    def _is_mid_epoch_validation_due(self) -> bool:
        """`val_check_interval` asks for a validation at the step just taken, inside the
        epoch (its last step validates at the epoch's end); int compares, no sync."""
        state, length = self.state, self._data.length
        return (
            self.val_loader is not None
            and state.is_window_end(length)
            and self.schedule.is_due(state)
            and not state.is_validated
            and not state.are_epoch_batches_done(length)
        )

    def _validate_mid_epoch(self, batch: Any) -> None:
        """Validate at this step boundary, before `on_train_batch_end`, so every checkpoint of
        the step holds it; the figures are logged at this step, a plateau scheduler steps."""
        figures = self._validate_in_training()
        self.optimization.step_plateau_schedulers(self.state.metrics)
        self._send_to_loggers(figures)
        self._logs.open_train_batch(batch)  # the batch's own hooks log into training again

    def _validate_in_training(self) -> dict[str, float]:
        """A validation the schedule asked for: monitor-driven callbacks act on it
        (`schedule.is_validating`), and the state records its step once it is done."""
        with self.schedule.validating():
            figures = self._run_validation(self.val_loader)
        self.state.validated_step = self.state.global_step
        self._epoch_validation = figures
        return figures

    def _run_sanity_check(self) -> None:
        """Run `num_sanity_val_steps` validation batches before training, so a broken
        `validation_step` fails in seconds. It changes nothing of the run: no hooks, no
        figures kept, stateful metrics reset, every random generator put back."""
        count = self.schedule.num_sanity_val_steps
        if self.val_loader is None or count == 0:
            return
        generators = capture_rng_states()  # a loader's iterator draws its seed from torch's
        with self._in_stage("validate"):
            for loader in each_loader(self.val_loader):
                shard = evaluation_loader(loader, self.distributed)
                self._run_eval_loop(first_batches(shard, count), "validate")
                stop_persistent_workers(shard)  # the first validation starts them as without
        restore_rng_states(generators)

    def _run_validation(
        self, loader: Iterable[Any] | Mapping[str, Iterable[Any]]
    ) -> dict[str, float]:
        """Validate on `loader`, or on each loader of a dict, one pass each, its figures
        named after it; the hooks fire once around them all."""
        with self._in_stage("validate"):
            self.callbacks.call("on_validation_start", self)
            figures: dict[str, float] = {}
            for name, one in named_loaders(loader):
                figures |= named_figures(self._run_eval_loop(one, "validate"), name)
            self.state.metrics.update(figures)
            self.callbacks.call("on_validation_end", self, figures)
        return figures

    @contextlib.contextmanager
    def _in_stage(self, stage: str) -> Iterator[None]:
        """`self.stage` is `stage` inside, and what it was before afterwards."""
        previous, self.stage = self.stage, stage
        try:
            yield
        finally:
            self.stage = previous

    def _run_eval_loop(self, loader: Iterable[Any], stage: str) -> Any:
        """Run validation, test or predict over `loader` in eval mode without autograd;
        `stage` is what `self.stage` says ("validate", "test" or "predict")."""
        step = {"validate": self.validation_step, "test": self.test_step,
                "predict": self.predict_step}[stage]  # fmt: skip
        prefix = _FIGURE_PREFIX.get(stage, stage)
        predictions: list[Any] = []
        if stage != "predict":  # predictions stay whole and in order on every rank
            loader = evaluation_loader(loader, self.distributed)
        self._logs.start_evaluation()
        with _kept_module_modes(self.model), self.sharding.without_autograd():
            self.model.eval()
            batches = batches_on_device(
                self.limits.first_batches(loader, stage), self.device, self.precision.input_dtype
            )  # limit_val_batches, overfit_batches, fast_dev_run: the first batches only
            with contextlib.closing(batches):  # its workers stop even when a step raises
                for batch_idx, batch in enumerate(batches):
                    self._logs.open_eval_batch(batch)
                    with self.precision.autocast():
                        outputs = step(batch, batch_idx)
                    if stage == "predict":
                        predictions.append(outputs)
                    else:
                        figures = dict(as_eval_outputs(outputs, prefix))
                        size = figures.pop("batch_size", None)  # the step knows it better
                        for name, value in figures.items():
                            self.log(f"{prefix}/{name}", value, batch_size=size)
                    self._logs.close_batch()
        if stage == "predict":
            return predictions
        figures = self.distributed.reduce_means(self._logs.evaluation)
        for name, metric in self.metric_fns.items():
            if is_stateful_metric(metric):
                figures[f"{prefix}/{name}"] = float(metric.compute())
                metric.reset()
        return figures

    # ----------------------------------------------------------------------- figures and limits
    def _log_step_figures(self) -> None:
        """Read this step's logged values from the device and hand them to loggers."""
        figures = self._logs.read_step(self.state.global_step)
        self._check_finite_loss(figures.get(self.log_loss_as or "train/loss"))
        figures |= self.optimization.learning_rates()
        self.state.metrics.update(figures)
        self._send_to_loggers(figures)

    def _send_to_loggers(self, figures: dict[str, float]) -> None:
        """`on_log`, on rank 0 only: one process writes what all of them do."""
        self.run_files.writes.raise_failures()  # a save that failed in the background stops here
        if self.is_global_zero:
            self.callbacks.call("on_log", self, figures, self.state.global_step)

    def _check_finite_loss(self, loss: float | None) -> None:
        """Raise for a NaN/inf loss; checked where the loss is read anyway, so it costs no sync."""
        if loss is None or math.isfinite(loss) or self.nan_policy != "raise":
            self.state.last_finite_step = self.state.global_step
            return
        raise NonFiniteLossError(
            non_finite_loss_message(loss, self.state, self.state.last_finite_step)
        )

    def _shared_decisions(self) -> tuple[bool, int]:
        """`should_stop` and a preemption signal as every rank acts on them.

        Both count only at an optimizer-step boundary, so a stop never strands gradients.
        Several ranks agree at log steps (or every `agree_every_n_steps`) and at the epoch's
        last step, not at every batch.
        """
        is_boundary = self.state.is_window_end(self._data.length)
        signum = (self._preemption.received or 0) if is_boundary else 0
        interval = self.distributed.agree_every_n_steps or self.log_every_n_steps
        is_due = is_boundary and (
            self.state.global_step % interval == 0
            or self.state.are_epoch_batches_done(self._data.length)
        )
        should_stop = self.state.should_stop and is_boundary  # a window's gradients step first
        return self.distributed.agree(should_stop, signum, is_due=is_due)

    def _is_step_limit_reached(self) -> bool:
        return self.max_steps is not None and self.state.global_step >= self.max_steps

    def _is_finished(self) -> bool:
        out_of_epochs = self.max_epochs is not None and self.state.epoch >= self.max_epochs
        return self.state.should_stop or out_of_epochs or self._is_step_limit_reached()

    # ------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: str | Path, wait: bool = True) -> Path:
        """Save everything needed to continue this run to `path`, atomically.

        On several ranks, call it on every rank: it gathers their states, rank 0 writes.
        `wait=False` returns once the bytes are written and leaves the `fsync` and rename
        to a background thread (what `ModelCheckpoint` does); `fit` waits for them.
        """
        self._check_finite_loss(self._logs.train.mean(self.log_loss_as or "train/loss"))
        checkpoint = run_checkpoint(self, self._data, self._logs)
        self.callbacks.call("on_save_checkpoint", self, checkpoint)
        # Rank 0 writes; every rank returns once the bytes are written (and, with `wait`,
        # once the file is in place).
        save = self.run_files.save
        self.distributed.run_on_zero("save a checkpoint", save, checkpoint, path, wait)
        return Path(path)

    def export_weights(self, path: str | Path) -> Path:
        """Write the model's weights alone as a `.safetensors` file, for inference and sharing.

        On several ranks, call it on every rank (FSDP gathers the weights); rank 0 writes.
        """
        weights = self.sharding.model_state_dict()
        self.distributed.run_on_zero("export weights", self.run_files.export, weights, path)
        return Path(path)

    def load_weights(self, ckpt_path: str | Path | None) -> None:
        """Load the model weights of `"last"`, `"best"` or a checkpoint file; None loads none.

        What `validate`, `test` and `predict` do with their `ckpt_path`; call it to start from
        a trained run's weights (as `trainer lr-find --ckpt_path` does).
        """
        if ckpt_path is None:
            return
        path, checkpoint = self.run_files.find(ckpt_path)
        self.sharding.load_model_state(checkpoint["model"], path)

    # -------------------------------------------------------------------------- set-up helpers
    def _place_model(self, model: nn.Module, compile: bool | dict[str, Any]) -> nn.Module:
        """Move, compile, then give the model to `self.sharding` (FSDP shards it, DDP wraps
        the step): the model as it will train."""
        model = self.precision.convert_module(model.to(self.device))
        if compile is not False:  # in place: state_dict names stay those of the plain model
            model.compile(**compile_options(compile))
        self.sharding = self.distributed.shard(model)  # FSDP: sharded in place
        # DDP syncs gradients in the backward of the step it runs: the loop's single backward.
        # A step that owns its update averages them in `step` instead.
        self._training_step = (
            self.sharding.wrap_step(self.training_step)
            if self.automatic_optimization
            else self.training_step
        )
        return model

    def _uses_default_steps(self) -> bool:
        """True when a default step will run: it calls `loss_fn`."""
        return type(self).training_step is Trainer.training_step or (
            self.val_loader is not None and type(self).validation_step is Trainer.validation_step
        )


def seed_everything(seed: int) -> None:
    """Seed python's `random`, numpy and torch (all devices) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------- private helpers
_FIGURE_PREFIX = {"validate": "val"}  # figures of a stage are named "<prefix>/<name>"


def _default_run_dir() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


@contextlib.contextmanager
def _kept_module_modes(model: nn.Module) -> Iterator[None]:
    """Restore each submodule's own train/eval mode afterwards (a frozen backbone stays eval)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
