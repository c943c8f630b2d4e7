"""`ModelCheckpoint`: last-state files and their rotation, top-k ranking, mid-epoch saves,
missing monitors."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import scripted_trainer

from trainer import Trainer, TrainingInterrupted
from trainer.callbacks import Callback, MissingMetricError, ModelCheckpoint
from trainer.checkpoint import load_checkpoint


def files_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_default_checkpoint_writes_last_state_files_under_run_dir(
    trainer_factory: Callable, run_dir: Path
) -> None:
    trainer = trainer_factory(checkpoint=True)
    trainer.fit()
    folder = run_dir / "version_0" / "checkpoints"
    assert files_in(folder) == ["last-epoch=0-step=5.ckpt", "last-epoch=1-step=10.ckpt"]
    saved = load_checkpoint(folder / "last-epoch=1-step=10.ckpt")
    assert set(saved) == {
        "model", "optimizers", "schedulers", "precision", "state", "ranks", "data",
        "callbacks", "best_checkpoint", "trainer",
    }  # fmt: skip
    # Saved at the end of epoch 1, which is finished: a resumed run starts epoch 2.
    assert (saved["state"]["epoch"], saved["state"]["is_epoch_finished"]) == (1, True)
    assert saved["state"]["global_step"] == 10
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(saved["model"][name], tensor), name


def test_best_model_epoch_and_score_are_none_before_a_ranked_save() -> None:
    checkpoint = ModelCheckpoint(monitor="val/loss")
    assert (checkpoint.best_model_epoch, checkpoint.best_model_score) == (None, None)


def test_checkpoint_false_writes_nothing(trainer_factory: Callable, run_dir: Path) -> None:
    trainer_factory(checkpoint=False).fit()
    assert not (run_dir / "version_0" / "checkpoints").exists()


def test_a_checkpoint_in_callbacks_replaces_the_default(
    trainer_factory: Callable, tmp_path: Path, run_dir: Path
) -> None:
    own = ModelCheckpoint(dirpath=tmp_path / "elsewhere")
    trainer = trainer_factory(checkpoint=True, callbacks=[own])
    assert sum(isinstance(callback, ModelCheckpoint) for callback in trainer.callbacks) == 1
    trainer.fit()
    assert files_in(tmp_path / "elsewhere") == [
        "last-epoch=0-step=5.ckpt",
        "last-epoch=1-step=10.ckpt",
    ]
    assert not (run_dir / "version_0" / "checkpoints").exists()


def test_top_k_keeps_exactly_k_files_named_by_epoch_and_step(run_dir: Path) -> None:
    checkpoint = ModelCheckpoint(monitor="val/loss", save_top_k=2)
    trainer = scripted_trainer(run_dir, {"loss": [0.5, 0.3, 0.4, 0.2, 0.6]}, callbacks=[checkpoint])
    trainer.fit()
    folder = run_dir / "version_0" / "checkpoints"
    assert files_in(folder) == [
        "epoch=1-step=10.ckpt",
        "epoch=3-step=20.ckpt",
        "last-epoch=3-step=20.ckpt",
        "last-epoch=4-step=25.ckpt",
    ]
    assert checkpoint.best_model_path == str(folder / "epoch=3-step=20.ckpt")
    assert (checkpoint.best_model_epoch, checkpoint.best_model_score) == (3, pytest.approx(0.2))
    assert checkpoint.best_k == {
        str(folder / "epoch=1-step=10.ckpt"): pytest.approx(0.3),
        str(folder / "epoch=3-step=20.ckpt"): pytest.approx(0.2),
    }
    best = load_checkpoint(checkpoint.best_model_path)
    assert best["state"]["metrics"]["val/loss"] == pytest.approx(0.2)
    assert best["state"]["global_step"] == 20


def test_top_k_in_mode_max_keeps_the_highest(run_dir: Path) -> None:
    checkpoint = ModelCheckpoint(monitor="val/acc", mode="max", save_top_k=1)
    script = {"loss": [1.0, 1.0, 1.0, 1.0], "acc": [0.2, 0.6, 0.4, 0.5]}
    scripted_trainer(run_dir, script, callbacks=[checkpoint]).fit()
    folder = run_dir / "version_0" / "checkpoints"
    assert files_in(folder) == [
        "epoch=1-step=10.ckpt",
        "last-epoch=2-step=15.ckpt",
        "last-epoch=3-step=20.ckpt",
    ]
    assert checkpoint.best_model_path == str(folder / "epoch=1-step=10.ckpt")


def test_save_top_k_minus_one_keeps_every_epoch(run_dir: Path) -> None:
    checkpoint = ModelCheckpoint(monitor="val/loss", save_top_k=-1, save_last=False)
    scripted_trainer(run_dir, {"loss": [0.5, 0.7, 0.6]}, callbacks=[checkpoint]).fit()
    assert files_in(run_dir / "version_0" / "checkpoints") == [
        "epoch=0-step=5.ckpt",
        "epoch=1-step=10.ckpt",
        "epoch=2-step=15.ckpt",
    ]
    assert checkpoint.best_model_path.endswith("epoch=0-step=5.ckpt")


def test_fit_from_best_loads_the_best_ranked_checkpoint(run_dir: Path) -> None:
    checkpoint = ModelCheckpoint(monitor="val/loss", save_top_k=1)
    scripted_trainer(run_dir, {"loss": [0.5, 0.2, 0.4]}, callbacks=[checkpoint]).fit()
    best = load_checkpoint(checkpoint.best_model_path)

    fresh = scripted_trainer(run_dir, {"loss": [0.5, 0.2, 0.4]})
    fresh.validate(ckpt_path="best")
    for name, tensor in fresh.model.state_dict().items():
        assert torch.equal(best["model"][name], tensor), name


def test_every_n_steps_saves_mid_epoch(run_dir: Path) -> None:
    checkpoint = ModelCheckpoint(every_n_steps=2, every_n_epochs=0, keep_last=3)
    trainer = scripted_trainer(run_dir, {"loss": [1.0]}, callbacks=[checkpoint])
    trainer.fit()
    folder = run_dir / "version_0" / "checkpoints"
    # Steps 2 and 4 mid-epoch; step 5 is the state training ended in, saved at on_train_end.
    assert files_in(folder) == [
        "last-epoch=0-step=2.ckpt", "last-epoch=0-step=4.ckpt", "last-epoch=1-step=5.ckpt"
    ]  # fmt: skip
    assert load_checkpoint(folder / "last-epoch=1-step=5.ckpt")["state"]["epoch"] == 1
    saved = load_checkpoint(folder / "last-epoch=0-step=4.ckpt")
    assert saved["state"]["epoch"] == 0
    assert saved["state"]["global_step"] == 4
    assert saved["state"]["batches_in_epoch"] == 4
    assert trainer.global_step == 5


def test_every_n_steps_counts_optimizer_steps_not_batches(run_dir: Path) -> None:
    checkpoint = ModelCheckpoint(every_n_steps=1, every_n_epochs=0)
    trainer = scripted_trainer(
        run_dir, {"loss": [1.0]}, accumulate_grad_batches=2, callbacks=[checkpoint]
    )
    trainer.fit()
    folder = run_dir / "version_0" / "checkpoints"
    assert files_in(folder) == ["last-epoch=0-step=2.ckpt", "last-epoch=0-step=3.ckpt"]
    saved = load_checkpoint(folder / "last-epoch=0-step=3.ckpt")
    assert trainer.global_step == 3
    assert saved["state"]["global_step"] == 3
    assert saved["state"]["batches_in_epoch"] == 5


def test_rotation_never_deletes_files_outside_its_folder(tmp_path: Path) -> None:
    """A run copied to a new folder and resumed there leaves the original run's files alone."""
    losses = [0.5, 0.4, 0.3, 0.2]
    original = tmp_path / "original"
    scripted_trainer(
        original,
        {"loss": losses},
        max_epochs=2,
        callbacks=[ModelCheckpoint(monitor="val/loss", save_top_k=1)],
    ).fit()
    before = files_in(original / "version_0" / "checkpoints")
    assert before == [
        "epoch=1-step=10.ckpt",
        "last-epoch=0-step=5.ckpt",
        "last-epoch=1-step=10.ckpt",
    ]

    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    resumed = ModelCheckpoint(monitor="val/loss", save_top_k=1)
    scripted_trainer(copy, {"loss": losses}, callbacks=[resumed]).fit(ckpt_path="last")

    assert files_in(original / "version_0" / "checkpoints") == before
    assert files_in(copy / "version_0" / "checkpoints") == [
        "epoch=1-step=10.ckpt",
        "epoch=3-step=20.ckpt",
        "last-epoch=2-step=15.ckpt",
        "last-epoch=3-step=20.ckpt",
    ]
    best = copy / "version_0" / "checkpoints" / "epoch=3-step=20.ckpt"
    assert resumed.best_model_path == str(best)


def test_rotation_leaves_unrelated_files_in_its_folder(run_dir: Path) -> None:
    folder = run_dir / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("keep me")
    (folder / "epoch=9-step=99.ckpt").write_bytes(b"someone else's file")
    checkpoint = ModelCheckpoint(monitor="val/loss", save_top_k=1, dirpath=folder)
    scripted_trainer(run_dir, {"loss": [0.5, 0.4, 0.3]}, callbacks=[checkpoint]).fit()
    assert files_in(folder) == [
        "epoch=2-step=15.ckpt",
        "epoch=9-step=99.ckpt",
        "last-epoch=1-step=10.ckpt",
        "last-epoch=2-step=15.ckpt",
        "notes.txt",
    ]
    assert (folder / "notes.txt").read_text() == "keep me"


def test_a_preemption_save_keeps_keep_last_files(run_dir: Path) -> None:
    class TerminateAtStep7(Callback):
        def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
            if trainer.global_step == 7:
                os.kill(os.getpid(), signal.SIGTERM)

    checkpoint = ModelCheckpoint(every_n_steps=1, keep_last=5)
    trainer = scripted_trainer(
        run_dir, {"loss": [1.0] * 3}, callbacks=[checkpoint, TerminateAtStep7()]
    )
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit()
    assert info.value.code == info.value.exit_code == 143  # an uncaught one exits with it
    assert files_in(run_dir / "version_0" / "checkpoints") == [
        "last-epoch=0-step=3.ckpt",
        "last-epoch=0-step=4.ckpt",
        "last-epoch=0-step=5.ckpt",
        "last-epoch=1-step=6.ckpt",
        "last-epoch=1-step=7.ckpt",
    ]


def test_monitor_never_logged_lists_the_logged_names(run_dir: Path) -> None:
    checkpoint = ModelCheckpoint(monitor="val/accuracy")
    trainer = scripted_trainer(run_dir, {"loss": [1.0], "acc": [0.5]}, callbacks=[checkpoint])
    with pytest.raises(MissingMetricError) as excinfo:
        trainer.fit()
    message = str(excinfo.value)
    assert "ModelCheckpoint monitors 'val/accuracy', which was never logged" in message
    assert "Did you mean 'val/acc'?" in message
    assert "Logged names: lr, train/loss, val/acc, val/loss." in message


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match=r"save_top_k must be -1 .* got -2"):
        ModelCheckpoint(monitor="val/loss", save_top_k=-2)
    with pytest.raises(ValueError, match="every_n_steps must be >= 1 or None, got 0"):
        ModelCheckpoint(every_n_steps=0)
    with pytest.raises(ValueError, match="mode='best' is not supported"):
        ModelCheckpoint(monitor="val/loss", mode="best")
    with pytest.raises(ValueError, match=r"save_last=False\) would save nothing every_n_steps"):
        ModelCheckpoint(monitor="val/loss", every_n_steps=5, save_last=False)
    with pytest.raises(ValueError, match=r"save_last=False\) would save nothing.*monitor=\.\.\."):
        ModelCheckpoint(save_last=False)
    with pytest.raises(ValueError, match="keep_last must be >= 1, got 0"):
        ModelCheckpoint(keep_last=0)


def test_state_dict_round_trips_through_the_checkpoint(run_dir: Path) -> None:
    checkpoint = ModelCheckpoint(monitor="val/loss", save_top_k=2)
    scripted_trainer(run_dir, {"loss": [0.5, 0.3, 0.4]}, callbacks=[checkpoint]).fit()
    saved = load_checkpoint(run_dir / "version_0" / "checkpoints" / "last-epoch=2-step=15.ckpt")
    state = saved["callbacks"]["ModelCheckpoint"]
    assert state["best_k"] == checkpoint.best_k
    assert state["best_model_path"] == checkpoint.best_model_path

    restored = ModelCheckpoint(monitor="val/loss", save_top_k=2)
    restored.load_state_dict(state)
    assert restored.state_dict() == state


def test_a_last_state_file_records_its_own_path(run_dir: Path) -> None:
    """A run resumed from a last-state file reports that file as `last_model_path`."""
    checkpoint = ModelCheckpoint()
    scripted_trainer(run_dir, {"loss": [0.5, 0.3]}, callbacks=[checkpoint]).fit()
    newest = run_dir / "version_0" / "checkpoints" / "last-epoch=1-step=10.ckpt"
    assert checkpoint.last_model_path == str(newest)
    saved = load_checkpoint(newest)["callbacks"]["ModelCheckpoint"]
    assert saved["last_model_path"] == str(newest)


def test_nan_score_ranks_below_every_number(run_dir: Path) -> None:
    """A diverged epoch (NaN) must not hold a top-k place against finite scores."""
    checkpoint = ModelCheckpoint(monitor="val/loss", save_top_k=2)
    trainer = scripted_trainer(
        run_dir, {"loss": [0.5, float("nan"), 0.3, 0.4]}, callbacks=[checkpoint]
    )
    trainer.fit()
    assert files_in(run_dir / "version_0" / "checkpoints") == [
        "epoch=2-step=15.ckpt",
        "epoch=3-step=20.ckpt",
        "last-epoch=2-step=15.ckpt",
        "last-epoch=3-step=20.ckpt",
    ]
    assert checkpoint.best_model_path.endswith("epoch=2-step=15.ckpt")
