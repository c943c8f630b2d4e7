"""`TrainState`: the small set of plain values that says where a run is, and the only
predicates over it.

It holds what a resumed run needs to continue the count (epoch, optimizer steps, batches
begun in the current epoch, whether that epoch's end has run) plus the latest logged
figures, so a checkpoint stores it as plain data. Each fact is kept once and decided here:
the window ends here (`is_window_end`), the epoch's batches are done (`are_epoch_batches_done`),
mid-epoch (`is_mid_epoch`), the step validated (`is_validated`) and a fresh run
(`is_fresh_run`), all over one batch counter,
`batches_in_epoch`, which `count_batch` advances as a batch begins. The accumulation
window is given once by the trainer and not saved (it is configuration, not progress); the
epoch's length is an argument, as the data position knows it at that moment (a loader
without a length learns it only as its last batch comes).
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
        batches_in_epoch: training batches of the current epoch begun so far; the batch in
            flight counts from its `training_step` on, so the window and the epoch's end are
            decided over this one counter.
        is_epoch_finished: the current epoch's end-of-epoch work (validation, epoch scheduler
            step, `on_train_epoch_end`) runs or ran. A checkpoint saved then resumes at the
            next epoch's start.
        should_stop: set by anyone to end the run after the current step.
        skipped_batches: batches left out for a non-finite loss (`nan_policy="skip"`).
        skipped_steps: optimizer steps the "16-mixed" GradScaler skipped for inf/nan
            gradients; they count in `global_step` but do not advance a step scheduler.
        last_finite_step: the last optimizer step at which the loss was read and finite.
        validated_step: the optimizer step at which the loop last validated during
            training (-1: none yet). A checkpoint saved right after a validation resumes
            without running it again; one saved just before it runs it first.
        metrics: the latest value of every logged name, as floats.
        window: batches per optimizer step (`accumulate_grad_batches`); not saved.
    """

    epoch: int = 0
    global_step: int = 0
    batches_in_epoch: int = 0
    is_epoch_finished: bool = False
    should_stop: bool = False
    skipped_batches: int = 0
    skipped_steps: int = 0
    last_finite_step: int = 0
    validated_step: int = -1
    metrics: dict[str, float] = field(default_factory=dict)
    window: int = field(default=1, compare=False, repr=False)

    # ------------------------------------------------------------------------------ predicates
    def is_window_end(self, epoch_length: int | None) -> bool:
        """The batch just begun closes an accumulation window (or the epoch of
        `epoch_length` batches, None when not known yet): it steps."""
        done = self.batches_in_epoch
        return done % self.window == 0 or done == epoch_length

    @property
    def batches_in_window(self) -> int:
        """Batches of the window the batch in flight belongs to, itself included; the epoch's
        last window may be short."""
        return (self.batches_in_epoch - 1) % self.window + 1

    def are_epoch_batches_done(self, epoch_length: int | None) -> bool:
        """Every batch of the current epoch (of `epoch_length`, None when not known yet) has
        begun, or the epoch's end runs."""
        return self.is_epoch_finished or self.batches_in_epoch == epoch_length

    @property
    def is_mid_epoch(self) -> bool:
        """Some of the current epoch's batches are consumed and its end has not run."""
        return self.batches_in_epoch > 0 and not self.is_epoch_finished

    @property
    def is_validated(self) -> bool:
        """The loop validated at the current optimizer step during training."""
        return self.validated_step == self.global_step

    @property
    def is_fresh_run(self) -> bool:
        """Nothing has trained yet: no batch begun, no step taken, no epoch ended."""
        return self.epoch == 0 and self.global_step == 0 and self.batches_in_epoch == 0 and (
            not self.is_epoch_finished
        )

    # ----------------------------------------------------------------------------------- verbs
    def count_batch(self) -> None:
        """A training batch begins: count it before its step runs."""
        self.batches_in_epoch += 1

    def finish_epoch(self) -> None:
        """Record that the current epoch's batches are all consumed and its end runs."""
        self.is_epoch_finished = True

    def start_next_epoch(self) -> None:
        """Move past a finished epoch; a state in the middle of one stays where it is."""
        if self.is_epoch_finished:
            self.epoch += 1
            self.batches_in_epoch = 0
            self.is_epoch_finished = False

    def state_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint: the progress, without the run's shape."""
        state = asdict(self)
        del state["window"]
        return state

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
        self.validated_step = int(state.get("validated_step", -1))
        self.metrics = {str(name): float(value) for name, value in state["metrics"].items()}
        self.start_next_epoch()
