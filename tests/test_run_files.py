"""A run's files: runs that share a `run_dir` never lose each other's files, `"last"`
continues the most recent one in its own `version_N` folder, skipping damaged files for the
reason each is named, `"best"` says what it needs, dead saves' files are swept, and each
failure is an error of its own type."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import make_loader, make_trainer
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from trainer import Trainer, TrainingInterrupted
from trainer.callbacks import Callback, ModelCheckpoint
from trainer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from trainer.run_files import (
    NoBestCheckpointError,
    NoCheckpointError,
    NoValidCheckpointError,
    claim_new_version,
    find_checkpoint,
)


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


def fit_three_epochs(run_dir: Path) -> list[Path]:
    """Train 3 epochs with the default checkpoint; return its files, newest first."""
    make_trainer(run_dir, checkpoint=True, max_epochs=3).fit()
    folder = run_dir / "version_0" / "checkpoints"
    # Only finished files, rotated to the two newest: no temporaries, no older states.
    names = sorted(path.name for path in folder.iterdir())
    assert names == ["last-epoch=1-step=10.ckpt", "last-epoch=2-step=15.ckpt"]
    return [folder / name for name in reversed(names)]


# ------------------------------------------------------------------ finding "last", "best"
def test_best_says_what_it_needs(run_dir: Path) -> None:
    with pytest.raises(NoCheckpointError, match=r"no checkpoint in .*, so no best one either"):
        make_trainer(run_dir).fit(ckpt_path="best")
    make_trainer(run_dir, checkpoint=True, max_epochs=1).fit()
    needs = r"'best' needs a ModelCheckpoint\(monitor=\.\.\.\)"
    with pytest.raises(NoBestCheckpointError, match=needs):
        make_trainer(run_dir).fit(ckpt_path="best")


def test_best_loads_the_file_the_callbacks_declared_best(run_dir: Path) -> None:
    ranked = ModelCheckpoint(monitor="val/loss", save_top_k=1)
    trainer = make_trainer(run_dir, callbacks=[ranked], max_epochs=3)
    trainer.fit()
    saved = load_checkpoint(ranked.last_model_path)
    assert saved["best_checkpoint"] == ranked.best_model_path
    path, _ = find_checkpoint("best", trainer.checkpoint_dir)
    assert str(path) == ranked.best_model_path


def test_loading_weights_without_any_checkpoint_is_a_no_checkpoint_error(run_dir: Path) -> None:
    with pytest.raises(NoCheckpointError, match=f"no checkpoint in {run_dir} to load"):
        make_trainer(run_dir).validate(make_loader(), ckpt_path="last")


def test_last_without_a_checkpoint_starts_fresh_with_a_notice(
    trainer_factory: Callable, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = trainer_factory(checkpoint=True)
    history = trainer.fit(ckpt_path="last")
    notice = capsys.readouterr().out
    assert f"No checkpoint in {run_dir} yet; starting from scratch." in notice
    assert len(history) == 2
    assert trainer.global_step == 10


@pytest.mark.parametrize("damage", ["truncate-0", "truncate-50", "truncate-99", "bit-flip"])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one(
    run_dir: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    newest, previous = fit_three_epochs(run_dir)
    data = newest.read_bytes()
    if damage == "bit-flip":
        position = len(data) - 7  # inside the tensor data, past the header
        data = data[:position] + bytes([data[position] ^ 0x10]) + data[position + 1 :]
    else:
        data = data[: len(data) * int(damage.split("-")[1]) // 100]
    newest.write_bytes(data)

    path, checkpoint = find_checkpoint("last", run_dir / "version_0" / "checkpoints")
    assert path == previous
    assert checkpoint["state"]["global_step"] == 10
    assert f"Skipping checkpoint {newest}" in capsys.readouterr().err

    resumed = make_trainer(run_dir, max_epochs=3)
    resumed.fit(ckpt_path="last")
    assert resumed.global_step == 15


def test_last_falls_back_to_a_ranked_checkpoint_of_the_same_step(
    trainer_factory: Callable, run_dir: Path
) -> None:
    """The contract: "last" is the newest *valid* checkpoint of run_dir, ranked ones included."""
    ranked = ModelCheckpoint(monitor="train/loss", save_top_k=-1)
    trainer_factory(callbacks=[ranked], max_epochs=2).fit()
    folder = run_dir / "version_0" / "checkpoints"
    newest = folder / "last-epoch=1-step=10.ckpt"
    newest.write_bytes(newest.read_bytes()[:100])
    assert find_checkpoint("last", folder)[0] == folder / "epoch=1-step=10.ckpt"

    resumed = trainer_factory(checkpoint=True, max_epochs=3)
    history = resumed.fit(ckpt_path="last")
    assert [record["epoch"] for record in history] == [2.0]
    assert resumed.global_step == 15


def test_no_valid_checkpoint_is_an_error_listing_every_file_and_why(run_dir: Path) -> None:
    for path in fit_three_epochs(run_dir):
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(NoValidCheckpointError) as info:
        make_trainer(run_dir).fit(ckpt_path="last")
    message = str(info.value)
    assert isinstance(info.value, CheckpointError)  # what older code catches still works
    assert "no valid checkpoint" in message
    assert "last-epoch=2-step=15.ckpt" in message and "last-epoch=1-step=10.ckpt" in message
    assert "truncated" in message


def test_last_skips_a_malformed_newest_checkpoint_for_the_previous_one(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_trainer(run_dir, checkpoint=True).fit()
    folder = run_dir / "version_0" / "checkpoints"
    saved = load_checkpoint(folder / "last-epoch=1-step=10.ckpt")
    bad = save_checkpoint({"model": saved["model"]}, folder / "last-epoch=2-step=15.ckpt")
    resumed = make_trainer(run_dir, checkpoint=True, max_epochs=3)
    resumed.fit(ckpt_path="last")
    assert f"Skipping checkpoint {bad}: checkpoint {bad} is not a run checkpoint" in (
        capsys.readouterr().err
    )
    assert resumed.global_step == 15  # resumed at step 10, then trained the third epoch
    assert resumed.log_dir == run_dir / "version_0"


# ------------------------------------------------------------------------- stale temporaries
def test_fit_removes_temporary_files_of_dead_writers_and_keeps_live_ones(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname().replace(".", "_")
    name = ".last-epoch=0-step=5.ckpt"
    of_dead = folder / f"{name}.{dead.pid}@{host}.k2j4h5g1.tmp"
    of_this_process = folder / f"{name}.{os.getpid()}@{host}.a8s7d6f5.tmp"  # not in flight
    of_a_live_process = folder / f"{name}.{os.getppid()}@{host}.q1w2e3r4.tmp"
    of_another_host = folder / f"{name}.{dead.pid}@elsewhere.z9x8c7v6.tmp"
    of_an_older_trainer = folder / f"{name}.abcdefgh.tmp"
    for path in (of_dead, of_this_process, of_a_live_process, of_another_host, of_an_older_trainer):
        path.write_bytes(b"half a checkpoint")

    make_trainer(run_dir, checkpoint=ModelCheckpoint(dirpath=folder), max_epochs=1).fit()
    assert not of_dead.exists() and not of_this_process.exists()
    assert of_a_live_process.exists() and of_another_host.exists()
    assert of_an_older_trainer.exists()  # names no writer: left alone
    notice = f"removed 2 temporary file(s) of interrupted saves from {folder}"
    assert notice in capsys.readouterr().err
    assert (folder / "last-epoch=0-step=5.ckpt").is_file()
