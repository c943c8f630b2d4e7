"""Precision modes: bf16 and fp16 autocast train as well as float32; the GradScaler's state
travels in checkpoints."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_loader, make_mlp, make_trainer
from torch import nn

from trainer import Trainer
from trainer.callbacks import Callback
from trainer.checkpoint import load_checkpoint
from trainer.data import DigitsData
from trainer.metrics import accuracy
from trainer.precision import Precision
from trainer.run_files import find_checkpoint


class OutputDtypes(Callback):
    """The dtype of the model's outputs in each training step, read by a forward hook."""

    def __init__(self) -> None:
        self.dtypes: set[torch.dtype] = set()

    def on_fit_start(self, trainer: Trainer) -> None:
        trainer.model.register_forward_hook(self._record)

    def _record(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if module.training:
            self.dtypes.add(output.dtype)


def fit_digits(
    digits: DigitsData, precision: str, run_dir: Path, device: str = "cpu", **overrides: Any
) -> Trainer:
    model = make_mlp()
    trainer = Trainer(
        model,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=digits.train_loader(),
        val_loader=digits.val_loader(),
        metrics={"acc": accuracy},
        max_epochs=4,
        precision=precision,
        device=device,
        seed=0,
        run_dir=run_dir,
        progress_bar=False,
        logger=False,
        **overrides,
    )
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def float32_accuracy(digits: DigitsData, tmp_path_factory: pytest.TempPathFactory) -> float:
    """Validation accuracy of the reference run in full precision."""
    torch.set_num_threads(1)
    trainer = fit_digits(digits, "32", tmp_path_factory.mktemp("float32"))
    assert trainer.metrics["val/acc"] >= 0.9
    return trainer.metrics["val/acc"]


@pytest.mark.parametrize(
    ("precision", "activations", "weights"),
    [
        ("bf16-mixed", torch.bfloat16, torch.float32),
        ("16-mixed", torch.float16, torch.float32),
        ("bf16-true", torch.bfloat16, torch.bfloat16),
    ],
)
def test_every_precision_trains_digits_as_well_as_float32_on_cpu(
    digits: DigitsData,
    run_dir: Path,
    float32_accuracy: float,
    precision: str,
    activations: torch.dtype,
    weights: torch.dtype,
) -> None:
    dtypes = OutputDtypes()
    trainer = fit_digits(digits, precision, run_dir, callbacks=[dtypes])
    assert abs(trainer.metrics["val/acc"] - float32_accuracy) <= 0.03
    assert dtypes.dtypes == {activations}
    assert {param.dtype for param in trainer.model.parameters()} == {weights}


def test_bf16_true_casts_float_inputs_and_keeps_integer_targets(trainer_factory: Callable) -> None:
    seen: list[tuple[torch.dtype, torch.dtype]] = []

    class RecordDtypes(Callback):
        def on_train_batch_start(self, trainer: Trainer, batch: Any, batch_idx: int) -> None:
            seen.append((batch[0].dtype, batch[1].dtype))

    trainer = trainer_factory(precision="bf16-true", max_steps=2, callbacks=[RecordDtypes()])
    trainer.fit()
    assert seen == [(torch.bfloat16, torch.int64)] * 2
    assert torch.get_default_dtype() == torch.float32  # restored after each forward pass
    predictions = trainer.predict(make_loader(n=8))
    assert predictions[0].dtype == torch.bfloat16


def test_bf16_true_checkpoints_bfloat16_weights_and_resumes(
    trainer_factory: Callable, run_dir: Path
) -> None:
    first = trainer_factory(precision="bf16-true", checkpoint=True, max_epochs=1)
    first.fit()
    path, saved = find_checkpoint("last", run_dir / "version_0" / "checkpoints")
    assert {tensor.dtype for tensor in saved["model"].values()} == {torch.bfloat16}

    resumed = trainer_factory(precision="bf16-true", checkpoint=True, max_epochs=2)
    resumed.fit(ckpt_path=path)
    straight = make_trainer(run_dir / "straight", precision="bf16-true", max_epochs=2)
    straight.fit()
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_only_16_mixed_has_a_live_grad_scaler() -> None:
    cpu = torch.device("cpu")
    assert Precision("16-mixed", cpu).scaler.is_enabled()
    assert not Precision("bf16-mixed", cpu).scaler.is_enabled()
    assert not Precision("bf16-true", cpu).scaler.is_enabled()
    assert not Precision("32", cpu).scaler.is_enabled()
    assert Precision("32", cpu).state_dict() == {}


def test_an_unknown_precision_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="precision='fp8' is not supported; use one of '32', "
                       "'16-mixed', 'bf16-mixed', 'bf16-true'"):
        Precision("fp8", torch.device("cpu"))


def test_16_mixed_on_cpu_keeps_the_scaler_state_in_the_checkpoint(
    trainer_factory: Callable, run_dir: Path
) -> None:
    trainer = trainer_factory(precision="16-mixed", checkpoint=True)
    trainer.fit()
    scaler = trainer.precision.scaler
    assert scaler.is_enabled()
    assert trainer.global_step == 10
    assert scaler.state_dict()["_growth_tracker"] == 10  # ten clean steps since the last growth

    path = run_dir / "version_0" / "checkpoints" / "last-epoch=1-step=10.ckpt"
    saved = load_checkpoint(path)["precision"]
    assert saved == scaler.state_dict()


def test_resume_restores_the_grad_scaler(trainer_factory: Callable) -> None:
    first = trainer_factory(precision="16-mixed", checkpoint=True)
    first.fit()

    resumed = trainer_factory(precision="16-mixed", checkpoint=True)
    assert resumed.precision.scaler.state_dict()["_growth_tracker"] == 0
    resumed.fit(ckpt_path="last")
    assert resumed.precision.scaler.state_dict() == first.precision.scaler.state_dict()


class InfiniteGradientsAtFirstStep(Trainer):
    """A finite loss whose gradients overflow on the run's first batch, as float16 backward
    passes do."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        if self.global_step == 0 and self.epoch == 0:
            loss.register_hook(lambda grad: grad * float("inf"))
        return loss


def test_16_mixed_skips_a_step_with_infinite_gradients_and_backs_off() -> None:
    model = make_mlp()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    trainer = InfiniteGradientsAtFirstStep(
        model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=[(torch.randn(4, 64), torch.randint(0, 10, (4,)))],
        max_steps=1,
        precision="16-mixed",
        device="cpu",
        progress_bar=False,
        logger=False,
        checkpoint=False,
    )
    trainer.fit()
    assert trainer.precision.scaler.get_scale() == 2.0**16 * 0.5
    assert trainer.state.skipped_steps == 1
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_a_skipped_step_is_counted_and_does_not_advance_the_scheduler(run_dir: Path) -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = InfiniteGradientsAtFirstStep(
        model,
        optimizer=optimizer,
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=make_loader(n=40, batch_size=8),
        scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5),
        scheduler_interval="step",
        max_epochs=1,
        precision="16-mixed",
        device="cpu",
        run_dir=run_dir,
        progress_bar=False,
        logger=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns of a scheduler stepping before its optimizer
        trainer.fit()
    assert trainer.global_step == 5
    assert trainer.state.skipped_steps == 1
    assert trainer.scheduler.last_epoch == 4
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**4)
    saved = find_checkpoint("last", run_dir / "version_0" / "checkpoints")[1]
    assert saved["state"]["skipped_steps"] == 1


def test_resume_after_a_skipped_step_continues_with_the_backed_off_scaler(
    run_dir: Path,
) -> None:
    def make(max_epochs: int, folder: Path) -> Trainer:
        model = make_mlp()
        return InfiniteGradientsAtFirstStep(
            model,
            optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
            loss_fn=nn.CrossEntropyLoss(),
            train_loader=make_loader(n=40, batch_size=8, shuffle=True),
            max_epochs=max_epochs,
            precision="16-mixed",
            device="cpu",
            seed=0,
            run_dir=folder,
            progress_bar=False,
            logger=False,
        )

    straight = make(3, run_dir / "straight")
    straight.fit()
    make(1, run_dir).fit()
    resumed = make(3, run_dir)
    resumed.fit(ckpt_path="last")

    scaler = resumed.precision.scaler.state_dict()
    assert scaler == straight.precision.scaler.state_dict()
    assert scaler["scale"] == 2.0**16 * 0.5
    assert scaler["_growth_tracker"] == 14  # clean steps since the skipped first one
    assert resumed.state.skipped_steps == straight.state.skipped_steps == 1
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_16_mixed_on_cuda_converges_like_float32_with_a_live_scaler(
    digits: DigitsData, run_dir: Path, float32_accuracy: float
) -> None:
    dtypes = OutputDtypes()
    trainer = fit_digits(digits, "16-mixed", run_dir, device="cuda", callbacks=[dtypes])
    assert trainer.device.type == "cuda"
    assert trainer.precision.scaler.is_enabled()
    assert dtypes.dtypes == {torch.float16}
    assert abs(trainer.metrics["val/acc"] - float32_accuracy) <= 0.03
    assert trainer.state.skipped_steps < trainer.global_step // 10
    _, saved = find_checkpoint("last", run_dir / "version_0" / "checkpoints")
    assert saved["precision"]["scale"] == trainer.precision.scaler.get_scale()


@pytest.mark.gpu
@pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()), reason="needs bf16 CUDA"
)
@pytest.mark.parametrize(("precision", "weights"), [("bf16-mixed", torch.float32),
                                                    ("bf16-true", torch.bfloat16)])  # fmt: skip
def test_bf16_on_cuda_converges_like_float32(
    digits: DigitsData, run_dir: Path, float32_accuracy: float, precision: str,
    weights: torch.dtype,
) -> None:  # fmt: skip
    dtypes = OutputDtypes()
    trainer = fit_digits(digits, precision, run_dir, device="cuda", callbacks=[dtypes])
    assert not trainer.precision.scaler.is_enabled()
    assert dtypes.dtypes == {torch.bfloat16}
    assert {param.dtype for param in trainer.model.parameters()} == {weights}
    assert abs(trainer.metrics["val/acc"] - float32_accuracy) <= 0.03
