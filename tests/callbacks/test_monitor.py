"""`Monitor`: how early stopping, checkpoint ranking and plateau schedulers read a logged
figure, judge it in mode min or max with `min_delta`, and report a name never logged with
the names that were and the closest one."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import make_mlp, message_of, scripted_trainer

from trainer.callbacks import EarlyStopping, MissingMetricError
from trainer.callbacks.monitor import Monitor


# ------------------------------------------------------------------------------ improvement
@pytest.mark.parametrize(("mode", "better", "worse"), [("min", 0.4, 0.6), ("max", 0.6, 0.4)])
def test_mode_decides_which_direction_improves(mode: str, better: float, worse: float) -> None:
    monitor = Monitor("val/loss", mode=mode)
    assert monitor.is_improvement(better, 0.5)
    assert not monitor.is_improvement(worse, 0.5)
    assert not monitor.is_improvement(0.5, 0.5), "an equal figure is no improvement"


@pytest.mark.parametrize("mode", ["min", "max"])
def test_any_finite_figure_improves_on_the_starting_best(mode: str) -> None:
    monitor = Monitor("val/acc", mode=mode)
    assert monitor.is_improvement(1e30 if mode == "max" else -1e30, monitor.worst())
    assert monitor.is_improvement(-1e30 if mode == "max" else 1e30, monitor.worst())


def test_min_delta_is_the_margin_an_improvement_must_clear_in_either_mode() -> None:
    lower = Monitor("val/loss", mode="min", min_delta=0.1)
    assert not lower.is_improvement(0.45, 0.5)
    assert lower.is_improvement(0.35, 0.5)
    higher = Monitor("val/acc", mode="max", min_delta=-0.1)  # its sign does not matter
    assert not higher.is_improvement(0.55, 0.5)
    assert higher.is_improvement(0.65, 0.5)


def test_nan_never_improves() -> None:
    for mode in ("min", "max"):
        monitor = Monitor("val/loss", mode=mode)
        assert not monitor.is_improvement(math.nan, monitor.worst())


def test_an_unknown_mode_names_the_valid_ones() -> None:
    with pytest.raises(ValueError) as excinfo:
        Monitor("val/loss", mode="lowest")
    assert "mode='lowest' is not supported; use 'min' or 'max'" in message_of(excinfo)


# ------------------------------------------------------------------------ a missing figure
def test_reading_a_logged_figure_returns_it() -> None:
    assert Monitor("val/acc").read({"val/acc": 0.75, "val/loss": 0.2}, "EarlyStopping") == 0.75


def test_a_name_never_logged_lists_the_logged_names_and_the_closest_one() -> None:
    with pytest.raises(MissingMetricError) as excinfo:
        Monitor("val/accuracy").read({"val/acc": 0.7, "val/loss": 0.2, "lr": 0.1}, "Who")
    message = message_of(excinfo)
    assert message.startswith("Who monitors 'val/accuracy', which was never logged.")
    assert "Did you mean 'val/acc'?" in message
    assert "Logged names: lr, val/acc, val/loss." in message


def test_a_validation_name_without_validation_figures_asks_for_a_val_loader() -> None:
    with pytest.raises(MissingMetricError) as excinfo:
        Monitor("val/loss").read({"train/loss": 0.3}, "EarlyStopping")
    assert message_of(excinfo).endswith("Validation names need a val_loader.")


def test_early_stopping_on_a_real_run_reports_the_missing_name_by_the_monitor(
    run_dir: Path,
) -> None:
    stopper = EarlyStopping(monitor="val/los")
    trainer = scripted_trainer(run_dir, {"loss": [1.0, 0.9]}, callbacks=[stopper])
    with pytest.raises(MissingMetricError) as excinfo:
        trainer.fit()
    message = message_of(excinfo)
    assert "'val/los', which was never logged. Did you mean 'val/loss'?" in message


# ------------------------------------------------------------------ plateau schedulers
def test_plateau_scheduler_monitor_never_logged_lists_the_logged_names(
    trainer_factory: Callable,
) -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    fitted = trainer_factory(
        model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer),
        scheduler_monitor="val/accuracy",
    )
    with pytest.raises(KeyError) as excinfo:
        fitted.fit()
    message = message_of(excinfo)
    assert "'val/accuracy', which was never logged" in message
    assert "Did you mean 'val/acc'?" in message
    assert "Logged names: lr, train/loss, val/acc, val/loss." in message


def test_plateau_scheduler_on_val_loss_without_val_loader_asks_for_one(
    trainer_factory: Callable,
) -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    fitted = trainer_factory(
        model,
        optimizer=optimizer,
        val_loader=None,
        scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer),
    )
    with pytest.raises(KeyError) as excinfo:
        fitted.fit()
    assert "Validation names need a val_loader" in message_of(excinfo)
