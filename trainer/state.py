"""`TrainState`: the small set of plain values that says where a run is.

It holds exactly what a resumed run needs to continue the count (epoch, optimizer steps,
batches consumed in the current epoch) plus the latest logged figures, so a checkpoint
stores it as plain data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["TrainState"]


@dataclass
class TrainState:
    """Progress of a run; every count is 0-based and every value plain Python.

    Attributes:
        epoch: the epoch being run, or the next one to run between epochs.
        global_step: optimizer steps done since the run began.
        batches_in_epoch: training batches already consumed in the current epoch.
        should_stop: set by anyone to end the run after the current step.
        skipped_batches: batches left out for a non-finite loss (`nan_policy="skip"`).
        skipped_steps: optimizer steps the "16-mixed" GradScaler skipped for inf/nan
            gradients; they count in `global_step` but do not advance a step scheduler.
        metrics: the latest value of every logged name, as floats.
    """

    epoch: int = 0
    global_step: int = 0
    batches_in_epoch: int = 0
    should_stop: bool = False
    skipped_batches: int = 0
    skipped_steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()` output."""
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.batches_in_epoch = int(state["batches_in_epoch"])
        self.should_stop = bool(state["should_stop"])
        self.skipped_batches = int(state.get("skipped_batches", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.metrics = {str(name): float(value) for name, value in state["metrics"].items()}
