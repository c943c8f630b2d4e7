"""Preemption: turn SIGTERM / SIGINT (and SIGUSR1 under SLURM) into a clean save-and-exit.

A handler only records the signal; the loop checks the record at the next optimizer-step
boundary, where `save_and_exit` saves a checkpoint and exits, so a cluster's kill notice
never loses more than the step in flight. The previous handlers come back when `fit` returns.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from trainer.callbacks.model_checkpoint import ModelCheckpoint
from trainer.checkpoint import last_checkpoint_name, rotate_last_checkpoints

if TYPE_CHECKING:
    from trainer.trainer import Trainer

__all__ = ["PreemptionWatch", "exit_code_for", "save_and_exit"]


def exit_code_for(signum: int) -> int:
    """The shell's convention: 128 + the signal number (143 for SIGTERM, 130 for SIGINT)."""
    return 128 + signum


class PreemptionWatch:
    """Context manager that records the first preemption signal received while it is active."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _signals(self) -> list[int]:
        signals = [signal.SIGTERM, signal.SIGINT]
        if "SLURM_JOB_ID" in os.environ and hasattr(signal, "SIGUSR1"):
            signals.append(signal.SIGUSR1)
        return signals

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        elif signum == signal.SIGINT:  # a second Ctrl-C: the user does not want to wait
            raise KeyboardInterrupt

    def __enter__(self) -> PreemptionWatch:
        self.received = None
        if threading.current_thread() is threading.main_thread():
            for signum in self._signals():
                self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def save_and_exit(trainer: Trainer, signum: int) -> None:
    """Save the last state at this step boundary, then exit with 128 + signum."""
    checkpoint_dir, step = trainer.checkpoint_dir, trainer.state.global_step
    path = trainer.save_checkpoint(checkpoint_dir / last_checkpoint_name(trainer.epoch, step))
    keep = max(
        (
            callback.keep_last
            for callback in trainer.callbacks
            if isinstance(callback, ModelCheckpoint) and callback.dirpath == checkpoint_dir
        ),
        default=2,
    )
    trainer.distributed.run_on_zero(
        "remove old checkpoints", rotate_last_checkpoints, checkpoint_dir, keep
    )
    if trainer.is_global_zero:
        print(
            f"Received signal {signum}: saved {path} at optimizer step {step}. Resume with "
            "fit(ckpt_path='last') or trainer fit ... --ckpt_path last.",
            file=sys.stderr,
        )
    raise SystemExit(exit_code_for(signum))
