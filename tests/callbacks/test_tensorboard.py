"""`TensorBoardLogger`: the event files of a real run, read back with TensorBoard's reader."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainer import Trainer
from trainer.callbacks import Callback, ModelCheckpoint, TensorBoardLogger


def event_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("events.out.tfevents.*"))


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in `folder` as (step, value) points, in the order written."""
    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(event.step, event.value) for event in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


def start_a_new_second() -> None:
    """Event files are named by creation second, then a per-process counter, and TensorBoard
    reads them in name order; a resumed run's file must sort after the first run's, as it
    does when a later process resumes, so that TensorBoard applies its purge."""
    time.sleep(1.01 - time.time() % 1)


def steps_of(points: list[tuple[int, float]]) -> list[int]:
    return [step for step, _ in points]


def test_default_tags_have_a_point_per_log_step_and_epoch(
    trainer_factory: Callable, run_dir: Path
) -> None:
    """5 batches x 2 epochs, logging every 2 steps: step logs at 2, 4, 6, 8, 10; epochs end
    at 5 and 10; `lr` is written once per step even where both coincide."""
    trainer = trainer_factory(logger=True, log_every_n_steps=2)
    history = trainer.fit()

    scalars = read_scalars(run_dir)
    assert {"train/loss", "val/loss", "val/acc", "lr"} <= scalars.keys()
    assert steps_of(scalars["train/loss"]) == [2, 4, 6, 8, 10]
    assert steps_of(scalars["val/loss"]) == [5, 10]
    assert steps_of(scalars["val/acc"]) == [5, 10]
    assert steps_of(scalars["lr"]) == [2, 4, 5, 6, 8, 10]
    assert steps_of(scalars["train/loss_epoch"]) == [5, 10]
    assert [value for _, value in scalars["val/loss"]] == pytest.approx(
        [record["val/loss"] for record in history]
    )
    assert [value for _, value in scalars["lr"]] == pytest.approx([0.1] * 6)


def test_log_every_n_steps_larger_than_the_run_leaves_only_epoch_points(
    trainer_factory: Callable, run_dir: Path
) -> None:
    trainer_factory(logger=True, log_every_n_steps=50).fit()
    scalars = read_scalars(run_dir)
    assert "train/loss" not in scalars
    assert steps_of(scalars["train/loss_epoch"]) == [5, 10]
    assert steps_of(scalars["val/loss"]) == [5, 10]
    assert steps_of(scalars["lr"]) == [5, 10]


def test_every_step_logged_with_log_every_n_steps_one(
    trainer_factory: Callable, run_dir: Path
) -> None:
    trainer_factory(logger=True, log_every_n_steps=1, max_epochs=1).fit()
    scalars = read_scalars(run_dir)
    assert steps_of(scalars["train/loss"]) == [1, 2, 3, 4, 5]
    assert steps_of(scalars["lr"]) == [1, 2, 3, 4, 5]


def test_step_values_match_the_losses_of_those_steps(
    trainer_factory: Callable, run_dir: Path
) -> None:
    class Losses(Callback):
        def __init__(self) -> None:
            self.by_step: dict[int, float] = {}

        def on_train_batch_end(
            self, trainer: Trainer, outputs: dict[str, Any], batch: Any, batch_idx: int
        ) -> None:
            self.by_step[trainer.global_step] = float(outputs["loss"])

    losses = Losses()
    trainer_factory(logger=True, log_every_n_steps=1, max_epochs=1, callbacks=[losses]).fit()
    written = dict(read_scalars(run_dir)["train/loss"])
    assert written == pytest.approx(losses.by_step)


def test_logger_false_writes_no_event_file(trainer_factory: Callable, tmp_path: Path) -> None:
    trainer_factory(logger=False, log_every_n_steps=1).fit()
    assert event_files(tmp_path) == []


def test_logger_in_callbacks_replaces_the_default_and_writes_to_its_folder(
    trainer_factory: Callable, tmp_path: Path, run_dir: Path
) -> None:
    own = TensorBoardLogger(log_dir=tmp_path / "board")
    trainer = trainer_factory(logger=True, callbacks=[own])
    assert sum(isinstance(callback, TensorBoardLogger) for callback in trainer.callbacks) == 1
    trainer.fit()
    assert len(event_files(tmp_path / "board")) == 1
    assert event_files(run_dir) == []
    assert steps_of(read_scalars(tmp_path / "board")["val/loss"]) == [5, 10]


def test_logger_instance_as_the_logger_argument_writes_to_its_folder(
    trainer_factory: Callable, tmp_path: Path
) -> None:
    trainer_factory(logger=TensorBoardLogger(log_dir=tmp_path / "board")).fit()
    assert steps_of(read_scalars(tmp_path / "board")["val/acc"]) == [5, 10]


def test_event_file_is_closed_and_readable_after_an_exception(
    trainer_factory: Callable, run_dir: Path
) -> None:
    def broken_metric(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("metric exploded")

    trainer = trainer_factory(logger=True, log_every_n_steps=1, metrics={"bad": broken_metric})
    with pytest.raises(RuntimeError, match="metric exploded"):
        trainer.fit()
    assert steps_of(read_scalars(run_dir)["train/loss"]) == [1, 2, 3, 4, 5]


def test_resume_continues_the_curves_without_duplicate_points(
    trainer_factory: Callable, run_dir: Path
) -> None:
    trainer_factory(logger=True, checkpoint=True, log_every_n_steps=5).fit()
    start_a_new_second()
    trainer_factory(logger=True, checkpoint=True, log_every_n_steps=5, max_epochs=3).fit(
        ckpt_path="last"
    )
    scalars = read_scalars(run_dir)
    assert steps_of(scalars["val/loss"]) == [5, 10, 15]
    assert steps_of(scalars["train/loss"]) == [5, 10, 15]


def test_resume_drops_points_written_after_the_checkpoint(
    trainer_factory: Callable, run_dir: Path
) -> None:
    """A run checkpointed at step 10 that went on to step 15 before it was stopped."""
    every_other_epoch = ModelCheckpoint(every_n_epochs=2)
    trainer_factory(logger=True, callbacks=[every_other_epoch], max_epochs=3).fit()
    assert steps_of(read_scalars(run_dir)["val/loss"]) == [5, 10, 15]

    start_a_new_second()
    resumed = trainer_factory(logger=True, checkpoint=True, max_epochs=3)
    history = resumed.fit(ckpt_path="last")
    points = read_scalars(run_dir)["val/loss"]
    assert steps_of(points) == [5, 10, 15]
    assert points[-1][1] == pytest.approx(history[-1]["val/loss"])
