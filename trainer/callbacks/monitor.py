"""One helper for everything that watches a logged metric: early stopping, checkpoint
ranking and plateau schedulers share how a value is read, compared and reported missing."""

from __future__ import annotations

import difflib
import math
from typing import Literal

__all__ = ["MissingMetricError", "Monitor", "MonitorMode", "missing_metric_error"]

MonitorMode = Literal["min", "max"]


class MissingMetricError(KeyError):
    """A monitored metric that was never logged; prints its message without KeyError's quotes."""

    def __str__(self) -> str:
        return str(self.args[0])


def missing_metric_error(name: str, logged: list[str], who: str) -> MissingMetricError:
    """An error for a monitored name that was never logged, listing what was."""
    close = difflib.get_close_matches(name, logged, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    available = ", ".join(sorted(logged)) or "none yet"
    message = f"{who} monitors {name!r}, which was never logged.{hint} Logged names: {available}."
    if name.startswith("val/") and not any(n.startswith("val/") for n in logged):
        message += " Validation names need a val_loader."
    # `val/loss` with several loaders: each loader logs `val/<loader>/loss`.
    figure = name.removeprefix("val/")
    per_loader = [n for n in logged if n.startswith("val/") and n.split("/")[2:] == [figure]]
    if name.startswith("val/") and "/" not in figure and per_loader:
        message += f" With several val loaders, name one: {', '.join(map(repr, per_loader))}."
    return MissingMetricError(message)


class Monitor:
    """Reads `name` from the trainer's metrics and judges whether it improved.

    Args:
        name: the logged name to watch, such as `"val/loss"`.
        mode: `"min"` when lower is better, `"max"` when higher is better.
        min_delta: how much better a value must be to count as an improvement.
    """

    def __init__(self, name: str, mode: str = "min", min_delta: float = 0.0) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r} is not supported; use 'min' or 'max'.")
        self.name = name
        self.mode = mode
        self.min_delta = abs(min_delta)

    def read(self, metrics: dict[str, float], who: str) -> float:
        """The current value, or a KeyError listing the logged names if it is missing."""
        if self.name not in metrics:
            raise missing_metric_error(self.name, list(metrics), who)
        return metrics[self.name]

    def worst(self) -> float:
        """A starting 'best' that any finite value improves on."""
        return math.inf if self.mode == "min" else -math.inf

    def is_improvement(self, value: float, best: float) -> bool:
        """True when `value` beats `best` by more than `min_delta` (NaN never improves)."""
        if math.isnan(value):
            return False
        if self.mode == "min":
            return value < best - self.min_delta
        return value > best + self.min_delta
