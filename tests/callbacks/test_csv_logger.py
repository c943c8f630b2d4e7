"""`CSVLogger`: a row per logged step, a stable header, step and epoch figures in one row."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from trainer import Trainer
from trainer.callbacks import Callback, CSVLogger, ModelCheckpoint


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


class HeaderPerEpoch(Callback):
    """Reads the CSV header after each epoch, once the CSVLogger before it has written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.headers: list[list[str]] = []

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        self.headers.append(read_rows(self.path)[0])


def test_one_row_per_logged_step(trainer_factory: Callable, run_dir: Path) -> None:
    """5 batches x 2 epochs, logging every 2 steps: steps 2, 4, 6, 8, 10 and epoch ends 5, 10."""
    trainer_factory(callbacks=[CSVLogger()], log_every_n_steps=2).fit()
    header, rows = read_rows(run_dir / "version_0" / "metrics.csv")
    assert header[0] == "step"
    assert [int(row["step"]) for row in rows] == [2, 4, 5, 6, 8, 10]


def test_step_and_epoch_figures_of_one_step_share_a_row(
    trainer_factory: Callable, run_dir: Path
) -> None:
    trainer = trainer_factory(callbacks=[CSVLogger()], log_every_n_steps=5)
    history = trainer.fit()
    _, rows = read_rows(run_dir / "version_0" / "metrics.csv")
    assert [row["step"] for row in rows] == ["5", "10"]
    for row, record in zip(rows, history, strict=True):
        assert row["train/loss"] != ""
        assert float(row["val/loss"]) == pytest.approx(record["val/loss"])
        assert float(row["val/acc"]) == pytest.approx(record["val/acc"])
        assert float(row["train/loss_epoch"]) == pytest.approx(record["train/loss"])
        assert float(row["lr"]) == pytest.approx(0.1)


def test_rows_without_a_figure_leave_its_cell_empty(
    trainer_factory: Callable, run_dir: Path
) -> None:
    trainer_factory(callbacks=[CSVLogger()], log_every_n_steps=2).fit()
    _, rows = read_rows(run_dir / "version_0" / "metrics.csv")
    by_step = {int(row["step"]): row for row in rows}
    assert by_step[4]["val/loss"] == ""
    assert by_step[5]["train/loss"] == ""
    assert by_step[5]["val/loss"] != ""


def test_header_is_the_same_after_every_epoch(trainer_factory: Callable, run_dir: Path) -> None:
    path = run_dir / "version_0" / "metrics.csv"
    headers = HeaderPerEpoch(path)
    trainer_factory(callbacks=[CSVLogger(), headers], log_every_n_steps=2, max_epochs=3).fit()
    final_header, rows = read_rows(path)
    assert headers.headers == [final_header] * 3
    assert len(final_header) == len(set(final_header))
    assert {"step", "train/loss", "lr", "val/loss", "val/acc"} <= set(final_header)
    assert all(list(row) == final_header for row in rows)


def test_custom_path_is_used(trainer_factory: Callable, tmp_path: Path, run_dir: Path) -> None:
    path = tmp_path / "logs" / "figures.csv"
    trainer_factory(callbacks=[CSVLogger(path)], max_epochs=1).fit()
    assert [row["step"] for row in read_rows(path)[1]] == ["5"]
    assert not (run_dir / "version_0" / "metrics.csv").exists()
    assert not list(path.parent.glob(".*.tmp"))


def test_resume_keeps_rows_up_to_the_checkpoint_and_drops_later_ones(
    trainer_factory: Callable, run_dir: Path
) -> None:
    path = run_dir / "version_0" / "metrics.csv"
    trainer_factory(callbacks=[CSVLogger()], checkpoint=True, log_every_n_steps=5).fit()
    with path.open("a", newline="") as file:  # a row a killed run wrote after its checkpoint
        file.write("12,99.0,0.1,,,,\n")

    trainer_factory(
        callbacks=[CSVLogger()], checkpoint=True, log_every_n_steps=5, max_epochs=3
    ).fit(ckpt_path="last")
    _, rows = read_rows(path)
    assert [row["step"] for row in rows] == ["5", "10", "15"]
    assert all(row["train/loss"] != "99.0" for row in rows)


def test_every_row_up_to_a_checkpoint_is_on_disk_before_the_checkpoint(
    trainer_factory: Callable, run_dir: Path
) -> None:
    """A run killed right after a mid-epoch checkpoint keeps the rows before it."""

    class ReadsAtSave(Callback):
        def __init__(self) -> None:
            self.seen: dict[int, list[str]] = {}

        def on_save_checkpoint(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None:
            rows = read_rows(run_dir / "version_0" / "metrics.csv")[1]
            self.seen[trainer.global_step] = [row["step"] for row in rows]

    reader = ReadsAtSave()
    trainer_factory(
        callbacks=[CSVLogger(), reader, ModelCheckpoint(every_n_steps=3)],
        log_every_n_steps=1,
        max_epochs=1,
    ).fit()
    assert reader.seen[3] == ["1", "2", "3"]


def test_a_checkpoint_right_after_the_epoch_end_write_does_not_rewrite_the_file(
    trainer_factory: Callable, run_dir: Path
) -> None:
    class FileAtEpochEndAndSave(Callback):
        def __init__(self) -> None:
            self.files: list[tuple[str, int]] = []

        def on_train_epoch_end(self, trainer: Trainer) -> None:
            self.files.append(("epoch end", (run_dir / "version_0" / "metrics.csv").stat().st_ino))

        def on_save_checkpoint(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None:
            self.files.append(("save", (run_dir / "version_0" / "metrics.csv").stat().st_ino))

    watcher = FileAtEpochEndAndSave()
    trainer_factory(callbacks=[CSVLogger(), watcher], checkpoint=True, max_epochs=2).fit()
    kinds = [kind for kind, _ in watcher.files]
    assert kinds == ["epoch end", "save", "epoch end", "save"]
    # Each write renames a new file into place; the save found the epoch end's file as it was.
    assert watcher.files[0][1] == watcher.files[1][1]
    assert watcher.files[2][1] == watcher.files[3][1]
    assert watcher.files[1][1] != watcher.files[2][1]
    rows = read_rows(run_dir / "version_0" / "metrics.csv")[1]
    assert [row["step"] for row in rows] == ["5", "10"]


def test_on_by_default_and_off_with_logger_false(trainer_factory: Callable, run_dir: Path) -> None:
    trainer_factory(logger=True, max_epochs=1).fit()
    assert [row["step"] for row in read_rows(run_dir / "version_0" / "metrics.csv")[1]] == ["5"]
    (run_dir / "version_0" / "metrics.csv").unlink()
    trainer_factory(logger=False, max_epochs=1).fit()
    assert not (run_dir / "version_0" / "metrics.csv").exists()


def test_default_logger_rows_hold_throughput_and_every_figure(
    trainer_factory: Callable, run_dir: Path
) -> None:
    trainer_factory(logger=True, log_every_n_steps=5, max_epochs=1).fit()
    header, [row] = read_rows(run_dir / "version_0" / "metrics.csv")
    assert header == [
        "step", "train/loss", "train/samples_per_sec", "lr",
        "train/loss_epoch", "epoch", "val/loss", "val/acc",
    ]  # fmt: skip
    assert all(row[name] != "" for name in header)
