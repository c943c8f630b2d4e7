"""Checkpoints: atomic saves, loads that never run code, clear errors, and exact resume."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_loader, make_mlp, make_trainer

from trainer import Trainer
from trainer.callbacks import EarlyStopping, ModelCheckpoint
from trainer.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint


class WritesMarker:
    """Pickles to a call of `open(marker, "w")`: unpickling it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def assert_equal_states(left: Any, right: Any, where: str = "") -> None:
    """Nested dicts, lists and tensors are equal, tensors bit for bit."""
    if isinstance(left, torch.Tensor):
        assert isinstance(right, torch.Tensor), where
        assert torch.equal(left, right), where
    elif isinstance(left, dict):
        assert left.keys() == right.keys(), where
        for key in left:
            assert_equal_states(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, (list, tuple)):
        assert len(left) == len(right), where
        for index, (a, b) in enumerate(zip(left, right, strict=True)):
            assert_equal_states(a, b, f"{where}[{index}]")
    else:
        assert left == right, where


def leftover_temporaries(folder: Path) -> list[Path]:
    return [path for path in folder.iterdir() if path.name.endswith(".tmp")]


# ------------------------------------------------------------------------------ atomic saves
def test_fit_leaves_only_finished_checkpoints(trainer_factory: Callable, run_dir: Path) -> None:
    trainer_factory(checkpoint=True, max_epochs=3).fit()
    folder = run_dir / "checkpoints"
    assert sorted(path.name for path in folder.iterdir()) == ["last.ckpt"]


def test_save_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.ckpt"
    save_checkpoint({"format_version": FORMAT_VERSION, "value": torch.ones(2)}, path)
    save_checkpoint({"format_version": FORMAT_VERSION, "value": torch.zeros(2)}, path)
    assert torch.equal(load_checkpoint(path)["value"], torch.zeros(2))
    assert leftover_temporaries(tmp_path) == []


def test_failed_save_keeps_the_previous_checkpoint_whole(tmp_path: Path) -> None:
    path = tmp_path / "state.ckpt"
    save_checkpoint({"format_version": FORMAT_VERSION, "value": torch.ones(2)}, path)
    unpicklable = {"format_version": FORMAT_VERSION, "value": lambda: None}
    with pytest.raises((AttributeError, pickle.PicklingError), match="pickle"):
        save_checkpoint(unpicklable, path)
    assert torch.equal(load_checkpoint(path)["value"], torch.ones(2))
    assert leftover_temporaries(tmp_path) == []


def test_save_onto_a_folder_gives_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "last.ckpt").mkdir()
    with pytest.raises(OSError, match=r"could not save checkpoint .*last\.ckpt"):
        save_checkpoint({"format_version": FORMAT_VERSION}, tmp_path / "last.ckpt")
    assert leftover_temporaries(tmp_path) == []


def test_save_under_a_regular_file_gives_a_clear_error(
    trainer_factory: Callable, tmp_path: Path
) -> None:
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("a file, not a folder")
    trainer = trainer_factory()
    with pytest.raises(OSError) as excinfo:
        trainer.save_checkpoint(not_a_folder / "last.ckpt")
    assert "could not save checkpoint" in str(excinfo.value)
    assert "notes.txt" in str(excinfo.value)
    assert not_a_folder.read_text() == "a file, not a folder"


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores folder permissions"
)
def test_save_into_a_read_only_folder_explains_and_keeps_the_previous_checkpoint(
    trainer_factory: Callable, run_dir: Path
) -> None:
    trainer = trainer_factory(checkpoint=True, max_epochs=1)
    trainer.fit()
    folder = run_dir / "checkpoints"
    before = (folder / "last.ckpt").read_bytes()
    folder.chmod(0o555)
    try:
        with pytest.raises(OSError) as excinfo:
            trainer.save_checkpoint(folder / "last.ckpt")
    finally:
        folder.chmod(0o755)
    assert "could not save checkpoint" in str(excinfo.value)
    assert "permissions" in str(excinfo.value)
    assert (folder / "last.ckpt").read_bytes() == before
    assert leftover_temporaries(folder) == []


# -------------------------------------------------------------------------------- safe loads
def test_load_refuses_a_file_that_would_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"format_version": FORMAT_VERSION, "model": WritesMarker(marker)}, path)

    with pytest.raises(ValueError) as excinfo:
        load_checkpoint(path)
    assert "cannot be read safely" in str(excinfo.value)
    assert not marker.exists()

    # The file is really dangerous: an unsafe load runs its code.
    torch.load(path, weights_only=False)["model"].close()
    assert marker.exists()


def test_fit_from_a_file_that_would_run_code_refuses_it(
    trainer_factory: Callable, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"format_version": FORMAT_VERSION, "model": WritesMarker(marker)}, path)
    with pytest.raises(ValueError, match="cannot be read safely"):
        trainer_factory().fit(ckpt_path=path)
    assert not marker.exists()


def test_a_file_that_is_not_a_trainer_checkpoint_is_named(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(make_mlp().state_dict(), path)
    with pytest.raises(ValueError, match="is not a trainer checkpoint"):
        load_checkpoint(path)


def test_a_truncated_file_is_called_corrupt(trainer_factory: Callable, run_dir: Path) -> None:
    trainer_factory(checkpoint=True, max_epochs=1).fit()
    path = run_dir / "checkpoints" / "last.ckpt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt, truncated"):
        load_checkpoint(path)


def test_a_checkpoint_from_a_newer_format_asks_for_an_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "future.ckpt"
    save_checkpoint({"format_version": FORMAT_VERSION + 1}, path)
    with pytest.raises(ValueError, match="upgrade trainer"):
        load_checkpoint(path)


def test_loading_into_a_model_of_other_shapes_names_the_parameters(tmp_path: Path) -> None:
    make_trainer(tmp_path / "wide", checkpoint=True, max_epochs=1).fit()
    narrow = make_trainer(
        tmp_path / "narrow",
        make_mlp(in_features=32),
        train_loader=make_loader(features=32),
        val_loader=None,
    )
    with pytest.raises(ValueError) as excinfo:
        narrow.fit(ckpt_path=tmp_path / "wide" / "checkpoints" / "last.ckpt")
    message = str(excinfo.value)
    assert "0.weight: checkpoint (32, 64) vs model (32, 32)" in message
    assert "same architecture" in message


def test_loading_into_a_model_with_other_layers_names_them(
    trainer_factory: Callable, run_dir: Path
) -> None:
    trainer_factory(checkpoint=True, max_epochs=1).fit()
    deeper = torch.nn.Sequential(*make_mlp(), torch.nn.ReLU(), torch.nn.Linear(10, 10))
    with pytest.raises(ValueError) as excinfo:
        trainer_factory(deeper).validate(ckpt_path="last")
    assert "missing in checkpoint: 5.bias, 5.weight" in str(excinfo.value)


def test_nonexistent_path_is_named(trainer_factory: Callable, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.ckpt does not exist"):
        trainer_factory().fit(ckpt_path=tmp_path / "nope.ckpt")


def test_folder_path_asks_for_a_file(trainer_factory: Callable, tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match=r"is a folder; pass a \.ckpt file"):
        trainer_factory().fit(ckpt_path=tmp_path)


def test_best_without_a_ranked_checkpoint_says_what_is_needed(
    trainer_factory: Callable,
) -> None:
    with pytest.raises(FileNotFoundError, match="needs a ModelCheckpoint with monitor"):
        trainer_factory().fit(ckpt_path="best")


# ------------------------------------------------------------------------------------ resume
def test_last_without_a_checkpoint_starts_fresh_with_a_notice(
    trainer_factory: Callable, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = trainer_factory(checkpoint=True)
    history = trainer.fit(ckpt_path="last")
    notice = capsys.readouterr().out
    assert f"No checkpoint in {run_dir / 'checkpoints'} yet; starting from scratch." in notice
    assert len(history) == 2
    assert trainer.global_step == 10


def test_last_skips_a_corrupt_last_ckpt_for_the_newest_valid_checkpoint(
    trainer_factory: Callable, run_dir: Path
) -> None:
    """The contract: "last" is the newest *valid* checkpoint of run_dir."""
    ranked = ModelCheckpoint(monitor="train/loss", save_top_k=-1)
    trainer_factory(callbacks=[ranked], max_epochs=2).fit()
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])

    resumed = trainer_factory(checkpoint=True, max_epochs=3)
    history = resumed.fit(ckpt_path="last")
    assert [record["epoch"] for record in history] == [2.0]
    assert resumed.global_step == 15


def fit_with_dropout_and_shuffle(
    run_dir: Path, max_epochs: int, model_seed: int = 0, **fit_kwargs: Any
) -> tuple[Trainer, list[dict[str, float]]]:
    model = make_mlp(seed=model_seed, dropout=0.3)
    trainer = make_trainer(
        run_dir,
        model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
        scheduler=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, step_size=1),
        train_loader=make_loader(shuffle=True),
        max_epochs=max_epochs,
        checkpoint=True,
        seed=7,
    )
    return trainer, trainer.fit(**fit_kwargs)


def test_resume_at_an_epoch_boundary_gives_identical_weights_and_optimizer(
    tmp_path: Path,
) -> None:
    straight, straight_history = fit_with_dropout_and_shuffle(tmp_path / "straight", 4)

    fit_with_dropout_and_shuffle(tmp_path / "resumed", 2)
    resumed, resumed_history = fit_with_dropout_and_shuffle(
        tmp_path / "resumed", 4, model_seed=1, ckpt_path="last"
    )

    assert resumed.epoch == straight.epoch == 4
    assert resumed.global_step == straight.global_step == 20
    assert_equal_states(resumed.model.state_dict(), straight.model.state_dict(), "model")
    assert_equal_states(
        resumed.optimizer.state_dict(), straight.optimizer.state_dict(), "optimizer"
    )
    assert_equal_states(
        resumed.scheduler.state_dict(), straight.scheduler.state_dict(), "scheduler"
    )
    assert resumed_history == straight_history[2:]


def test_resume_without_seed_still_matches_the_straight_run(tmp_path: Path) -> None:
    """The RNG states in the checkpoint, not the seed, carry dropout and shuffling on."""
    torch.manual_seed(3)
    straight, _ = fit_with_dropout_and_shuffle(tmp_path / "straight", 3)
    torch.manual_seed(3)
    fit_with_dropout_and_shuffle(tmp_path / "resumed", 1)
    torch.manual_seed(12345)  # a different process would start from other random states
    resumed, _ = fit_with_dropout_and_shuffle(
        tmp_path / "resumed", 3, model_seed=1, ckpt_path="last"
    )
    assert_equal_states(resumed.model.state_dict(), straight.model.state_dict(), "model")


def test_early_stopping_state_round_trips_through_the_checkpoint(
    trainer_factory: Callable, run_dir: Path
) -> None:
    stopper = EarlyStopping(patience=5)
    trainer_factory(checkpoint=True, max_epochs=3, callbacks=[stopper]).fit()
    saved = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert saved["callbacks"]["EarlyStopping"] == stopper.state_dict()
    assert stopper.best_epoch is not None

    restored = EarlyStopping(patience=5)
    trainer_factory(checkpoint=True, max_epochs=3, callbacks=[restored]).fit(ckpt_path="last")
    assert restored.state_dict() == stopper.state_dict()


def test_two_callbacks_of_one_class_keep_separate_states(
    trainer_factory: Callable, run_dir: Path
) -> None:
    on_loss = EarlyStopping(monitor="val/loss", patience=5)
    on_acc = EarlyStopping(monitor="val/acc", mode="max", patience=5)
    trainer_factory(checkpoint=True, callbacks=[on_loss, on_acc]).fit()
    states = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["callbacks"]
    assert states["EarlyStopping"] == on_loss.state_dict()
    assert states["EarlyStopping_2"] == on_acc.state_dict()

    restored = [EarlyStopping(monitor="val/loss"), EarlyStopping(monitor="val/acc", mode="max")]
    trainer_factory(checkpoint=True, callbacks=restored).fit(ckpt_path="last")
    assert [callback.state_dict() for callback in restored] == [
        on_loss.state_dict(),
        on_acc.state_dict(),
    ]
