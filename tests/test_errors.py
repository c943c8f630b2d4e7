"""Bad input fails early, in the constructor or at the first batch, with a message of ours
that names the problem and the fix, never with a deep torch traceback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_loader, make_mlp
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import trainer
from trainer import Trainer

PACKAGE_DIR = Path(trainer.__file__).resolve().parent


def message_of(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    """The error's message, after checking it was raised by trainer's own code."""
    raised_in = Path(str(excinfo.traceback[-1].path)).resolve()
    assert PACKAGE_DIR in raised_in.parents, f"raised in {raised_in}, not by trainer itself"
    return str(excinfo.value)


# ------------------------------------------------------------------------------ empty loaders
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


def test_generator_that_yields_nothing_fails_at_fit(trainer_factory: Callable) -> None:
    def no_batches() -> Iterator[Any]:
        yield from ()

    fitted = trainer_factory(train_loader=no_batches())
    with pytest.raises(ValueError) as excinfo:
        fitted.fit()
    assert "train_loader produced no batches" in message_of(excinfo)


def test_iterable_dataset_that_yields_nothing_fails_at_fit(trainer_factory: Callable) -> None:
    class Nothing(IterableDataset):
        def __iter__(self) -> Iterator[Any]:
            return iter(())

    fitted = trainer_factory(train_loader=DataLoader(Nothing(), batch_size=4))
    with pytest.raises(ValueError) as excinfo:
        fitted.fit()
    assert "produced no batches" in message_of(excinfo)


# ------------------------------------------------------------------------- what a step returns
def fit_returning(result: Callable[[torch.Tensor], Any], run_dir: Path) -> None:
    """Fit one epoch with a training_step that returns `result(loss)`."""

    class StepReturns(Trainer):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            inputs, targets = batch
            return result(self.loss_fn(self.model(inputs), targets))

    model = make_mlp()
    StepReturns(
        model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=make_loader(),
        max_epochs=1,
        run_dir=run_dir,
        progress_bar=False,
        logger=False,
        checkpoint=False,
        device="cpu",
    ).fit()


def test_loss_that_is_not_a_scalar_asks_about_mean(trainer_factory: Callable) -> None:
    fitted = trainer_factory(loss_fn=nn.CrossEntropyLoss(reduction="none"))
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


# ------------------------------------------------------------------------------ batch shapes
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


# --------------------------------------------------------------------------- choice arguments
@pytest.mark.parametrize("precision", ["fp16", "16", "bf16", 64])
def test_unknown_precision_lists_the_valid_ones(trainer_factory: Callable, precision: Any) -> None:
    with pytest.raises(ValueError) as excinfo:
        trainer_factory(precision=precision)
    message = message_of(excinfo)
    assert f"precision={str(precision)!r}" in message
    assert "'32', '16-mixed', 'bf16-mixed'" in message


@pytest.mark.parametrize("device", ["gpu", "tpu", "xla"])
def test_unknown_device_lists_the_valid_ones(trainer_factory: Callable, device: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        trainer_factory(device=device)
    message = message_of(excinfo)
    assert f"device={device!r}" in message
    assert "auto, cpu, cuda, cuda:N, mps" in message


def test_scheduler_interval_typo_lists_the_valid_ones(trainer_factory: Callable) -> None:
    with pytest.raises(ValueError) as excinfo:
        trainer_factory(scheduler_interval="batch")
    message = message_of(excinfo)
    assert "scheduler_interval='batch'" in message
    assert "'epoch', 'step'" in message


def test_scheduler_interval_typo_is_caught_with_configure_optimizers(run_dir: Path) -> None:
    class Configured(Trainer):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.model.parameters(), lr=0.1)

    model = make_mlp()
    with pytest.raises(ValueError) as excinfo:
        Configured(
            model,
            loss_fn=nn.CrossEntropyLoss(),
            train_loader=make_loader(),
            max_epochs=1,
            scheduler_interval="batch",
            run_dir=run_dir,
            progress_bar=False,
            logger=False,
            checkpoint=False,
            device="cpu",
        ).fit()
    assert "'epoch', 'step'" in message_of(excinfo)


# ------------------------------------------------------------------------------ stop criteria
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


# ------------------------------------------------------------------------- monitored metrics
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


def test_plateau_scheduler_with_step_interval_is_refused(trainer_factory: Callable) -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError) as excinfo:
        trainer_factory(
            model,
            optimizer=optimizer,
            scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer),
            scheduler_interval="step",
        )
    assert "use scheduler_interval='epoch'" in message_of(excinfo)


# ------------------------------------------------------------------------------------ devices
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_suggests_cpu_or_auto(trainer_factory: Callable) -> None:
    with pytest.raises(ValueError) as excinfo:
        trainer_factory(device="cuda")
    message = message_of(excinfo)
    assert "device='cuda'" in message
    assert "no CUDA GPU is available" in message
    assert "device='cpu'" in message


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="this machine has 8 GPUs")
def test_gpu_index_that_does_not_exist_is_refused(trainer_factory: Callable) -> None:
    with pytest.raises(ValueError) as excinfo:
        trainer_factory(device="cuda:7")
    message = message_of(excinfo)
    assert "device='cuda:7'" in message
    if torch.cuda.is_available():
        assert f"only {torch.cuda.device_count()} GPU(s) exist" in message
    else:
        assert "no CUDA GPU is available" in message


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_where_it_is_missing_is_refused(trainer_factory: Callable) -> None:
    with pytest.raises(ValueError) as excinfo:
        trainer_factory(device="mps")
    assert "Apple MPS, which is not available here" in message_of(excinfo)


# ------------------------------------------------------------------ loss, optimizer, metrics
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
    history = OwnLoss(
        model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
        train_loader=make_loader(),
        val_loader=make_loader(n=8),
        max_epochs=1,
        run_dir=run_dir,
        progress_bar=False,
        logger=False,
        checkpoint=False,
        device="cpu",
    ).fit()
    assert "val/loss" in history[0]


def test_optimizer_built_from_another_model_is_refused(trainer_factory: Callable) -> None:
    other = make_mlp(seed=1)
    with pytest.raises(ValueError) as excinfo:
        trainer_factory(make_mlp(), optimizer=torch.optim.SGD(other.parameters(), lr=0.1))
    message = message_of(excinfo)
    assert "the optimizer holds none of the model's parameters" in message
    assert "model.parameters()" in message


def test_optimizer_factory_returning_something_else_is_refused(
    trainer_factory: Callable,
) -> None:
    with pytest.raises(TypeError) as excinfo:
        trainer_factory(optimizer=lambda params: list(params))
    assert "returned list, not a torch.optim.Optimizer" in message_of(excinfo)


def test_metric_returning_a_non_scalar_names_the_metric(trainer_factory: Callable) -> None:
    def per_sample_hits(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs.argmax(-1) == targets).float()

    fitted = trainer_factory(metrics={"hits": per_sample_hits})
    with pytest.raises(ValueError) as excinfo:
        fitted.fit()
    message = message_of(excinfo)
    assert "metric 'hits' must return a scalar tensor, got (8,)" in message
    assert ".mean()" in message


def test_logging_a_non_scalar_names_the_value(run_dir: Path) -> None:
    class LogsVector(Trainer):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            outputs = self.model(batch[0])
            self.log("train/outputs", outputs.mean(dim=0))
            return self.loss_fn(outputs, batch[1])

    model = make_mlp()
    fitted = LogsVector(
        model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=make_loader(),
        max_epochs=1,
        run_dir=run_dir,
        progress_bar=False,
        logger=False,
        checkpoint=False,
        device="cpu",
    )
    with pytest.raises(ValueError) as excinfo:
        fitted.fit()
    message = message_of(excinfo)
    assert "self.log('train/outputs', ...) needs a scalar" in message
    assert "(10,)" in message


# --------------------------------------------------------------------------- wrong types
def test_model_that_is_not_a_module_is_refused() -> None:
    with pytest.raises(TypeError) as excinfo:
        Trainer(lambda x: x, max_epochs=1)  # type: ignore[arg-type]
    assert "model must be a torch.nn.Module, got function" in message_of(excinfo)


def test_callback_that_is_not_a_callback_is_refused(trainer_factory: Callable) -> None:
    with pytest.raises(TypeError) as excinfo:
        trainer_factory(callbacks=[print])
    assert "subclass Callback" in message_of(excinfo)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("progress_bar", "ProgressBar"),
        ("logger", "TensorBoardLogger or CSVLogger"),
        ("checkpoint", "ModelCheckpoint"),
    ],
)
def test_default_callback_switch_of_the_wrong_type_is_refused(
    trainer_factory: Callable, name: str, kind: str
) -> None:
    with pytest.raises(TypeError) as excinfo:
        trainer_factory(**{name: "yes"})
    assert f"{name} must be True, False or a {kind}, got str" in message_of(excinfo)


def test_train_loader_that_is_not_iterable_is_refused(trainer_factory: Callable) -> None:
    with pytest.raises(TypeError) as excinfo:
        trainer_factory(train_loader=42)
    assert "train_loader must be an iterable of batches" in message_of(excinfo)
