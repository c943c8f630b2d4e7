"""Several validation loaders by name: `val_loader={"clean": a, "noisy": b}`.

One loader keeps its figures' names (`val/loss`, `val/acc`); each loader of a dict is
validated in one pass of its own, in the dict's order, and its figures carry its name after
the stage (`val/clean/loss`, `val/noisy/acc`). A figure a step logs outside the stage's
prefix (`self.log("margin", ...)`) gets the loader's name as a suffix (`margin/clean`), so
two loaders never write the same name. This module names the figures and checks, when the
trainer is built, that no callback monitors a name that several loaders cannot log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from trainer.callbacks.monitor import Monitor
from trainer.optimization import Optimization, is_plateau, named

__all__ = [
    "check_monitored_names",
    "figure_name",
    "loader_names",
    "named_figures",
    "named_loaders",
]


def named_loaders(val_loader: Any) -> list[tuple[str | None, Iterable[Any]]]:
    """`(name, loader)` for each loader: the dict's items in order, or `(None, loader)`."""
    if val_loader is None:
        return []
    if isinstance(val_loader, Mapping):
        return list(val_loader.items())
    return [(None, val_loader)]


def loader_names(val_loader: Any) -> list[str]:
    """The names of a dict of loaders, in order; empty for one loader or none."""
    return list(val_loader) if isinstance(val_loader, Mapping) else []


def figure_name(name: str, loader: str | None, prefix: str = "val") -> str:
    """`val/loss` as loader `loader` logs it: `val/<loader>/loss` (`name/<loader>` for a
    name outside `prefix`); unchanged for an unnamed loader."""
    if loader is None:
        return name
    head = f"{prefix}/"
    if name.startswith(head):
        return f"{head}{loader}/{name.removeprefix(head)}"
    return f"{name}/{loader}"


def named_figures(
    figures: Mapping[str, float], loader: str | None, prefix: str = "val"
) -> dict[str, float]:
    """A pass's figures under the names of its loader (see `figure_name`)."""
    return {figure_name(name, loader, prefix): value for name, value in figures.items()}


def check_monitored_names(
    callbacks: Iterable[Any],
    optimization: Optimization,
    val_loader: Any,
    metric_names: Iterable[str],
) -> None:
    """With several loaders, a callback or a `ReduceLROnPlateau` that monitors `val/loss` or
    `val/<metric>` would never see it: fail now, naming the loaders' figures to choose from,
    not after an epoch. (A plateau scheduler that `configure_optimizers` builds later is
    told at its first epoch end, by the missing-metric error.)"""
    names = loader_names(val_loader)
    if not names:
        return
    unnamed = {"val/loss", *(f"val/{metric}" for metric in metric_names)}
    watched = [
        (type(callback).__name__, monitor.name, "monitor")
        for callback in callbacks
        if isinstance(monitor := getattr(callback, "monitor", None), Monitor)
    ]
    if any(is_plateau(scheduler) for _, scheduler in named(optimization.schedulers or [])):
        watched.append(("ReduceLROnPlateau", optimization.scheduler_monitor, "scheduler_monitor"))
    for who, name, argument in watched:
        if name in unnamed:
            choices = ", ".join(repr(figure_name(name, loader)) for loader in names)
            raise ValueError(
                f"{who} monitors {name!r}, but val_loader is a dict of loaders "
                f"({', '.join(map(repr, names))}) whose figures are named per loader: "
                f"pass {argument}= one of {choices}."
            )
