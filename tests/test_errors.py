"""Bad input fails early, in the constructor or at the first batch, with a message of ours
that names the problem and the fix, never with a deep torch traceback.

The checks of `checks.py` have their own file (test_checks.py), and so do the monitor's
(callbacks/test_monitor.py); these are the rest: devices, precision, optimizers and
schedulers, metrics and logging, callbacks, loaders that turn out empty."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_mlp, make_trainer, message_of
from torch.utils.data import DataLoader, IterableDataset

from trainer import Trainer


# ----------------------------------------------------------------- loaders that turn out empty
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


# ---------------------------------------------------------------------------- choice arguments
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

    with pytest.raises(ValueError) as excinfo:
        make_trainer(
            run_dir, trainer_class=Configured, optimizer=None, val_loader=None, metrics=None,
            max_epochs=1, scheduler_interval="batch",
        ).fit()  # fmt: skip
    assert "'epoch', 'step'" in message_of(excinfo)


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


# ------------------------------------------------------------------------------------- devices
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


# ---------------------------------------------------------------------- optimizers and metrics
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

    fitted = make_trainer(
        run_dir, trainer_class=LogsVector, val_loader=None, metrics=None, max_epochs=1
    )
    with pytest.raises(ValueError) as excinfo:
        fitted.fit()
    message = message_of(excinfo)
    assert "self.log('train/outputs', ...) needs a scalar" in message
    assert "(10,)" in message


# --------------------------------------------------------------------------------- wrong types
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
