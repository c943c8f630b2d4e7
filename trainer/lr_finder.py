"""The learning-rate range test: sweep the learning rate upwards, watch the loss, suggest one.

Training runs for `num_steps` batches while the learning rate grows exponentially from
`min_lr` to `max_lr` (Leslie Smith, "Cyclical Learning Rates", 2017). The loss first
barely moves, then falls fastest, then blows up; the suggestion is where it falls fastest.
The sweep really trains, through the loop's own verbs (`Trainer.backward` and
`Trainer.step`, as a step that owns its update calls them: the window, DDP averaging,
unscaling, clipping and schedulers included), so everything it changes is put back
afterwards: the model's weights and buffers, the optimizers' and schedulers' states and
learning rates, the grad scaler, the run state, every random generator and the trainer's
figures. A `fit` after `find_lr` is the same as a `fit` without it. matplotlib, for the
plot only, is imported when `plot` is called.
"""

from __future__ import annotations

import copy
import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.checkpoint import capture_rng_states, restore_rng_states
from trainer.checks import as_step_outputs, split_optimization
from trainer.device import batches_on_device

if TYPE_CHECKING:
    from trainer.trainer import Trainer

__all__ = ["LRFinderResult", "find_lr"]


@dataclass
class LRFinderResult:
    """What the sweep saw: one learning rate and loss per step, and the suggested rate.

    `losses` are smoothed with an exponential moving average (the raw ones are noisy);
    `suggestion` is None when the loss never clearly fell, e.g. when the range is too narrow.
    """

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    suggestion: float | None

    def to_csv(self, path: str | Path) -> Path:
        """Write `lr,loss,raw_loss` rows, one per step, for a spreadsheet or another plot."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["lr", "loss", "raw_loss"])
            writer.writerows(zip(self.lrs, self.losses, self.raw_losses, strict=True))
        return path

    def plot(self, path: str | Path) -> Path:
        """Save the loss-vs-learning-rate curve, log-scaled, with the suggestion marked."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as error:
            raise ImportError(
                "plotting the LR finder needs matplotlib: pip install 'steadytrain[plot]'"
            ) from error
        figure = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(figure)  # a canvas of its own: pyplot's global backend is untouched
        axes = figure.add_subplot()
        axes.plot(self.lrs, self.raw_losses, color="0.8", linewidth=1, label="loss")
        axes.plot(self.lrs, self.losses, color="C0", label="smoothed loss")
        if self.suggestion is not None:
            index = self.lrs.index(self.suggestion)
            axes.plot(
                [self.suggestion],
                [self.losses[index]],
                "o",
                color="C3",
                label=f"suggested lr = {self.suggestion:.2g}",
            )
        finite = [loss for loss in self.losses if math.isfinite(loss)]
        if finite:  # the blow-up at the end would flatten the interesting part
            low, start = min(finite), finite[0]
            margin = 0.1 * (start - low) or 0.1 * abs(start) or 0.1
            axes.set_ylim(low - margin, start + 3 * margin)
        axes.set_xscale("log")
        axes.set_xlabel("learning rate")
        axes.set_ylabel("training loss")
        axes.set_title("learning-rate range test")
        axes.legend()
        figure.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
        return path


def find_lr(
    trainer: Trainer,
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    num_steps: int = 100,
    smoothing: float = 0.05,
    diverge_threshold: float = 4.0,
) -> LRFinderResult:
    """Run the learning-rate range test on `trainer`'s model, data and optimizer.

    Each of `num_steps` training batches runs the trainer's own `training_step` at a
    learning rate growing exponentially from `min_lr` to `max_lr`, for every param group.
    The sweep ends early once the smoothed loss exceeds `diverge_threshold` times its best.
    Of the callbacks only `on_before_optimizer_step` runs, as part of each update; nothing
    is logged or checkpointed. Afterwards the model, optimizer, scheduler, grad scaler, run
    state, random generators and figures are exactly as before.

    Example:
        >>> result = find_lr(trainer, num_steps=100)
        >>> result.plot("runs/digits/lr_find.png")
        >>> for group in trainer.optimizer.param_groups:
        ...     group["lr"] = result.suggestion
    """
    _check_arguments(min_lr, max_lr, num_steps, smoothing, diverge_threshold)
    if trainer.train_loader is None:
        raise ValueError("find_lr needs a train_loader: pass train_loader=... to Trainer.")
    if trainer.optimizer is None:
        trainer.optimization.configure(*split_optimization(trainer.configure_optimizers()))
    saved = _Snapshot(trainer)
    try:
        lrs, raw_losses = _sweep(trainer, min_lr, max_lr, num_steps, smoothing, diverge_threshold)
    finally:
        saved.restore(trainer)
    losses = _smooth(raw_losses, smoothing)
    return LRFinderResult(lrs, losses, raw_losses, _steepest_descent(lrs, losses))


def _check_arguments(
    min_lr: float, max_lr: float, num_steps: int, smoothing: float, diverge_threshold: float
) -> None:
    if not 0 < min_lr < max_lr:
        raise ValueError(
            f"find_lr needs 0 < min_lr < max_lr, got min_lr={min_lr}, max_lr={max_lr}; "
            "the usual range is min_lr=1e-7, max_lr=10."
        )
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an integer >= 2, got {num_steps!r}; try 100.")
    if not 0 < smoothing <= 1:
        raise ValueError(f"smoothing must lie in (0, 1], got {smoothing}; 0.05 is usual.")
    if not diverge_threshold > 1:
        raise ValueError(f"diverge_threshold must be > 1, got {diverge_threshold}; try 4.")


class _Snapshot:
    """Copies of everything the sweep changes, and the verb that puts them back."""

    def __init__(self, trainer: Trainer) -> None:
        self.model = copy.deepcopy(trainer.model.state_dict())
        self.optimizer = copy.deepcopy(trainer.optimizer.state_dict())
        scheduler = trainer.scheduler
        self.scheduler = copy.deepcopy(scheduler.state_dict()) if scheduler else None
        self.precision = copy.deepcopy(trainer.precision.state_dict())
        self.rng = capture_rng_states()
        self.state = copy.deepcopy(trainer.state.state_dict())
        self.modes = [(module, module.training) for module in trainer.model.modules()]

    def restore(self, trainer: Trainer) -> None:
        trainer.model.load_state_dict(self.model)
        trainer.optimizer.load_state_dict(self.optimizer)
        trainer.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            trainer.scheduler.load_state_dict(self.scheduler)
        trainer.precision.load_state_dict(self.precision)
        restore_rng_states(self.rng)
        trainer.state.load_state_dict(self.state)  # the figures (metrics) with it
        for module, training in self.modes:
            module.training = training


def _sweep(
    trainer: Trainer,
    min_lr: float,
    max_lr: float,
    num_steps: int,
    smoothing: float,
    diverge_threshold: float,
) -> tuple[list[float], list[float]]:
    """Train one batch per learning rate; stop when the smoothed loss has clearly blown up."""
    model, optimizer, state = trainer.model, trainer.optimizer, trainer.state
    if not model.training:
        model.train()
    optimizer.zero_grad(set_to_none=True)
    state.batches_in_epoch = 0  # the sweep's windows start at its first batch
    lrs: list[float] = []
    losses: list[float] = []
    smoothed, best = 0.0, math.inf
    batches = batches_on_device(
        _endless(trainer.train_loader), trainer.device, trainer.precision.input_dtype
    )
    for step, batch in zip(range(num_steps), batches, strict=False):
        lr = min_lr * (max_lr / min_lr) ** (step / (num_steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        state.count_batch()
        with trainer.precision.autocast():
            loss = as_step_outputs(trainer.training_step(batch, step))["loss"]
        value = float(loss.detach())  # a host sync per step; a sweep is short
        lrs.append(lr)
        losses.append(value)
        if not math.isfinite(value):  # blown up: nothing to learn from stepping on it
            break
        # The verbs of a step that owns its update: the window, DDP averaging (the step
        # runs unwrapped), unscaling, clipping, the hook, the step and its scheduler.
        trainer.backward(loss)
        trainer.step(optimizer)
        trainer.optimization.end_batch()
        if state.are_epoch_batches_done(trainer.num_train_batches):
            state.batches_in_epoch = 0  # the loader starts over, and so do the windows
        smoothed = (1 - smoothing) * smoothed + smoothing * value
        debiased = smoothed / (1 - (1 - smoothing) ** (step + 1))
        if debiased > diverge_threshold * best:
            break
        best = min(best, debiased)
    return lrs, losses


def _endless(loader: Any) -> Iterator[Any]:
    """The loader's batches, epoch after epoch, for sweeps longer than one epoch."""
    while True:
        is_empty = True
        for batch in loader:
            is_empty = False
            yield batch
        if is_empty:
            raise ValueError("train_loader produced no batches; find_lr needs at least one.")


def _smooth(losses: list[float], smoothing: float) -> list[float]:
    """Exponential moving average, debiased so that the first points are not pulled to 0."""
    smoothed, average = [], 0.0
    for step, value in enumerate(losses):
        average = (1 - smoothing) * average + smoothing * value
        smoothed.append(average / (1 - (1 - smoothing) ** (step + 1)))
    return smoothed


def _steepest_descent(lrs: list[float], losses: list[float]) -> float | None:
    """Where the smoothed loss falls fastest per decade, capped at a tenth of its minimum's rate.

    Beyond the minimum the loss is blowing up, so the search stops there; a short sweep
    often falls fastest just before that edge, so a tenth of the rate at the minimum (the
    other common rule) caps it. A curve whose minimum comes within the first few steps has
    no descent to speak of.
    """
    finite = [index for index, loss in enumerate(losses) if math.isfinite(loss)]
    if len(finite) < 5:
        return None
    lowest = min(finite, key=lambda index: losses[index])
    if lowest < 3:
        return None
    slopes = [
        (losses[index + 1] - losses[index - 1])
        / (math.log10(lrs[index + 1]) - math.log10(lrs[index - 1]))
        for index in range(1, lowest)
    ]
    steepest = min(range(len(slopes)), key=slopes.__getitem__)
    if slopes[steepest] >= 0:
        return None
    cap = lrs[lowest] / 10
    return min(lrs[steepest + 1], max((lr for lr in lrs if lr <= cap), default=lrs[0]))
