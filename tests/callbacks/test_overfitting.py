"""`OverfittingMonitor`: the training loss falls (really, on a real model) while a scripted
validation loss rises; the warning names the epochs, `stop=True` ends the run."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from conftest import make_trainer, scripted_trainer

from trainer.callbacks import OverfittingMonitor, OverfittingWarning

# The real training loss of scripted_trainer's run falls at every one of these epochs.
RISING_FROM_EPOCH_3 = [1.0, 0.8, 0.7, 0.75, 0.8, 0.9, 1.0]


def overfitting_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, OverfittingWarning)]


def test_warns_once_with_the_epochs_when_val_rises_for_patience_epochs(run_dir: Path) -> None:
    monitor = OverfittingMonitor(patience=3)
    trainer = scripted_trainer(run_dir, {"loss": RISING_FROM_EPOCH_3}, callbacks=[monitor])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = trainer.fit()
    [message] = overfitting_warnings(caught)
    assert "from epoch 3 to epoch 6" in message
    assert "val/loss rose (0.7 -> 0.9)" in message
    assert "train/loss fell" in message
    assert "pass stop=True" in message
    assert monitor.warned_at == [6]
    assert len(history) == 7  # a warning only


def test_stop_ends_the_run_at_the_epoch_it_warns(run_dir: Path) -> None:
    monitor = OverfittingMonitor(patience=2, stop=True)
    trainer = scripted_trainer(run_dir, {"loss": RISING_FROM_EPOCH_3}, callbacks=[monitor])
    with pytest.warns(OverfittingWarning, match="from epoch 3 to epoch 5, .*; stopping training"):
        history = trainer.fit()
    assert len(history) == 5


@pytest.mark.parametrize(
    "val_losses",
    [
        [1.0, 0.9, 0.8, 0.7, 0.6, 0.5],  # both fall: learning
        [1.0, 1.1, 1.2, 1.1, 1.2, 1.3],  # rises, dips, rises: never 3 in a row
        [1.0, 1.01, 1.02, 1.03, 1.04, 1.05],  # rises less than min_delta each time
    ],
    ids=["learning", "interrupted", "within-min-delta"],
)
def test_no_warning_without_a_full_streak(run_dir: Path, val_losses: list[float]) -> None:
    trainer = scripted_trainer(
        run_dir, {"loss": val_losses}, callbacks=[OverfittingMonitor(patience=3, min_delta=0.05)]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit()
    assert overfitting_warnings(caught) == []


def test_rising_val_with_a_flat_train_figure_is_not_overfitting(run_dir: Path) -> None:
    """`train` can name any figure; here one whose value never falls."""
    monitor = OverfittingMonitor(patience=2, train="val/flat")
    trainer = scripted_trainer(
        run_dir,
        {"loss": RISING_FROM_EPOCH_3, "flat": [0.5] * 7},
        callbacks=[monitor],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit()
    assert overfitting_warnings(caught) == []


def test_a_resumed_run_warns_at_the_same_epoch(run_dir: Path) -> None:
    first = scripted_trainer(
        run_dir, {"loss": RISING_FROM_EPOCH_3}, callbacks=[OverfittingMonitor(patience=3)],
        checkpoint=True, max_epochs=5,
    )  # fmt: skip
    first.fit()  # the streak holds epochs 3, 4, 5 when it stops
    monitor = OverfittingMonitor(patience=3)
    resumed = scripted_trainer(
        run_dir, {"loss": RISING_FROM_EPOCH_3}, callbacks=[monitor], checkpoint=True
    )
    with pytest.warns(OverfittingWarning, match="from epoch 3 to epoch 6"):
        resumed.fit(ckpt_path="last")
    assert monitor.warned_at == [6]


def test_a_run_without_validation_is_refused(run_dir: Path) -> None:
    trainer = make_trainer(run_dir, val_loader=None, callbacks=[OverfittingMonitor()])
    with pytest.raises(ValueError, match="OverfittingMonitor compares training and validation"):
        trainer.fit()


@pytest.mark.parametrize("patience", [0, -1, 1.5, True])
def test_patience_must_be_a_positive_integer(patience: object) -> None:
    with pytest.raises(ValueError, match=f"patience must be a positive integer, got {patience}"):
        OverfittingMonitor(patience=patience)  # type: ignore[arg-type]
