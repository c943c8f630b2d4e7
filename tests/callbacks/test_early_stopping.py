"""`EarlyStopping`: patience, mode, min_delta, best weights, missing monitors, state."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_loader, make_mlp, scripted_trainer
from torch import nn

from trainer import Trainer
from trainer.callbacks import Callback, EarlyStopping, MissingMetricError


class WeightsPerEpoch(Callback):
    """Snapshots the model's weights at every epoch end."""

    def __init__(self) -> None:
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        self.snapshots.append(copy.deepcopy(trainer.model.state_dict()))


def assert_same_weights(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


def test_stops_after_patience_epochs_without_improvement(run_dir: Path) -> None:
    stopper = EarlyStopping(patience=3)
    trainer = scripted_trainer(
        run_dir, {"loss": [1.0, 0.8, 0.9, 0.85, 0.95, 0.7, 0.6]}, callbacks=[stopper]
    )
    history = trainer.fit()
    assert [record["val/loss"] for record in history] == pytest.approx([1.0, 0.8, 0.9, 0.85, 0.95])
    assert stopper.best == pytest.approx(0.8)
    assert stopper.best_epoch == 1
    assert stopper.stopped_epoch == 4
    assert trainer.epoch == 5


def test_stopping_prints_one_line_with_monitor_best_epoch_and_patience(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stopper = EarlyStopping(patience=3, min_delta=0.01)
    trainer = scripted_trainer(
        run_dir, {"loss": [1.0, 0.8, 0.9, 0.85, 0.95, 0.7, 0.6]}, callbacks=[stopper]
    )
    trainer.fit()
    captured = capsys.readouterr()
    assert captured.out == (
        "Early stopping after epoch 5: val/loss is 0.95 and has not improved by more than "
        "0.01 for 3 epochs (patience 3); best 0.8 at epoch 2.\n"
    )  # epochs counted from 1, as the progress bar counts them
    assert captured.err == ""


def test_a_run_that_does_not_stop_early_prints_nothing(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scripted_trainer(run_dir, {"loss": [1.0, 0.9]}, callbacks=[EarlyStopping()]).fit()
    assert capsys.readouterr().out == ""


def test_the_stop_line_goes_above_an_open_progress_bar(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tqdm.auto import tqdm

    from trainer.callbacks.progress import write_line

    with tqdm(total=3, file=sys.stdout, ncols=40) as bar:
        bar.update(1)
        write_line("Early stopping after epoch 2: ...")
    lines = capsys.readouterr().out.replace("\r", "\n").splitlines()
    assert "Early stopping after epoch 2: ..." in lines  # a line of its own, not torn


def test_improvement_resets_the_patience_count(run_dir: Path) -> None:
    stopper = EarlyStopping(patience=2)
    trainer = scripted_trainer(
        run_dir, {"loss": [1.0, 1.1, 0.9, 1.0, 0.8, 0.85]}, callbacks=[stopper]
    )
    assert len(trainer.fit()) == 6
    assert stopper.stopped_epoch is None
    assert stopper.best_epoch == 4
    assert stopper.wait == 1


def test_stops_on_a_real_run_whose_validation_loss_rises(run_dir: Path) -> None:
    """A learning rate far too high makes the real validation loss explode."""
    model = make_mlp()
    stopper = EarlyStopping(patience=2)
    trainer = Trainer(
        model,
        optimizer=torch.optim.SGD(model.parameters(), lr=5.0),
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=make_loader(),
        val_loader=make_loader(n=16, seed=1),
        max_epochs=20,
        callbacks=[stopper],
        run_dir=run_dir,
        progress_bar=False,
        logger=False,
        checkpoint=False,
        device="cpu",
    )
    history = trainer.fit()
    assert len(history) < 20
    assert stopper.stopped_epoch == len(history) - 1
    losses = [record["val/loss"] for record in history]
    assert all(not loss < stopper.best for loss in losses[stopper.best_epoch + 1 :])


def test_mode_max_waits_for_a_higher_value(run_dir: Path) -> None:
    stopper = EarlyStopping(monitor="val/acc", mode="max", patience=2)
    trainer = scripted_trainer(
        run_dir,
        {"loss": [1.0, 0.9, 0.8, 0.7, 0.6], "acc": [0.5, 0.7, 0.6, 0.65, 0.9]},
        callbacks=[stopper],
    )
    assert len(trainer.fit()) == 4
    assert stopper.best == pytest.approx(0.7)
    assert stopper.best_epoch == 1
    assert stopper.stopped_epoch == 3


def test_min_delta_ignores_improvements_that_are_too_small(run_dir: Path) -> None:
    losses = [1.0, 0.95, 0.92, 0.91]
    strict = EarlyStopping(patience=2, min_delta=0.1)
    lenient = EarlyStopping(patience=2)
    assert len(scripted_trainer(run_dir, {"loss": losses}, callbacks=[strict]).fit()) == 3
    assert len(scripted_trainer(run_dir, {"loss": losses}, callbacks=[lenient]).fit()) == 4
    assert strict.best == pytest.approx(1.0)
    assert strict.stopped_epoch == 2
    assert lenient.best == pytest.approx(0.91)


def test_min_delta_in_mode_max_needs_a_large_enough_rise(run_dir: Path) -> None:
    stopper = EarlyStopping(monitor="val/acc", mode="max", patience=1, min_delta=0.05)
    script = {"loss": [1.0, 1.0, 1.0, 1.0], "acc": [0.5, 0.56, 0.58, 0.9]}
    trainer = scripted_trainer(run_dir, script, callbacks=[stopper])
    assert len(trainer.fit()) == 3
    assert stopper.best == pytest.approx(0.56)


def test_nan_never_counts_as_an_improvement(run_dir: Path) -> None:
    stopper = EarlyStopping(patience=2)
    script = {"loss": [1.0, math.nan, math.nan, 0.1]}
    trainer = scripted_trainer(run_dir, script, callbacks=[stopper])
    assert len(trainer.fit()) == 3
    assert stopper.best == pytest.approx(1.0)


def test_restore_best_weights_puts_the_best_epochs_weights_back(run_dir: Path) -> None:
    snapshots = WeightsPerEpoch()
    stopper = EarlyStopping(patience=2, restore_best_weights=True)
    trainer = scripted_trainer(
        run_dir, {"loss": [1.0, 0.5, 0.7, 0.9, 0.4]}, callbacks=[snapshots, stopper]
    )
    trainer.fit()
    assert len(snapshots.snapshots) == 4
    assert_same_weights(trainer.model.state_dict(), snapshots.snapshots[1])
    last = snapshots.snapshots[-1]
    assert not torch.equal(trainer.model.state_dict()["0.weight"], last["0.weight"])


def test_without_restore_best_weights_the_last_weights_stay(run_dir: Path) -> None:
    snapshots = WeightsPerEpoch()
    stopper = EarlyStopping(patience=2)
    trainer = scripted_trainer(
        run_dir, {"loss": [1.0, 0.5, 0.7, 0.9, 0.4]}, callbacks=[snapshots, stopper]
    )
    trainer.fit()
    assert_same_weights(trainer.model.state_dict(), snapshots.snapshots[-1])


def test_restore_best_weights_survives_a_resume(tmp_path: Path) -> None:
    """Stopping and resuming from "last" restores the same best weights as one straight run."""
    losses = [1.0, 0.5, 0.7, 0.9]
    straight_snapshots = WeightsPerEpoch()
    straight = scripted_trainer(
        tmp_path / "straight",
        {"loss": losses},
        callbacks=[straight_snapshots, EarlyStopping(patience=10, restore_best_weights=True)],
    )
    straight.fit()
    assert_same_weights(straight.model.state_dict(), straight_snapshots.snapshots[1])

    first = scripted_trainer(
        tmp_path / "resumed",
        {"loss": losses},
        max_epochs=2,
        checkpoint=True,
        callbacks=[EarlyStopping(patience=10, restore_best_weights=True)],
    )
    first.fit()
    second = scripted_trainer(
        tmp_path / "resumed",
        {"loss": losses},
        model=make_mlp(seed=5),
        checkpoint=True,
        callbacks=[EarlyStopping(patience=10, restore_best_weights=True)],
    )
    second.fit(ckpt_path="last")
    assert_same_weights(second.model.state_dict(), straight.model.state_dict())


def test_monitor_never_logged_lists_logged_names_and_the_closest(run_dir: Path) -> None:
    trainer = scripted_trainer(
        run_dir, {"loss": [1.0, 0.9], "acc": [0.1, 0.2]}, callbacks=[EarlyStopping("val/los")]
    )
    with pytest.raises(MissingMetricError) as excinfo:
        trainer.fit()
    message = str(excinfo.value)
    assert "EarlyStopping monitors 'val/los', which was never logged" in message
    assert "Did you mean 'val/loss'?" in message
    assert "Logged names: lr, train/loss, val/acc, val/loss." in message


def test_val_monitor_without_val_loader_asks_for_one(run_dir: Path) -> None:
    trainer = scripted_trainer(
        run_dir, {"loss": [1.0]}, val_loader=None, callbacks=[EarlyStopping()]
    )
    with pytest.raises(MissingMetricError) as excinfo:
        trainer.fit()
    message = str(excinfo.value)
    assert "Logged names: lr, train/loss." in message
    assert "Validation names need a val_loader" in message


def test_unknown_mode_and_negative_patience_are_refused() -> None:
    with pytest.raises(ValueError, match="mode='maximum' is not supported; use 'min' or 'max'"):
        EarlyStopping(mode="maximum")
    with pytest.raises(ValueError, match="patience must be >= 0, got -1"):
        EarlyStopping(patience=-1)


def test_state_dict_round_trips_into_a_new_callback(run_dir: Path) -> None:
    stopper = EarlyStopping(patience=5)
    scripted_trainer(run_dir, {"loss": [1.0, 0.6, 0.8]}, callbacks=[stopper]).fit()
    state = stopper.state_dict()
    assert state["best"] == pytest.approx(0.6)
    assert (state["best_epoch"], state["wait"], state["stopped_epoch"]) == (1, 1, None)

    restored = EarlyStopping(patience=5)
    restored.load_state_dict(copy.deepcopy(state))
    assert restored.state_dict() == state


def test_restored_state_makes_a_new_run_stop_on_the_same_epoch(run_dir: Path) -> None:
    """A callback that has already waited 2 of 3 epochs stops after one more stale epoch."""
    stopper = EarlyStopping(patience=3)
    stopper.load_state_dict({"best": 0.5, "best_epoch": 0, "wait": 2, "stopped_epoch": None})
    trainer = scripted_trainer(run_dir, {"loss": [0.7, 0.8, 0.9]}, callbacks=[stopper])
    assert len(trainer.fit()) == 1
    assert stopper.stopped_epoch == 0


def test_the_val_loader_hint_appears_only_when_no_validation_name_was_logged() -> None:
    from trainer.callbacks.monitor import missing_metric_error

    without_validation = str(missing_metric_error("val/acc", ["train/loss"], "EarlyStopping"))
    assert "Validation names need a val_loader" in without_validation
    with_validation = str(missing_metric_error("val/acc", ["val/loss"], "EarlyStopping"))
    assert "Validation names need a val_loader" not in with_validation
