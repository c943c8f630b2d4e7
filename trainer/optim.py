"""Building the optimizer and LR scheduler, and deciding when the scheduler steps.

Users hand over objects or factories (`params -> Optimizer`, `optimizer -> scheduler`);
this module turns either into objects and owns the rule of when a scheduler advances:
every epoch, every optimizer step, or on a monitored metric for `ReduceLROnPlateau`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeAlias, get_args

import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

__all__ = [
    "Optimizers",
    "SchedulerInterval",
    "build_optimizer",
    "build_optimizers",
    "build_scheduler",
    "build_schedulers",
    "learning_rates",
    "named",
]

SchedulerInterval = Literal["epoch", "step"]
Optimizers: TypeAlias = "list[torch.optim.Optimizer] | dict[str, torch.optim.Optimizer]"
INTERVAL_CHOICES: tuple[str, ...] = get_args(SchedulerInterval)


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
