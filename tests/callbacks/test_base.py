"""`CallbackList`: dispatch that costs nothing for hooks a callback does not override."""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType
from typing import Any

from conftest import make_trainer

from trainer import Trainer
from trainer.callbacks import Callback, ModelCheckpoint, ProgressBar, TensorBoardLogger
from trainer.callbacks.base import HOOKS


class OnlyAtTheEnd(Callback):
    def __init__(self) -> None:
        self.has_ended = False

    def on_fit_end(self, trainer: Trainer) -> None:
        self.has_ended = True


def test_hooks_a_callback_does_not_override_are_never_called(run_dir: Path) -> None:
    callbacks = [OnlyAtTheEnd() for _ in range(50)]
    trainer = make_trainer(run_dir, callbacks=callbacks, val_loader=None)
    empty_hooks = {getattr(Callback, hook).__code__ for hook in HOOKS}
    called: list[str] = []

    def watch(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code in empty_hooks:
            called.append(frame.f_code.co_name)

    sys.setprofile(watch)
    try:
        trainer.fit()
    finally:
        sys.setprofile(None)
    assert called == []
    assert all(callback.has_ended for callback in callbacks)


def per_step_calls(trainer: Trainer) -> list[str]:
    """Names of callback methods the loop calls per batch or step during `trainer.fit()`."""
    per_step = {"on_train_batch_start", "on_train_batch_end", "on_before_optimizer_step"}
    callback_files = {type(callback).__module__ for callback in trainer.callbacks}
    called: list[str] = []

    def watch(frame: FrameType, event: str, arg: Any) -> None:
        is_callback = frame.f_globals.get("__name__") in callback_files
        if event == "call" and is_callback and frame.f_code.co_name in per_step:
            called.append(f"{frame.f_globals['__name__']}.{frame.f_code.co_name}")

    sys.setprofile(watch)
    try:
        trainer.fit()
    finally:
        sys.setprofile(None)
    return called


def test_default_callbacks_without_a_terminal_cost_nothing_per_step(run_dir: Path) -> None:
    assert not sys.stderr.isatty()
    trainer = make_trainer(run_dir, progress_bar=True, logger=True, checkpoint=True)
    assert per_step_calls(trainer) == []
    assert list((run_dir / "version_0" / "checkpoints").glob("last-*.ckpt"))
    assert list((run_dir / "version_0").glob("events.out.tfevents.*"))


def test_callbacks_that_need_per_step_hooks_still_get_them(run_dir: Path) -> None:
    class CountingCheckpoint(ModelCheckpoint):
        def __init__(self) -> None:
            super().__init__()
            self.batches = 0

        def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
            self.batches += 1

    counting = CountingCheckpoint()
    trainer = make_trainer(
        run_dir,
        callbacks=[
            ProgressBar(force=True),
            ModelCheckpoint(every_n_steps=3),
            TensorBoardLogger(histogram_every_n_epochs=1),
            counting,
        ],
    )
    called = per_step_calls(trainer)
    batches = trainer.global_step  # no accumulation: a step per batch
    assert called.count("trainer.callbacks.progress.on_train_batch_end") == batches
    assert called.count("trainer.callbacks.model_checkpoint.on_train_batch_end") == batches
    assert called.count("trainer.callbacks.tensorboard.on_before_optimizer_step") == batches
    assert counting.batches == batches
    assert (run_dir / "version_0" / "checkpoints" / "last-epoch=1-step=9.ckpt").exists()
