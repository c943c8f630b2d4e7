"""When the training loop validates and how long it may train: the validation schedule
(`val_check_interval`, `check_val_every_n_epoch`, `num_sanity_val_steps`) and the parsing of
wall-clock durations (`max_time`, `ModelCheckpoint(train_time_interval=...)`).

Every decision is a pure function of the `TrainState` and the epoch's length, so a resumed
run takes the same decisions at the same steps as the straight run, and each costs an int
compare or two at a step boundary. Whether a step was validated is the state's fact
(`TrainState.validated_step`); this module only says whether one is due.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any

from trainer.state import TrainState

__all__ = [
    "DEFAULT_SANITY_VAL_STEPS",
    "LoopSchedule",
    "each_loader",
    "first_batches",
    "parse_duration",
]

DEFAULT_SANITY_VAL_STEPS = 2
"""Two batches, as in Lightning: enough to run every line of a `validation_step` (and a
metric's reduction over more than one batch), cheap enough to stay inside start-up's budget."""

_SECONDS = re.compile(r"\d+(?:\.\d*)?")
_DURATION = re.compile(r"(\d+):(\d+):(\d+):(\d+(?:\.\d*)?)")


def parse_duration(value: Any, name: str) -> float | None:
    """`value` in seconds: a number, `"DD:HH:MM:SS"` (Lightning's form), or a `timedelta`;
    None stays None. Anything else, or a duration that is not positive, fails naming `name`."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and _SECONDS.fullmatch(value.strip()):
        seconds = float(value)  # "90" from a command line means seconds, as 90 does
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        days, hours, minutes, rest = match.groups()
        seconds = timedelta(
            days=int(days), hours=int(hours), minutes=int(minutes), seconds=float(rest)
        ).total_seconds()
    else:
        raise ValueError(
            f"{name} must be seconds (a number), a 'DD:HH:MM:SS' string or a "
            f"datetime.timedelta, got {value!r}; e.g. {name}='00:12:00:00' for twelve hours."
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be a positive duration, got {value!r}.")
    return seconds


class LoopSchedule:
    """When the loop validates during `fit`, decided over the `TrainState`.

    Args:
        val_check_interval: an int validates every N optimizer steps, counted across epochs
            (any loader, a stream too); epoch ends then validate only when their step is
            due. A float in (0, 1] validates at each such fraction of every validated epoch,
            at the first step boundary at or past it, and at that epoch's end. None: at
            epoch ends only.
        check_val_every_n_epoch: epoch ends that validate: every N-th; None: none (with an
            int `val_check_interval`, whose steps decide alone).
        num_sanity_val_steps: validation batches run once before training (0: none).
        epoch_length: batches per training epoch, None for a loader without a length.

    `is_validating` is True while a validation the schedule called for runs, so
    monitor-driven callbacks act on those and not on `trainer.validate()` or the sanity pass.
    """

    def __init__(
        self,
        val_check_interval: int | float | None,
        check_val_every_n_epoch: int | None,
        num_sanity_val_steps: int,
        epoch_length: int | None,
    ) -> None:
        _check_arguments(val_check_interval, check_val_every_n_epoch, num_sanity_val_steps)
        is_steps = isinstance(val_check_interval, int)
        if is_steps and check_val_every_n_epoch not in (1, None):
            raise ValueError(
                f"val_check_interval={val_check_interval} counts optimizer steps across "
                f"epochs, so check_val_every_n_epoch={check_val_every_n_epoch} has nothing to "
                "count; leave check_val_every_n_epoch at 1 (or None), or give "
                "val_check_interval as a fraction of an epoch, e.g. 0.25."
            )
        is_fraction = isinstance(val_check_interval, float) and val_check_interval < 1
        if is_fraction and epoch_length is None:
            raise ValueError(
                f"val_check_interval={val_check_interval} is a fraction of an epoch, but "
                "train_loader has no length; give it as optimizer steps instead, e.g. "
                "val_check_interval=500."
            )
        self.every_n_steps = val_check_interval if is_steps else None
        # Batches between validations, as a fraction: 0.5 of 5 batches validates after
        # batch 3 (the first boundary past 2.5) and at the end, not after 2, 4 and 5.
        self.every_n_batches = (
            round(epoch_length * val_check_interval, 9)  # 0.1 * 30 is 3, not 3.0000000000000004
            if is_fraction and epoch_length is not None
            else None
        )
        # An int interval's epoch ends validate by their step; otherwise every N-th epoch.
        self.every_n_epochs = None if is_steps else check_val_every_n_epoch
        self.num_sanity_val_steps = num_sanity_val_steps
        self.is_validating = False
        # Whether any validation can fall inside an epoch (an interval was given): a plain
        # attribute, as the loop asks it at every batch.
        self.validates_mid_epoch = (
            self.every_n_steps is not None or self.every_n_batches is not None
        )

    def is_due(self, state: TrainState) -> bool:
        """The step just taken (the batch in flight closed a window) is one the interval
        validates at; epoch ends are `is_due_at_epoch_end`'s."""
        if self.every_n_steps is not None:
            return state.global_step > 0 and state.global_step % self.every_n_steps == 0
        if self.every_n_batches is None or not self._is_validated_epoch(state.epoch):
            return False
        done, every = state.batches_in_epoch, self.every_n_batches
        # Due when this window crossed one of the epoch's fraction points.
        return done // every > (done - state.batches_in_window) // every

    def is_due_at_epoch_end(self, state: TrainState) -> bool:
        """The finished epoch's end validates: its epoch is due, or its last step is."""
        if self.every_n_steps is not None:
            return self.is_due(state)
        return self._is_validated_epoch(state.epoch)

    def _is_validated_epoch(self, epoch: int) -> bool:
        return self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0

    @contextlib.contextmanager
    def validating(self) -> Iterator[None]:
        """Inside, `is_validating` says a scheduled validation runs."""
        self.is_validating = True
        try:
            yield
        finally:
            self.is_validating = False


def first_batches(loader: Iterable[Any], count: int) -> Iterator[Any]:
    """The first `count` batches of `loader`; its iterator (and workers) go once done."""
    iterator = iter(loader)
    try:
        for _ in range(count):
            batch = next(iterator, _END)
            if batch is _END:
                return
            yield batch
    finally:
        del iterator  # a worker pool shuts down as its iterator is freed


def each_loader(loader: Any) -> list[Any]:
    """The loaders a validation runs: the values of a dict of named ones, or the one."""
    return list(loader.values()) if isinstance(loader, Mapping) else [loader]


_END = object()


def _check_arguments(
    val_check_interval: Any, check_val_every_n_epoch: Any, num_sanity_val_steps: Any
) -> None:
    """Each keyword of the right kind and range, named with the fix."""
    interval = val_check_interval
    if isinstance(interval, bool) or not (
        interval is None
        or (isinstance(interval, int) and interval >= 1)
        or (isinstance(interval, float) and 0 < interval <= 1)
    ):
        raise ValueError(
            f"val_check_interval must be an int >= 1 (optimizer steps), a float in (0, 1] "
            f"(a fraction of each epoch) or None (epoch ends), got {interval!r}."
        )
    every = check_val_every_n_epoch
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ValueError(
            f"check_val_every_n_epoch must be a positive integer or None, got {every!r}."
        )
    sanity = num_sanity_val_steps
    if isinstance(sanity, bool) or not isinstance(sanity, int) or sanity < 0:
        raise ValueError(
            f"num_sanity_val_steps must be an integer >= 0 (0 skips the sanity pass), "
            f"got {sanity!r}."
        )
