"""Building the optimizer and LR scheduler, and deciding when the scheduler steps.

Users hand over objects or factories (`params -> Optimizer`, `optimizer -> scheduler`);
this module turns either into objects and owns the rule of when a scheduler advances:
every epoch, every optimizer step, or on a monitored metric for `ReduceLROnPlateau`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal, get_args

import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

__all__ = ["SchedulerInterval", "build_optimizer", "build_scheduler", "learning_rates"]

SchedulerInterval = Literal["epoch", "step"]
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


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """`{"lr": value}` for one param group, `{"lr/group0": ..., ...}` for several."""
    groups = optimizer.param_groups
    if len(groups) == 1:
        return {"lr": float(groups[0]["lr"])}
    return {f"lr/group{index}": float(group["lr"]) for index, group in enumerate(groups)}
