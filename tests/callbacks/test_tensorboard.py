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

    scalars = read_scalars(run_dir / "version_0")
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
    scalars = read_scalars(run_dir / "version_0")
    assert "train/loss" not in scalars
    assert steps_of(scalars["train/loss_epoch"]) == [5, 10]
    assert steps_of(scalars["val/loss"]) == [5, 10]
    assert steps_of(scalars["lr"]) == [5, 10]


def test_every_step_logged_with_log_every_n_steps_one(
    trainer_factory: Callable, run_dir: Path
) -> None:
    trainer_factory(logger=True, log_every_n_steps=1, max_epochs=1).fit()
    scalars = read_scalars(run_dir / "version_0")
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
    written = dict(read_scalars(run_dir / "version_0")["train/loss"])
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

    trainer = trainer_factory(  # no sanity pass: the metric first fails after an epoch
        logger=True, log_every_n_steps=1, metrics={"bad": broken_metric}, num_sanity_val_steps=0
    )
    with pytest.raises(RuntimeError, match="metric exploded"):
        trainer.fit()
    assert steps_of(read_scalars(run_dir / "version_0")["train/loss"]) == [1, 2, 3, 4, 5]


def test_resume_continues_the_curves_without_duplicate_points(
    trainer_factory: Callable, run_dir: Path
) -> None:
    trainer_factory(logger=True, checkpoint=True, log_every_n_steps=5).fit()
    start_a_new_second()
    trainer_factory(logger=True, checkpoint=True, log_every_n_steps=5, max_epochs=3).fit(
        ckpt_path="last"
    )
    scalars = read_scalars(run_dir / "version_0")
    assert steps_of(scalars["val/loss"]) == [5, 10, 15]
    assert steps_of(scalars["train/loss"]) == [5, 10, 15]


def test_resume_drops_points_written_after_the_checkpoint(
    trainer_factory: Callable, run_dir: Path
) -> None:
    """A run checkpointed at step 10 that went on to step 15 before it was stopped."""
    every_other_epoch = ModelCheckpoint(every_n_epochs=2)
    trainer_factory(logger=True, callbacks=[every_other_epoch], max_epochs=3).fit()
    assert steps_of(read_scalars(run_dir / "version_0")["val/loss"]) == [5, 10, 15]
    next((run_dir / "version_0" / "checkpoints").glob("last-*-step=15.ckpt")).unlink()

    start_a_new_second()
    resumed = trainer_factory(logger=True, checkpoint=True, max_epochs=3)
    history = resumed.fit(ckpt_path="last")
    points = read_scalars(run_dir / "version_0")["val/loss"]
    assert steps_of(points) == [5, 10, 15]
    assert points[-1][1] == pytest.approx(history[-1]["val/loss"])


def read_events(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0, "histograms": 0})
    events.Reload()
    return events


# Written at step 0, and once the first epoch (5 steps) has logged every figure.
RUN_DESCRIPTION = {
    "_hparams_/session_start_info": 0,
    "config/text_summary": 0,
    "custom_scalars__config__": 0,  # SummaryWriter writes a layout at step 0
    "_hparams_/experiment": 5,
}


def test_a_fresh_run_describes_itself_once_and_a_resume_adds_nothing(
    trainer_factory: Callable, run_dir: Path
) -> None:
    trainer_factory(logger=True, checkpoint=True, hparams={"optimizer": {"lr": 0.1}}).fit()
    start_a_new_second()
    trainer_factory(logger=True, checkpoint=True, max_epochs=3).fit(ckpt_path="last")
    events = read_events(run_dir / "version_0")
    for tag, step in RUN_DESCRIPTION.items():
        assert [event.step for event in events.Tensors(tag)] == [step], tag
    [text] = events.Tensors("config/text_summary")
    assert text.tensor_proto.string_val[0].decode() == "    optimizer:\n      lr: 0.1"
    assert events.SummaryMetadata("_hparams_/session_start_info").plugin_data.plugin_name == (
        "hparams"
    )


def test_epoch_is_left_to_the_csv_and_the_history(
    trainer_factory: Callable, run_dir: Path
) -> None:
    history = trainer_factory(logger=True, max_epochs=1).fit()
    assert "epoch" in history[0]
    assert "epoch" not in read_scalars(run_dir / "version_0")


def test_log_hparams_false_writes_no_hparams_or_config(
    trainer_factory: Callable, run_dir: Path
) -> None:
    trainer_factory(logger=TensorBoardLogger(log_hparams=False), max_epochs=1).fit()
    tensors = read_events(run_dir / "version_0").Tags()["tensors"]
    assert tensors == ["custom_scalars__config__"]


def test_histograms_of_weights_and_gradients_every_n_epochs(
    trainer_factory: Callable, run_dir: Path
) -> None:
    """5 batches per epoch: epochs 2 and 4 end at steps 10 and 20."""
    logger = TensorBoardLogger(histogram_every_n_epochs=2)
    trainer_factory(logger=logger, max_epochs=4).fit()
    events = read_events(run_dir / "version_0")
    names = {"0.weight", "0.bias", "3.weight", "3.bias"}
    assert set(events.Tags()["histograms"]) == {
        f"{kind}/{name}" for kind in ("weights", "gradients") for name in names
    }
    for tag in ("weights/0.weight", "gradients/3.bias"):
        assert [event.step for event in events.Histograms(tag)] == [10, 20], tag
    assert events.Histograms("weights/0.weight")[0].histogram_value.num == 32 * 64


def test_no_histograms_unless_asked(trainer_factory: Callable, run_dir: Path) -> None:
    trainer_factory(logger=True, max_epochs=1).fit()
    assert read_events(run_dir / "version_0").Tags()["histograms"] == []


@pytest.mark.parametrize("every", [0, -2, 1.5, True])
def test_histogram_interval_must_be_a_positive_integer(every: object) -> None:
    with pytest.raises(ValueError, match="histogram_every_n_epochs must be a positive integer"):
        TensorBoardLogger(histogram_every_n_epochs=every)  # type: ignore[arg-type]


def test_every_point_up_to_a_checkpoint_is_on_disk_before_the_checkpoint(
    trainer_factory: Callable, run_dir: Path
) -> None:
    """A run killed right after a mid-epoch checkpoint must not lose points before it."""

    class ReadsAtSave(Callback):
        def __init__(self) -> None:
            self.seen: dict[int, list[int]] = {}

        def on_save_checkpoint(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None:
            written = read_scalars(trainer.log_dir)["train/loss"]
            self.seen[trainer.global_step] = steps_of(written)

    reader = ReadsAtSave()
    trainer_factory(
        logger=True,
        log_every_n_steps=1,
        max_epochs=1,
        callbacks=[reader, ModelCheckpoint(every_n_steps=3, save_last=True)],
    ).fit()
    assert reader.seen[3] == [1, 2, 3]


def test_throughput_and_grad_norm_are_scalars_when_logged(
    trainer_factory: Callable, run_dir: Path
) -> None:
    trainer_factory(logger=True, log_every_n_steps=2, gradient_clip_val=1.0).fit()
    scalars = read_scalars(run_dir / "version_0")
    assert steps_of(scalars["train/samples_per_sec"]) == [2, 4, 6, 8, 10]
    assert steps_of(scalars["train/grad_norm"]) == [2, 4, 6, 8, 10]
    assert all(value > 0 for _, value in scalars["train/samples_per_sec"])


@pytest.mark.parametrize(
    ("callbacks", "has_validation", "log_every_n_steps", "pinned"),
    [
        ([], True, 2, ["val/loss", "train/loss"]),
        ([ModelCheckpoint(monitor="val/acc", mode="max")], True, 2,
         ["val/acc", "val/loss", "train/loss"]),
        ([ModelCheckpoint(monitor="val/loss")], True, 2, ["val/loss", "train/loss"]),
        ([ModelCheckpoint(monitor="train/loss")], False, 2, ["train/loss"]),
        ([], False, 2, ["train/loss"]),
        ([], True, 50, ["val/loss", "train/loss_epoch"]),  # no log step in 10 steps
    ],
)  # fmt: skip
def test_time_series_address_pins_the_monitored_metric_and_the_losses_that_were_logged(
    trainer_factory: Callable, run_dir: Path, callbacks: list, has_validation: bool,
    log_every_n_steps: int, pinned: list[str],
) -> None:  # fmt: skip
    import json
    import urllib.parse

    overrides = {} if has_validation else {"val_loader": None}
    logger = TensorBoardLogger()
    trainer = trainer_factory(
        logger=logger, callbacks=callbacks, log_every_n_steps=log_every_n_steps, **overrides
    )
    trainer.fit()
    address = urllib.parse.urlsplit(logger.time_series_url(trainer, port=6123))
    assert (address.netloc, address.fragment) == ("localhost:6123", "timeseries")
    (cards,) = urllib.parse.parse_qs(address.query)["pinnedCards"]
    assert json.loads(cards) == [{"plugin": "scalars", "tag": tag} for tag in pinned]
    assert set(pinned) <= read_scalars(run_dir / "version_0").keys()


def test_no_time_series_address_before_anything_was_logged(trainer_factory: Callable) -> None:
    logger = TensorBoardLogger()
    assert logger.time_series_url(trainer_factory(logger=logger)) is None
