"""`TrainState`: the small set of plain values that says where a run is.

It holds what a resumed run needs to continue the count (epoch, optimizer steps, batches
consumed in the current epoch, whether that epoch's end has run) plus the latest logged
figures, so a checkpoint stores it as plain data. Each fact is kept once: "the epoch has
ended" is `is_epoch_finished`, set by `finish_epoch` and consumed by `start_next_epoch`,
and nothing else in the loop decides it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["TrainState"]


@dataclass
class TrainState:
    """Progress of a run; every count is 0-based and every value plain Python.

    Attributes:
        epoch: the epoch being run (or just finished, until the next one starts).
        global_step: optimizer steps done since the run began.
        batches_in_epoch: training batches already consumed in the current epoch.
        is_epoch_finished: the current epoch's batches are all consumed; its end-of-epoch
            work (validation, epoch scheduler step, `on_train_epoch_end`) runs or ran. A
            checkpoint saved then resumes at the next epoch's start.
        should_stop: set by anyone to end the run after the current step.
        skipped_batches: batches left out for a non-finite loss (`nan_policy="skip"`).
        skipped_steps: optimizer steps the "16-mixed" GradScaler skipped for inf/nan
            gradients; they count in `global_step` but do not advance a step scheduler.
        last_finite_step: the last optimizer step at which the loss was read and finite.
        metrics: the latest value of every logged name, as floats.
    """

    epoch: int = 0
    global_step: int = 0
    batches_in_epoch: int = 0
    is_epoch_finished: bool = False
    should_stop: bool = False
    skipped_batches: int = 0
    skipped_steps: int = 0
    last_finite_step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def is_mid_epoch(self) -> bool:
        """Some of the current epoch's batches are consumed and some are not."""
        return self.batches_in_epoch > 0 and not self.is_epoch_finished

    def finish_epoch(self) -> None:
        """Record that the current epoch's batches are all consumed."""
        self.is_epoch_finished = True

    def start_next_epoch(self) -> None:
        """Move past a finished epoch; a state in the middle of one stays where it is."""
        if self.is_epoch_finished:
            self.epoch += 1
            self.batches_in_epoch = 0
            self.is_epoch_finished = False

    def state_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()` output, ready to run the next batch."""
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.batches_in_epoch = int(state["batches_in_epoch"])
        self.is_epoch_finished = bool(state.get("is_epoch_finished", False))
        self.should_stop = bool(state["should_stop"])
        self.skipped_batches = int(state.get("skipped_batches", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.last_finite_step = int(state.get("last_finite_step", self.global_step))
        self.metrics = {str(name): float(value) for name, value in state["metrics"].items()}
        self.start_next_epoch()
