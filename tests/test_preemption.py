"""`trainer.preemption`: a signal becomes a save at the next step boundary and a
`TrainingInterrupted` carrying the shell's exit status; the save keeps as many last-state
files as the callbacks of its folder declare, whatever their type."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from conftest import make_trainer

from trainer import Trainer, TrainingInterrupted
from trainer.callbacks import Callback, CheckpointFolder
from trainer.preemption import PreemptionWatch, exit_code_for


class TerminateAt(Callback):
    """Sends this process SIGTERM once training reaches optimizer step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class KeepsOneInTheRunFolder(Callback):
    """Not a ModelCheckpoint: it only declares how many last-state files its folder keeps."""

    def checkpoint_folder(self, trainer: Trainer) -> CheckpointFolder | None:
        folder = trainer.checkpoint_dir
        return CheckpointFolder(folder, keep_last=1) if folder is not None else None


def _last_files(run_dir: Path) -> list[str]:
    return sorted(path.name for path in (run_dir / "version_0" / "checkpoints").glob("last-*"))


def _terminated_resume(run_dir: Path, *callbacks: Callback) -> TrainingInterrupted:
    """Two epochs saved by the default checkpoint, then a resume without one, stopped by
    SIGTERM at step 12: only the signal's own save writes in the third epoch."""
    make_trainer(run_dir, checkpoint=True).fit()
    resumed = make_trainer(run_dir, max_epochs=3, callbacks=[*callbacks, TerminateAt(12)])
    with pytest.raises(TrainingInterrupted) as info:
        resumed.fit(ckpt_path="last")
    return info.value


def test_a_signal_save_keeps_the_count_a_callback_of_its_folder_declares(run_dir: Path) -> None:
    stop = _terminated_resume(run_dir, KeepsOneInTheRunFolder())
    assert _last_files(run_dir) == ["last-epoch=2-step=12.ckpt"]
    assert stop.checkpoint_path.name == "last-epoch=2-step=12.ckpt"


def test_a_signal_save_without_declarations_keeps_the_default_two(run_dir: Path) -> None:
    stop = _terminated_resume(run_dir)
    assert _last_files(run_dir) == ["last-epoch=1-step=10.ckpt", "last-epoch=2-step=12.ckpt"]
    assert (stop.signum, stop.exit_code, stop.code) == (signal.SIGTERM, 143, 143)


def test_exit_codes_follow_the_shells_convention() -> None:
    assert exit_code_for(signal.SIGTERM) == 143
    assert exit_code_for(signal.SIGINT) == 130


def test_the_watch_records_the_first_signal_and_a_second_ctrl_c_interrupts_at_once() -> None:
    with PreemptionWatch() as watch:
        signal.raise_signal(signal.SIGTERM)
        assert watch.received == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert watch.received == signal.SIGTERM
