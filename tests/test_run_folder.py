"""Run folders: runs that share a `run_dir` never lose each other's files, and `"last"`
continues the most recent one, in its own `version_N` folder."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import make_loader, make_trainer
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from trainer import Trainer, TrainingInterrupted
from trainer.callbacks import Callback, ModelCheckpoint
from trainer.checkpoint import find_checkpoint, load_checkpoint
from trainer.run_folder import claim_new_version


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` by relative path, with its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def logged_trainer(run_dir: Path, **overrides: Any) -> Trainer:
    """A quiet trainer with the default checkpoint and loggers on: 5 steps an epoch."""
    options: dict[str, Any] = {"checkpoint": True, "logger": True, "log_every_n_steps": 1}
    return make_trainer(run_dir, **(options | overrides))


def test_two_runs_from_scratch_in_one_run_dir_keep_all_files_of_both(run_dir: Path) -> None:
    first = logged_trainer(run_dir)
    first.fit()
    files_of_first = files_under(run_dir / "version_0")
    second = logged_trainer(run_dir)
    second.fit()

    assert first.log_dir == run_dir / "version_0"
    assert second.log_dir == run_dir / "version_1"
    assert second.checkpoint_dir == run_dir / "version_1" / "checkpoints"
    assert files_under(run_dir / "version_0") == files_of_first
    for run in ("version_0", "version_1"):
        names = sorted(path.name for path in (run_dir / run / "checkpoints").iterdir())
        assert names == ["last-epoch=0-step=5.ckpt", "last-epoch=1-step=10.ckpt"]
        assert (run_dir / run / "metrics.csv").is_file()
    # TensorBoard pointed at run_dir lists one run per version.
    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(run_dir))
    multiplexer.Reload()
    assert set(multiplexer.Runs()) == {"version_0", "version_1"}
    for run in ("version_0", "version_1"):
        steps = [event.step for event in multiplexer.Scalars(run, "train/loss")]
        assert steps == list(range(1, 11))


def test_last_continues_the_most_recent_run_in_its_own_folder(run_dir: Path) -> None:
    logged_trainer(run_dir).fit()
    logged_trainer(run_dir, max_epochs=1).fit()
    resumed = logged_trainer(run_dir, max_epochs=3)
    resumed.fit(ckpt_path="last")

    assert resumed.log_dir == run_dir / "version_1"
    assert resumed.global_step == 15  # version_1 stopped after one epoch: two more
    assert sorted(path.name for path in run_dir.iterdir()) == ["version_0", "version_1"]
    names = sorted(path.name for path in resumed.checkpoint_dir.iterdir())
    assert names == ["last-epoch=1-step=10.ckpt", "last-epoch=2-step=15.ckpt"]
    assert len(list((run_dir / "version_0" / "checkpoints").iterdir())) == 2


def test_a_trainer_keeps_its_folder_for_later_calls(run_dir: Path) -> None:
    trainer = logged_trainer(run_dir)
    trainer.fit()
    logged_trainer(run_dir, max_epochs=1).fit()  # another run starts meanwhile: version_1
    trainer.max_epochs = 3
    trainer.fit(ckpt_path="last")
    assert trainer.log_dir == run_dir / "version_0"
    assert find_checkpoint("last", trainer.checkpoint_dir)[0].name == "last-epoch=2-step=15.ckpt"
    assert "test/loss" in trainer.test(make_loader(), ckpt_path="last")


def test_an_explicit_checkpoint_continues_in_its_own_run_and_one_elsewhere_starts_a_new_one(
    run_dir: Path, tmp_path: Path
) -> None:
    logged_trainer(run_dir).fit()
    logged_trainer(run_dir).fit()
    older = run_dir / "version_0" / "checkpoints" / "last-epoch=0-step=5.ckpt"
    into_old = logged_trainer(run_dir)
    into_old.fit(ckpt_path=older)
    assert into_old.log_dir == run_dir / "version_0"

    elsewhere = logged_trainer(tmp_path / "other")
    elsewhere.fit(ckpt_path=run_dir / "version_1" / "checkpoints" / "last-epoch=0-step=5.ckpt")
    assert elsewhere.log_dir == tmp_path / "other" / "version_0"
    assert elsewhere.global_step == 10


def test_constructing_validating_and_testing_create_no_folder(run_dir: Path) -> None:
    trainer = logged_trainer(run_dir)
    assert trainer.log_dir is None and trainer.checkpoint_dir is None
    trainer.validate()
    trainer.test(make_loader())
    assert not run_dir.exists()

    logged_trainer(run_dir).fit()
    logged_trainer(run_dir, max_epochs=1).fit()
    reader = logged_trainer(run_dir)
    reader.test(make_loader(), ckpt_path="last")  # resolves across versions: version_1's
    assert reader.log_dir is None
    assert sorted(path.name for path in run_dir.iterdir()) == ["version_0", "version_1"]


def test_versions_claimed_at_the_same_moment_are_all_different(tmp_path: Path) -> None:
    (tmp_path / "version_4").mkdir()
    (tmp_path / "version_notes").mkdir()  # not a version: ignored
    claimed: list[Path] = []
    start = threading.Barrier(8)

    def claim() -> None:
        start.wait()
        claimed.append(claim_new_version(tmp_path))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(int(path.name.split("_")[1]) for path in claimed) == list(range(5, 13))


def test_rotation_after_resuming_an_older_checkpoint_keeps_the_new_files(tmp_path: Path) -> None:
    """Saves are ranked by when they were saved: the abandoned branch's higher steps lose."""
    folder = tmp_path / "checkpoints"
    every_epoch = ModelCheckpoint(dirpath=folder, keep_last=4)
    make_trainer(tmp_path / "run", checkpoint=every_epoch, max_epochs=4).fit()  # steps 5..20
    every_step = ModelCheckpoint(dirpath=folder, every_n_steps=1, every_n_epochs=0, keep_last=2)
    resumed = make_trainer(tmp_path / "run", checkpoint=every_step, max_epochs=4, max_steps=13)
    resumed.fit(ckpt_path=folder / "last-epoch=1-step=10.ckpt")

    names = sorted(path.name for path in folder.iterdir())
    assert names == ["last-epoch=2-step=12.ckpt", "last-epoch=2-step=13.ckpt"]
    path, checkpoint = find_checkpoint("last", folder)
    assert path.name == "last-epoch=2-step=13.ckpt"
    assert checkpoint["state"]["global_step"] == 13


class InterruptAt(Callback):
    """Sends this process a signal once training reaches optimizer step `step`."""

    def __init__(self, step: int, signum: int = signal.SIGINT) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_ctrl_c_in_fit_raises_training_interrupted_and_the_trainer_stays_usable(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = make_trainer(run_dir, checkpoint=True, max_epochs=3, callbacks=[InterruptAt(7)])
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit()
    stop = info.value
    assert isinstance(stop, KeyboardInterrupt)
    assert (stop.signum, stop.exit_code) == (signal.SIGINT, 130)
    expected = (run_dir / "version_0" / "checkpoints" / "last-epoch=1-step=7.ckpt").resolve()
    assert stop.checkpoint_path == expected and expected.is_file()
    assert load_checkpoint(expected)["state"]["global_step"] == 7
    assert f"saved {expected}" in capsys.readouterr().err

    assert "test/loss" in trainer.test(make_loader(), ckpt_path="last")
    trainer.fit(ckpt_path=stop.checkpoint_path)
    assert trainer.global_step == 15 and trainer.log_dir == run_dir / "version_0"
