"""`TrainState`: its predicates over the one batch counter, its checkpoint format, and the
loop asking them (the loop and a step that owns its update agree on every window's end)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import make_loader, make_trainer

from trainer import Trainer
from trainer.state import TrainState


def _ends(window: int, length: int | None, batches: int) -> list[int]:
    state = TrainState(window=window)
    ends = []
    for _ in range(batches):
        state.count_batch()
        if state.is_window_end(length):
            ends.append(state.batches_in_epoch)
    return ends


def test_windows_end_every_window_batches_and_at_the_epochs_last_batch() -> None:
    assert _ends(3, 8, 8) == [3, 6, 8]
    assert _ends(3, None, 8) == [3, 6]  # a loader without a length: not known yet
    assert _ends(1, 8, 8) == list(range(1, 9))


def test_the_last_window_of_an_epoch_may_be_short() -> None:
    state = TrainState(window=3, batches_in_epoch=8)
    assert state.batches_in_window == 2
    state.batches_in_epoch = 6
    assert state.batches_in_window == 3


def test_the_epochs_batches_are_done_at_its_length_or_once_its_end_runs() -> None:
    state = TrainState(batches_in_epoch=7)
    assert not state.are_epoch_batches_done(8) and not state.are_epoch_batches_done(None)
    state.count_batch()
    assert state.are_epoch_batches_done(8)
    state.finish_epoch()
    assert state.are_epoch_batches_done(None)


def test_mid_epoch_is_some_batches_begun_and_the_end_not_run() -> None:
    assert not TrainState().is_mid_epoch
    assert TrainState(batches_in_epoch=3).is_mid_epoch
    assert not TrainState(batches_in_epoch=8, is_epoch_finished=True).is_mid_epoch


def test_a_fresh_run_has_begun_no_batch_and_taken_no_step() -> None:
    assert TrainState(metrics={"val/loss": 1.0}, should_stop=True).is_fresh_run
    assert not TrainState(batches_in_epoch=1).is_fresh_run
    assert not TrainState(epoch=1).is_fresh_run
    assert not TrainState(global_step=1).is_fresh_run


def test_the_checkpoint_holds_progress_not_the_window_and_older_files_load() -> None:
    state = TrainState(epoch=2, global_step=9, batches_in_epoch=3, window=4)
    saved = state.state_dict()
    assert "window" not in saved and saved["batches_in_epoch"] == 3
    restored = TrainState(window=4)
    restored.load_state_dict(saved)
    assert restored == state
    older = {"epoch": 1, "global_step": 5, "batches_in_epoch": 5, "should_stop": False,
             "metrics": {"train/loss": 0.5}, "is_epoch_finished": True}  # fmt: skip
    restored.load_state_dict(older)  # no skipped counts yet; a finished epoch moves on
    assert (restored.epoch, restored.batches_in_epoch, restored.last_finite_step) == (2, 0, 5)


def test_a_step_that_owns_its_update_steps_where_the_loop_does(run_dir: Path) -> None:
    stepped_at: list[int] = []

    class Owner(Trainer):
        automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            inputs, targets = batch
            self.backward(self.loss_fn(self.model(inputs), targets))
            if self.step(self.optimizer):
                stepped_at.append(batch_idx)

    loop = make_trainer(run_dir, train_loader=make_loader(n=64), accumulate_grad_batches=3,
                        max_epochs=1)  # fmt: skip
    loop.fit()
    make_trainer(run_dir, trainer_class=Owner, train_loader=make_loader(n=64),
                 accumulate_grad_batches=3, max_epochs=1).fit()  # fmt: skip
    assert stepped_at == [2, 5, 7]  # 8 batches: two full windows and a short one
    assert loop.global_step == len(stepped_at)
