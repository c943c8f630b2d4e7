"""Checkpoint saves that finish in the background: they land in order, before `fit`
returns and before the process exits, a failure surfaces without losing earlier files, and
each queue belongs to its owner: two trainers never wait on each other's writes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO_ROOT, make_trainer

from trainer import Trainer
from trainer.background import BackgroundWrites
from trainer.callbacks import Callback, ModelCheckpoint
from trainer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _hold_pending_writes(writes: BackgroundWrites) -> threading.Event:
    """Queue a job on `writes` that blocks every later one until the returned event is set."""
    release = threading.Event()
    writes.after_pending(lambda: release.wait(timeout=30) or None)
    return release


def test_a_save_without_waiting_returns_before_its_file_is_in_place(tmp_path: Path) -> None:
    writes = BackgroundWrites()
    release = _hold_pending_writes(writes)
    target = tmp_path / "last.ckpt"
    try:
        save_checkpoint({"w": torch.arange(4.0)}, target, writes, wait=False)
        assert not target.exists()  # written to a temporary file, rename still queued
        assert [path.name.startswith(".last.ckpt.") for path in tmp_path.iterdir()] == [True]
    finally:
        release.set()
    writes.wait()
    assert torch.equal(load_checkpoint(target)["w"], torch.arange(4.0))
    assert [path.name for path in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_trainer_loading_a_checkpoint_waits_for_its_own_pending_save(run_dir: Path) -> None:
    trainer = make_trainer(run_dir)
    release = _hold_pending_writes(trainer.run_files.writes)
    target = run_dir / "held.ckpt"
    trainer.save_checkpoint(target, wait=False)
    assert not target.exists()
    threading.Timer(0.2, release.set).start()
    trainer.load_weights(target)  # returns once the held rename has put the file in place
    assert target.is_file()


def test_saves_land_in_the_order_they_were_made(tmp_path: Path) -> None:
    writes = BackgroundWrites()
    release = _hold_pending_writes(writes)
    target = tmp_path / "last.ckpt"
    for value in range(3):
        save_checkpoint({"value": value}, target, writes, wait=False)
    release.set()
    save_checkpoint({"value": 3}, target, writes)  # waits for the three before it, lands last
    assert load_checkpoint(target)["value"] == 3
    assert [path.name for path in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_process_that_exits_after_a_save_without_waiting_still_lands_it(
    tmp_path: Path,
) -> None:
    target = tmp_path / "last.ckpt"
    script = textwrap.dedent(
        f"""
        import torch
        from trainer.background import BackgroundWrites
        from trainer.checkpoint import save_checkpoint
        writes = BackgroundWrites()
        save_checkpoint({{"w": torch.ones(1_000_000)}}, {str(target)!r}, writes, wait=False)
        """
    )
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run([sys.executable, "-c", script], check=True, env=environment, timeout=120)
    assert torch.equal(load_checkpoint(target)["w"], torch.ones(1_000_000))


def _block_checkpoint_path(folder: Path, name: str) -> Path:
    """A non-empty folder where a checkpoint file must go: the rename into place fails."""
    blocker = folder / name
    blocker.mkdir(parents=True)
    (blocker / "keep.txt").write_text("in the way")
    return blocker


def test_a_rename_that_fails_in_the_background_fails_fit_and_keeps_earlier_files(
    run_dir: Path,
) -> None:
    folder = run_dir / "checkpoints"
    # 5 steps an epoch, 2 epochs
    trainer = make_trainer(run_dir, checkpoint=ModelCheckpoint(dirpath=folder))
    _block_checkpoint_path(folder, "last-epoch=1-step=10.ckpt")
    with pytest.raises(CheckpointError, match=r"could not save checkpoint .*step=10\.ckpt"):
        trainer.fit()
    assert sorted(path.name for path in folder.iterdir()) == [
        "last-epoch=0-step=5.ckpt",
        "last-epoch=1-step=10.ckpt",  # still the folder that was in the way
    ]
    assert load_checkpoint(folder / "last-epoch=0-step=5.ckpt")["state"]["global_step"] == 5
    trainer.run_files.writes.wait()  # the failure was raised once, by fit, and not again


class FailsInSecondEpoch(Trainer):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.epoch == 1:
            raise RuntimeError("a bug in the second epoch")
        return super().training_step(batch, batch_idx)


def test_a_failed_background_save_is_reported_without_hiding_the_runs_own_error(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = run_dir / "checkpoints"
    checkpoint = ModelCheckpoint(dirpath=folder)
    trainer = make_trainer(run_dir, trainer_class=FailsInSecondEpoch, checkpoint=checkpoint)
    _block_checkpoint_path(folder, "last-epoch=0-step=5.ckpt")
    with pytest.raises(RuntimeError, match="a bug in the second epoch"):
        trainer.fit()
    assert "could not save checkpoint" in capsys.readouterr().err
    assert not [path for path in (run_dir / "checkpoints").iterdir() if path.is_file()]


class SlowSteps(Callback):
    """A few milliseconds a batch: a rename in the background is long done by the next step."""

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        time.sleep(0.01)


def test_a_rename_that_fails_in_the_background_stops_fit_at_the_next_log_step(
    run_dir: Path,
) -> None:
    folder = run_dir / "checkpoints"
    _block_checkpoint_path(folder, "last-epoch=0-step=5.ckpt")
    trainer = make_trainer(
        run_dir, checkpoint=ModelCheckpoint(dirpath=folder), max_epochs=4, log_every_n_steps=1,
        callbacks=[SlowSteps()],
    )  # fmt: skip
    with pytest.raises(CheckpointError, match=r"could not save checkpoint .*step=5\.ckpt"):
        trainer.fit()
    # Raised in the second epoch, where training was, not when fit ended at step 20.
    assert 5 < trainer.global_step < 10


def test_the_next_save_raises_an_earlier_background_failure_before_writing(
    tmp_path: Path,
) -> None:
    writes = BackgroundWrites()
    blocked = _block_checkpoint_path(tmp_path, "first.ckpt")
    save_checkpoint({"w": torch.ones(3)}, blocked, writes, wait=False)
    finished = threading.Event()
    writes.after_pending(finished.set)  # runs once the failing rename has run
    assert finished.wait(timeout=30)
    with pytest.raises(CheckpointError, match=r"could not save checkpoint .*first\.ckpt"):
        save_checkpoint({"w": torch.ones(3)}, tmp_path / "second.ckpt", writes)
    assert not (tmp_path / "second.ckpt").exists()
    writes.wait()  # raised once, not again


def test_two_trainers_in_one_process_do_not_wait_on_each_others_writes(
    tmp_path: Path,
) -> None:
    held = make_trainer(tmp_path / "held")
    release = _hold_pending_writes(held.run_files.writes)
    try:
        other = make_trainer(tmp_path / "other", checkpoint=True, max_epochs=1)
        other.fit()  # waits for its own saves only
        assert (other.checkpoint_dir / "last-epoch=0-step=5.ckpt").is_file()
        assert not release.is_set()  # the held queue is still blocked
    finally:
        release.set()
    held.run_files.writes.wait()


def test_a_failure_in_one_trainers_writes_is_raised_by_that_trainer_only(
    tmp_path: Path,
) -> None:
    failing = make_trainer(tmp_path / "failing")
    blocked = _block_checkpoint_path(tmp_path / "failing", "blocked.ckpt")
    failing.save_checkpoint(blocked, wait=False)
    other = make_trainer(tmp_path / "other", checkpoint=True, max_epochs=1)
    other.fit()
    with pytest.raises(CheckpointError, match=r"could not save checkpoint .*blocked\.ckpt"):
        failing.run_files.writes.wait()
