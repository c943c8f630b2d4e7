"""`Timer`: stop training once a wall-clock budget (`Trainer(max_time=...)`) is spent.

The budget is this process's: it counts from `fit`'s start, so a resumed run gets a whole
one of its own (the clock is not saved). When it is spent, the trainer is asked to stop,
which it does at the next optimizer-step boundary (under several ranks, at the next step
where they agree on stopping, so every rank stops at the same step); the checkpoint
callbacks then save the state to resume from, as on any stop.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from trainer.callbacks.base import Callback
from trainer.callbacks.progress import write_line
from trainer.loop_schedule import parse_duration

if TYPE_CHECKING:
    from trainer.trainer import Trainer

__all__ = ["Timer", "with_timer"]


class Timer(Callback):
    """Ask the trainer to stop once `duration` of wall-clock time has passed in `fit`.

    Args:
        duration: seconds, a `"DD:HH:MM:SS"` string or a `timedelta`.

    Example:
        >>> timer = Timer("00:11:45:00")  # stop a 12-hour job with time to spare
    """

    def __init__(self, duration: float | str | timedelta) -> None:
        seconds = parse_duration(duration, "max_time")
        assert seconds is not None  # parse_duration keeps only None as None
        self.duration = seconds
        self.stopped_step: int | None = None
        self._started = time.monotonic()

    def time_elapsed(self) -> float:
        """Seconds since this process's `fit` started."""
        return time.monotonic() - self._started

    def on_fit_start(self, trainer: Trainer) -> None:
        """The budget starts now, whole, for a fresh or a resumed run."""
        self._started = time.monotonic()
        self.stopped_step = None

    def on_train_batch_end(
        self, trainer: Trainer, outputs: dict[str, Any], batch: Any, batch_idx: int
    ) -> None:
        """Once the budget is spent, ask for a stop (acted on at a step boundary)."""
        if self.stopped_step is None and self.time_elapsed() >= self.duration:
            self.stopped_step = trainer.global_step
            trainer.should_stop = True
            if trainer.is_global_zero:
                write_line(
                    f"Stopping: max_time {self.budget()} spent after {trainer.global_step} "
                    "optimizer steps; training stops at the next step boundary with a "
                    "checkpoint, and resuming with ckpt_path='last' continues the run."
                )

    def budget(self) -> str:
        """The budget as `H:MM:SS`, as people write it."""
        return str(timedelta(seconds=self.duration))

    def stop_reason(self) -> str | None:
        """`"max_time ... reached"` once the budget stopped the run."""
        return f"max_time {self.budget()} reached" if self.stopped_step is not None else None


def with_timer(callbacks: list[Callback] | None, max_time: Any) -> list[Callback] | None:
    """`callbacks` with a `Timer(max_time)` added when a budget is given; a `Timer` of the
    user's own beside `max_time` would leave two budgets, and fails naming both."""
    if max_time is None:
        return callbacks
    callbacks = list(callbacks or [])
    if any(isinstance(callback, Timer) for callback in callbacks):
        raise ValueError(
            f"max_time={max_time!r} and a Timer in callbacks each set a budget; keep one."
        )
    return [*callbacks, Timer(max_time)]
