"""`CallbackList`: dispatch that costs nothing for hooks a callback does not override."""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType
from typing import Any

from conftest import make_trainer

from trainer import Trainer
from trainer.callbacks import Callback
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
