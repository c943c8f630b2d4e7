"""`checks`: what a user hands the Trainer and what the steps return is checked early, in the
constructor or at the first batch, with a message of ours that names the argument, the value
and the fix (asserted by content), never a deep torch traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_loader, make_mlp, make_trainer, message_of
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer import Trainer


# ----------------------------------------------------------------------- constructor arguments
def test_model_that_is_not_a_module_is_refused() -> None:
    with pytest.raises(TypeError) as excinfo:
        Trainer(lambda x: x, max_epochs=1)  # type: ignore[arg-type]
    assert "model must be a torch.nn.Module, got function" in message_of(excinfo)


def test_train_loader_that_is_not_iterable_is_refused(trainer_factory: Callable) -> None:
    with pytest.raises(TypeError) as excinfo:
        trainer_factory(train_loader=42)
    assert "train_loader must be an iterable of batches" in message_of(excinfo)


def test_empty_dataloader_is_refused_at_construction(trainer_factory: Callable) -> None:
    empty = DataLoader(TensorDataset(torch.empty(0, 64), torch.empty(0, dtype=torch.long)))
    with pytest.raises(ValueError) as excinfo:
        trainer_factory(train_loader=empty)
    message = message_of(excinfo)
    assert "train_loader is empty" in message
    assert "drop_last" in message


def test_drop_last_batch_larger_than_data_set_is_refused_at_construction(
    trainer_factory: Callable,
) -> None:
    dataset = TensorDataset(torch.randn(5, 64), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError) as excinfo:
        trainer_factory(train_loader=DataLoader(dataset, batch_size=8, drop_last=True))
    assert "0 batches" in message_of(excinfo)


def test_missing_max_epochs_and_max_steps_is_refused(trainer_factory: Callable) -> None:
    with pytest.raises(ValueError) as excinfo:
        trainer_factory(max_epochs=None, max_steps=None)
    message = message_of(excinfo)
    assert "max_epochs" in message
    assert "max_steps" in message


@pytest.mark.parametrize("name", ["max_epochs", "max_steps"])
@pytest.mark.parametrize("value", [0, -3, 2.5])
def test_non_positive_or_fractional_limits_are_refused(
    trainer_factory: Callable, name: str, value: Any
) -> None:
    with pytest.raises(ValueError) as excinfo:
        trainer_factory(**{name: value})
    assert f"{name} must be a positive integer, got {value!r}" in message_of(excinfo)


@pytest.mark.parametrize("value", [0, -1])
def test_accumulate_grad_batches_below_one_is_refused(
    trainer_factory: Callable, value: int
) -> None:
    with pytest.raises(ValueError) as excinfo:
        trainer_factory(accumulate_grad_batches=value)
    message = message_of(excinfo)
    assert f"accumulate_grad_batches must be a positive integer, got {value}" in message


def test_log_every_n_steps_below_one_is_refused(trainer_factory: Callable) -> None:
    with pytest.raises(ValueError) as excinfo:
        trainer_factory(log_every_n_steps=0)
    assert "log_every_n_steps must be a positive integer, got 0" in message_of(excinfo)


def test_non_positive_gradient_clip_val_is_refused(trainer_factory: Callable) -> None:
    with pytest.raises(ValueError) as excinfo:
        trainer_factory(gradient_clip_val=0.0)
    assert "gradient_clip_val must be > 0 or None" in message_of(excinfo)


def test_missing_loss_fn_with_the_default_steps_is_refused(trainer_factory: Callable) -> None:
    with pytest.raises(ValueError) as excinfo:
        trainer_factory(loss_fn=None)
    message = message_of(excinfo)
    assert "loss_fn is missing" in message
    assert "loss_fn=nn.CrossEntropyLoss()" in message
    assert "override training_step" in message


def test_missing_loss_fn_is_fine_when_both_steps_are_overridden(run_dir: Path) -> None:
    class OwnLoss(Trainer):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.model(batch[0]).pow(2).mean()

        def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.model(batch[0]).pow(2).mean()

    model = make_mlp()
    history = make_trainer(
        run_dir, model, trainer_class=OwnLoss, optimizer=torch.optim.SGD(model.parameters(), 0.01),
        loss_fn=None, val_loader=make_loader(n=8), metrics=None, max_epochs=1,
    ).fit()  # fmt: skip
    assert "val/loss" in history[0]


# ------------------------------------------------------------------------- what a step returns
def fit_returning(result: Callable[[torch.Tensor], Any], run_dir: Path) -> None:
    """Fit one epoch with a training_step that returns `result(loss)`."""

    class StepReturns(Trainer):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            inputs, targets = batch
            return result(self.loss_fn(self.model(inputs), targets))

    make_trainer(
        run_dir, trainer_class=StepReturns, val_loader=None, metrics=None, max_epochs=1
    ).fit()


def test_loss_that_is_not_a_scalar_asks_about_mean(trainer_factory: Callable) -> None:
    # Without the sanity pass, which meets the loss first in validation_step's self.log.
    fitted = trainer_factory(loss_fn=nn.CrossEntropyLoss(reduction="none"), num_sanity_val_steps=0)
    with pytest.raises(ValueError) as excinfo:
        fitted.fit()
    message = message_of(excinfo)
    assert "scalar" in message
    assert "(8,)" in message
    assert "did you forget .mean()" in message


def test_training_step_returning_none_says_what_to_return(run_dir: Path) -> None:
    with pytest.raises(ValueError) as excinfo:
        fit_returning(lambda loss: None, run_dir)
    message = message_of(excinfo)
    assert "training_step returned None" in message
    assert "return the loss tensor or a dict with 'loss'" in message


def test_training_step_dict_without_loss_lists_its_keys(run_dir: Path) -> None:
    with pytest.raises(ValueError) as excinfo:
        fit_returning(lambda loss: {"total": loss, "aux": loss.detach()}, run_dir)
    message = message_of(excinfo)
    assert "without 'loss'" in message
    assert "['aux', 'total']" in message


def test_training_step_returning_a_float_asks_for_a_tensor(run_dir: Path) -> None:
    with pytest.raises(TypeError) as excinfo:
        fit_returning(lambda loss: loss.item(), run_dir)
    assert "the loss must be a tensor, got float" in message_of(excinfo)


def test_loss_without_grad_explains_why(run_dir: Path) -> None:
    with pytest.raises(ValueError) as excinfo:
        fit_returning(lambda loss: loss.detach(), run_dir)
    assert "does not require grad" in message_of(excinfo)


# -------------------------------------------------------------------------------- batch shapes
def test_batch_of_three_items_says_how_to_override_training_step(
    trainer_factory: Callable,
) -> None:
    inputs, targets = torch.randn(16, 64), torch.randint(0, 10, (16,))
    loader = DataLoader(TensorDataset(inputs, targets, torch.ones(16)), batch_size=8)
    fitted = trainer_factory(train_loader=loader)
    with pytest.raises(TypeError) as excinfo:
        fitted.fit()
    message = message_of(excinfo)
    assert "(inputs, targets)" in message
    assert "of 3 items" in message
    assert "Override training_step(self, batch, batch_idx)" in message


def test_dict_batch_says_how_to_override_training_step(trainer_factory: Callable) -> None:
    batches = [{"pixels": torch.randn(8, 64), "label": torch.randint(0, 10, (8,))}] * 2
    fitted = trainer_factory(train_loader=batches)
    with pytest.raises(TypeError) as excinfo:
        fitted.fit()
    message = message_of(excinfo)
    assert "got a dict" in message
    assert "Override training_step" in message


def test_dict_batch_in_validation_says_how_to_override_validation_step(
    trainer_factory: Callable,
) -> None:
    batches = [{"pixels": torch.randn(8, 64), "label": torch.randint(0, 10, (8,))}]
    fitted = trainer_factory(val_loader=batches)
    with pytest.raises(TypeError) as excinfo:
        fitted.fit()
    assert "Override validation_step" in message_of(excinfo)
