"""The update path: building optimizers and schedulers, and every verb between a loss and
updated weights.

Users hand over objects or factories (`params -> Optimizer`, `optimizer -> scheduler`);
this module turns either into objects. `Optimization` then holds them with the settings of
the update and its verbs: backward (the loss divided by the accumulation window, once; the
automatic loop's micro-batches weighed by their items, see `trainer.accumulation`), step
with or without a closure (the window's gradients made its items' mean, unscaled through
`Precision` and clipped by norm or by value, `on_before_optimizer_step`, the step, zeroed
gradients, a skipped step counted), the grad-norm log, and when a scheduler steps: every
optimizer step, every epoch, or on a monitored metric for `ReduceLROnPlateau`. The
automatic loop, a step that owns its update (`Trainer.backward`, `Trainer.step`) and the
LR finder all call these same verbs; the grad scaler stays behind `Precision`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, get_args

import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from trainer.accumulation import Count, WindowItems
from trainer.callbacks.monitor import Monitor

if TYPE_CHECKING:
    from trainer.metrics import LogBook
    from trainer.precision import Precision
    from trainer.sharding import Sharding
    from trainer.state import TrainState

__all__ = [
    "CLIP_ALGORITHMS",
    "ClipAlgorithm",
    "Optimization",
    "Optimizers",
    "SchedulerInterval",
    "build_optimizer",
    "build_optimizers",
    "build_scheduler",
    "build_schedulers",
    "check_clip_algorithm",
    "is_plateau",
    "learning_rates",
    "named",
]

SchedulerInterval = Literal["epoch", "step"]
Optimizers: TypeAlias = "list[torch.optim.Optimizer] | dict[str, torch.optim.Optimizer]"
INTERVAL_CHOICES: tuple[str, ...] = get_args(SchedulerInterval)
ClipAlgorithm = Literal["norm", "value"]
CLIP_ALGORITHMS: tuple[str, ...] = get_args(ClipAlgorithm)


def check_clip_algorithm(algorithm: str) -> None:
    """`gradient_clip_algorithm` is one this module clips by."""
    if algorithm not in CLIP_ALGORITHMS:
        raise ValueError(
            f"gradient_clip_algorithm={algorithm!r} is not supported; use one of "
            f"{', '.join(repr(choice) for choice in CLIP_ALGORITHMS)} ('norm' clips the "
            "total gradient norm, 'value' each gradient element)."
        )


def build_optimizer(
    optimizer: torch.optim.Optimizer | Callable[[Iterable[nn.Parameter]], Any],
    model: nn.Module,
) -> torch.optim.Optimizer:
    """Return an optimizer over `model`'s parameters from an instance or a factory."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        if not callable(optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer or a callable params -> "
                f"Optimizer, got {type(optimizer).__name__}."
            )
        optimizer = optimizer(model.parameters())
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"the optimizer factory returned {type(optimizer).__name__}, "
                "not a torch.optim.Optimizer."
            )
    model_params = {id(param) for param in model.parameters()}
    optimizer_params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(id(param) in model_params for param in optimizer_params):
        raise ValueError(
            "the optimizer holds none of the model's parameters; build it from this model, "
            "e.g. torch.optim.AdamW(model.parameters()), or pass a factory such as "
            "functools.partial(torch.optim.AdamW, lr=1e-3)."
        )
    return optimizer


def build_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer, interval: str) -> Any:
    """Return a scheduler bound to `optimizer` from an instance, a factory or None."""
    if interval not in INTERVAL_CHOICES:
        raise ValueError(
            f"scheduler_interval={interval!r} is not supported; use one of "
            f"{', '.join(repr(choice) for choice in INTERVAL_CHOICES)}."
        )
    if scheduler is None:
        return None
    if not hasattr(scheduler, "step") and callable(scheduler):
        scheduler = scheduler(optimizer)
    if not callable(getattr(scheduler, "step", None)):
        raise TypeError(
            f"scheduler must be an LR scheduler or a callable optimizer -> scheduler, "
            f"got {type(scheduler).__name__}."
        )
    if getattr(scheduler, "optimizer", optimizer) is not optimizer:
        raise ValueError(
            "the scheduler was built for a different optimizer than the trainer's; pass a "
            "factory instead, e.g. functools.partial(torch.optim.lr_scheduler.StepLR, "
            "step_size=10)."
        )
    if isinstance(scheduler, ReduceLROnPlateau) and interval != "epoch":
        raise ValueError(
            "ReduceLROnPlateau steps on a validation metric, which exists once per epoch; "
            "use scheduler_interval='epoch'."
        )
    return scheduler


def is_plateau(scheduler: Any) -> bool:
    """True for schedulers that step on a metric value rather than on a count."""
    return isinstance(scheduler, ReduceLROnPlateau)


def learning_rates(optimizers: Any) -> dict[str, float]:
    """`{"lr": value}` for one optimizer of one param group; `lr/group0`, ... for several
    groups; `lr/NAME` (and `lr/NAME/group0`, ...) for several optimizers."""
    if isinstance(optimizers, torch.optim.Optimizer):
        optimizers = [optimizers]
    pairs = named(optimizers)
    rates = {}
    for name, optimizer in pairs:
        prefix = "lr" if len(pairs) == 1 else f"lr/{name}"
        groups = optimizer.param_groups
        if len(groups) == 1:
            rates[prefix] = float(groups[0]["lr"])
        else:
            rates |= {f"{prefix}/group{i}": float(group["lr"]) for i, group in enumerate(groups)}
    return rates


def build_optimizers(optimizer: Any, model: nn.Module) -> Any:
    """One optimizer, a list or a dict of named ones, as a list (of one) or a dict."""
    if isinstance(optimizer, Mapping):
        return {str(name): build_optimizer(each, model) for name, each in optimizer.items()}
    if isinstance(optimizer, (list, tuple)):
        return [build_optimizer(each, model) for each in optimizer]
    return [build_optimizer(optimizer, model)]


def named(collection: Any) -> list[tuple[str, Any]]:
    """`(name, item)` pairs of a dict, or of a list with its indices as names."""
    if isinstance(collection, Mapping):
        return list(collection.items())
    return [(str(index), item) for index, item in enumerate(collection)]


def build_schedulers(scheduler: Any, optimizers: Any, interval: str) -> Any:
    """Schedulers shaped like `optimizers` (None where an optimizer has none).

    A dict of schedulers is matched to a dict of optimizers by name and a list to a list by
    position; one scheduler factory serves every optimizer; one scheduler instance serves the
    optimizer it was built for.
    """
    pairs = named(optimizers)
    if isinstance(scheduler, Mapping):
        unknown = sorted(set(map(str, scheduler)) - {name for name, _ in pairs})
        if unknown or not isinstance(optimizers, Mapping):
            raise ValueError(
                f"scheduler names {unknown or sorted(map(str, scheduler))} match no optimizer; "
                f"name them as the optimizers are: {[name for name, _ in pairs]}."
            )
        chosen = {name: scheduler.get(name) for name, _ in pairs}
    elif isinstance(scheduler, (list, tuple)):
        if len(scheduler) != len(pairs):
            raise ValueError(
                f"{len(scheduler)} schedulers for {len(pairs)} optimizers; give one per "
                "optimizer (None where an optimizer has none)."
            )
        chosen = {name: each for (name, _), each in zip(pairs, scheduler, strict=True)}
    elif hasattr(scheduler, "step") and len(pairs) > 1:  # an instance: its own optimizer's
        chosen = {name: scheduler if scheduler.optimizer is opt else None for name, opt in pairs}
    else:
        chosen = {name: scheduler for name, _ in pairs}
    built = {name: build_scheduler(chosen[name], opt, interval) for name, opt in pairs}
    return built if isinstance(optimizers, Mapping) else list(built.values())


class Optimization:
    """The optimizers, their schedulers and the settings of the update, with its verbs.

    One object serves every way a run updates weights: the loop's automatic step, a
    `training_step` that owns its update through `Trainer.backward` and `Trainer.step`, and
    the LR finder. It reads the window and the batch count from the run's `TrainState`,
    counts skipped steps there, and writes the grad norm into the `LogBook`.

    Args:
        model: the model whose parameters the optimizers are built over.
        precision: the run's `Precision`: backward, unscale, step, update.
        state: the run's `TrainState`: the window, its end, skipped steps.
        logs: where the grad norm goes for the next log step.
        sharding: checks an optimizer fits the wrapped model; averages gradients for a
            step that owns its update.
        before_step: called with each optimizer just before it steps (the hook).
        scheduler: the constructor's scheduler argument, used when `configure` gets none.
        clip_val: the gradients' clipping threshold, None for no clipping.
        clip_algorithm: `"norm"` clips the total norm, `"value"` each element.
        scheduler_interval: `"epoch"` or `"step"`.
        scheduler_monitor: the metric `ReduceLROnPlateau` reads at an epoch's end.
        log_grad_norm: measure the grad norm at log steps even when clipping does not.
    """

    def __init__(
        self,
        model: nn.Module,
        precision: Precision,
        state: TrainState,
        logs: LogBook,
        sharding: Sharding,
        before_step: Callable[[torch.optim.Optimizer], None],
        *,
        scheduler: Any = None,
        clip_val: float | None = None,
        clip_algorithm: str = "norm",
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
        log_grad_norm: bool = False,
    ) -> None:
        check_clip_algorithm(clip_algorithm)
        self.model, self.precision, self.state, self.logs = model, precision, state, logs
        self.sharding, self.before_step = sharding, before_step
        self.clip_val, self.clip_algorithm = clip_val, clip_algorithm
        self.scheduler_interval, self.scheduler_monitor = scheduler_interval, scheduler_monitor
        self.log_grad_norm = log_grad_norm
        self.items = WindowItems(state.window, _world_size(sharding), sharding.device)
        self.optimizers: Any = []  # a list, or a dict of named optimizers
        self.schedulers: Any = []  # shaped like `optimizers`, None where one has none
        self._scheduler_arg = scheduler

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer when there is exactly one, else None."""
        pairs = named(self.optimizers)
        return pairs[0][1] if len(pairs) == 1 else None

    @property
    def scheduler(self) -> Any:
        """The only optimizer's scheduler (None without one, or with several optimizers)."""
        pairs = named(self.schedulers)
        return pairs[0][1] if len(pairs) == 1 else None

    def configure(self, optimizer: Any, scheduler: Any = None) -> None:
        """Build the optimizers (an instance, a factory, a list or dict of them) and their
        schedulers (`scheduler`, or else the one the trainer was given)."""
        optimizers = build_optimizers(optimizer, self.model)
        for _, each in named(optimizers):
            self.sharding.check_optimizer(each)
        chosen = scheduler if scheduler is not None else self._scheduler_arg
        self.schedulers = build_schedulers(chosen, optimizers, self.scheduler_interval)
        self.optimizers = optimizers

    # -------------------------------------------------------------------------------- verbs
    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate `loss` divided by the window (scaled under "16-mixed")."""
        window = self.state.window
        self.precision.backward(loss / window if window > 1 else loss)

    def accumulate(self, loss: torch.Tensor, num_items: Count | None) -> None:
        """Backpropagate one micro-batch of the automatic loop, weighed by its items (the
        `num_items` its step reported, else its batch size), so the window's step is one on
        all of the window's items."""
        is_reported = num_items is not None
        if self.items.weighs[is_reported]:
            items = num_items if is_reported else self.logs.batch_size
            weight = self.items.weight(items, is_reported)  # type: ignore[arg-type]
            if weight is not None:
                loss = loss * weight
        self.backward(loss)

    def leave_out(self, num_items: Count | None) -> None:
        """The automatic loop leaves a micro-batch out (a non-finite loss): it adds no items
        and no gradient, yet takes part in what the other ranks' batches all-reduce."""
        is_reported = num_items is not None
        if self.items.weighs[is_reported]:
            items = num_items if is_reported else self.logs.batch_size
            self.items.leave_out(items, is_reported)  # type: ignore[arg-type]
        self.sharding.contribute_no_gradient()

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        closure: Callable[[], torch.Tensor] | None = None,
    ) -> bool:
        """Update with `optimizer` at a window's end; return whether it stepped.

        The window's gradients are rescaled to the mean over its items (`WindowItems`; a
        short last window, whose loss was divided by the whole window, by `window / batches`
        when its counts are equal or unknown); they are unscaled and clipped (in each
        evaluation of `closure`), then the
        hook runs, the optimizer steps, gradients are zeroed and a step scheduler steps. A
        step the GradScaler skipped for inf/nan gradients is counted and not scheduled.
        """
        factor = self.items.end_window() if self.items.weighs[True] else None
        batches = self.state.batches_in_window
        if factor is None and batches < self.state.window:
            factor = self.state.window / batches
        if factor is not None:
            _scale_gradients(optimizer, factor)
        if closure is None:
            self._clip(optimizer)
        else:
            closure = self._clipped(optimizer, closure)
        self.before_step(optimizer)
        stepped = self.precision.step(optimizer, closure)
        optimizer.zero_grad(set_to_none=True)
        if not stepped:  # the GradScaler found inf/nan gradients: the schedule waits too
            self.state.skipped_steps += 1
        elif self.scheduler_interval == "step":
            scheduler = self._scheduler_of(optimizer)
            if scheduler is not None:
                scheduler.step()
        return stepped

    def sync_and_step(
        self,
        optimizer: torch.optim.Optimizer,
        closure: Callable[[], torch.Tensor] | None = None,
    ) -> bool:
        """`step` at a window's end for a training step that owns its update: the
        gradients are averaged over DDP ranks first (the loop's backward did not)."""
        self.sharding.sync_gradients(optimizer)
        return self.step(optimizer, closure)

    def end_batch(self) -> None:
        """The batch's optimizers have all stepped: the loss scale moves, once."""
        self.precision.update()

    def zero_grad(self) -> None:
        """Clear every optimizer's gradients (no gradient outlives its window)."""
        for _, optimizer in named(self.optimizers):
            optimizer.zero_grad(set_to_none=True)

    def step_schedulers_on_epoch(
        self, metrics: dict[str, float], is_plateau_due: bool = True
    ) -> None:
        """At a finished epoch's end: epoch schedulers step; `ReduceLROnPlateau` reads its
        monitor from `metrics` when `is_plateau_due` (the loop says so when this epoch end
        validated, or the run has no validation), as it does after every validation."""
        if self.scheduler_interval != "epoch":
            return
        for _, scheduler in named(self.schedulers):
            if scheduler is None:
                continue
            if is_plateau(scheduler):
                if is_plateau_due:
                    self._step_plateau(scheduler, metrics)
            else:
                scheduler.step()

    def step_plateau_schedulers(self, metrics: dict[str, float]) -> None:
        """After a validation inside an epoch (`val_check_interval`): each epoch-interval
        `ReduceLROnPlateau` reads its monitor, so its patience counts validations."""
        if self.scheduler_interval != "epoch":
            return
        for _, scheduler in named(self.schedulers):
            if scheduler is not None and is_plateau(scheduler):
                self._step_plateau(scheduler, metrics)

    def _step_plateau(self, scheduler: Any, metrics: dict[str, float]) -> None:
        monitor = Monitor(self.scheduler_monitor)
        scheduler.step(monitor.read(metrics, "ReduceLROnPlateau"))

    def learning_rates(self) -> dict[str, float]:
        """The optimizers' learning rates by their logged names."""
        return learning_rates(self.optimizers)

    # ------------------------------------------------------------------------------ helpers
    def _clip(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale, then clip as asked. The total norm before clipping goes to the next log
        step: every step when clipping by norm computes it, else measured on log steps only
        (a reduction over every gradient) when clipping by value or `log_grad_norm` asks."""
        self.precision.unscale(optimizer)
        if self.clip_val is not None and self.clip_algorithm == "norm":
            norm = nn.utils.clip_grad_norm_(list(_parameters(optimizer)), self.clip_val)
        else:
            is_norm_due = (self.log_grad_norm or self.clip_val is not None) and (
                self.logs.is_log_step(self.state.global_step + 1)
            )
            norm = _total_norm(optimizer) if is_norm_due else None
            if self.clip_val is not None:
                nn.utils.clip_grad_value_(list(_parameters(optimizer)), self.clip_val)
        if norm is not None:
            self.logs.add_step_figure("train/grad_norm", norm)

    def _clipped(
        self, optimizer: torch.optim.Optimizer, closure: Callable[[], torch.Tensor]
    ) -> Callable[[], torch.Tensor]:
        """`closure` with each evaluation's gradients clipped (and logged) as the loop's are."""

        def evaluate() -> torch.Tensor:
            with torch.enable_grad():
                loss = closure()
            self._clip(optimizer)
            return loss

        return evaluate

    def _scheduler_of(self, optimizer: torch.optim.Optimizer) -> Any:
        for (_, each), (_, scheduler) in zip(
            named(self.optimizers), named(self.schedulers), strict=True
        ):
            if each is optimizer:
                return scheduler
        return None


def _parameters(optimizer: torch.optim.Optimizer) -> Iterator[nn.Parameter]:
    """Every parameter `optimizer` steps."""
    return (p for group in optimizer.param_groups for p in group["params"])


def _total_norm(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    return nn.utils.get_total_norm([p.grad for p in _parameters(optimizer) if p.grad is not None])


def _world_size(sharding: Sharding) -> int:
    """The ranks whose gradients the backward averages (1 on one process)."""
    if sharding.kind == "single":
        return 1
    import torch.distributed as dist

    return dist.get_world_size()


def _scale_gradients(optimizer: torch.optim.Optimizer, factor: float | torch.Tensor) -> None:
    for parameter in _parameters(optimizer):
        if parameter.grad is not None:
            parameter.grad.mul_(factor)
