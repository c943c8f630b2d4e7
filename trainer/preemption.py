"""Preemption: turn SIGTERM / SIGINT (and SIGUSR1 under SLURM) into a clean save-and-stop.

A handler only records the signal; the loop checks the record at the next optimizer-step
boundary, where `save_and_exit` saves a checkpoint and raises `TrainingInterrupted`, so a
cluster's kill notice never loses more than the step in flight. It saves into the run's
`checkpoint_dir` even when no callback saves checkpoints, and keeps as many last-state files
there as the callbacks of that folder declare (`Callback.checkpoint_folder`). The previous
handlers come back when `fit` returns.

`TrainingInterrupted` is both a `KeyboardInterrupt` and a `SystemExit`: code that catches
Ctrl-C catches it, a notebook or script may catch it and go on (the trainer stays usable),
and left uncaught it ends the process quietly with 128 + the signal number (130 for SIGINT,
143 for SIGTERM), the status a scheduler expects of a job it stopped.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from trainer.run_files import KEEP_LAST, last_checkpoint_name, rotate_last_checkpoints

if TYPE_CHECKING:
    from trainer.trainer import Trainer

__all__ = ["PreemptionWatch", "TrainingInterrupted", "exit_code_for", "save_and_exit"]


def exit_code_for(signum: int) -> int:
    """The shell's convention: 128 + the signal number (143 for SIGTERM, 130 for SIGINT)."""
    return 128 + signum


class TrainingInterrupted(KeyboardInterrupt, SystemExit):
    """`fit` stopped for a signal (Ctrl-C, SIGTERM) after saving a checkpoint to resume from.

    Catch it to go on after Ctrl-C (the trainer object stays usable); uncaught, the process
    exits with `exit_code`, without a traceback.

    Attributes:
        signum: the signal received.
        checkpoint_path: the checkpoint saved at the step where training stopped (None in
            a run that writes no files, a `fast_dev_run`).
        exit_code: 128 + `signum`, the shell's convention (130 for SIGINT, 143 for SIGTERM).

    Example:
        >>> try:
        ...     trainer.fit()
        ... except TrainingInterrupted as stop:
        ...     print("resume with", stop.checkpoint_path)
        >>> trainer.test(test_dl, ckpt_path="last")
    """

    def __init__(self, signum: int, checkpoint_path: Path | None) -> None:
        saved = f"saved {checkpoint_path}" if checkpoint_path is not None else "saved nothing"
        super().__init__(f"training stopped by signal {signum}; {saved}")
        self.signum = signum
        self.checkpoint_path = checkpoint_path
        self.code = exit_code_for(signum)  # what the interpreter exits with when uncaught

    @property
    def exit_code(self) -> int:
        """128 + the signal number: the exit status of a process stopped by that signal."""
        return exit_code_for(self.signum)


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
                # An ignored signal stays ignored: a job started in the background (`&`)
                # ignores the terminal's Ctrl-C, and so does its training.
                if signal.getsignal(signum) is not signal.SIG_IGN:
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
    """Save the last state at this step boundary, then raise `TrainingInterrupted`."""
    checkpoint_dir, step = trainer.checkpoint_dir, trainer.state.global_step
    if checkpoint_dir is None:  # a run that writes no files (fast_dev_run) has no folder
        raise TrainingInterrupted(signum, None)
    path = trainer.save_checkpoint(checkpoint_dir / last_checkpoint_name(trainer.epoch, step))
    keep = _last_checkpoints_to_keep(trainer, checkpoint_dir)
    trainer.distributed.run_on_zero(
        "remove old checkpoints", rotate_last_checkpoints, checkpoint_dir, keep
    )
    path = path.resolve()
    if trainer.is_global_zero:
        print(
            f"Received signal {signum}: saved {path} at optimizer step {step}. Resume this "
            f"run with fit(ckpt_path={str(path)!r}).",
            file=sys.stderr,
        )
    raise TrainingInterrupted(signum, path)


def _last_checkpoints_to_keep(trainer: Trainer, folder: Path) -> int:
    """The most last-state files any callback keeping them in `folder` asks for."""
    declared = [callback.checkpoint_folder(trainer) for callback in trainer.callbacks]
    counts = [each.keep_last for each in declared if each is not None and each.folder == folder]
    return max(counts, default=KEEP_LAST)
