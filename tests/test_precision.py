"""Precision modes: bf16 and fp16 autocast train as well as float32; the GradScaler's state
travels in checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_mlp
from torch import nn

from trainer import Trainer
from trainer.callbacks import Callback
from trainer.checkpoint import find_checkpoint, load_checkpoint
from trainer.data import DigitsData
from trainer.metrics import accuracy
from trainer.precision import Precision


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


@pytest.mark.parametrize("precision", ["32", "bf16-mixed", "16-mixed"])
def test_every_precision_trains_digits_as_well_as_float32_on_cpu(
    digits: DigitsData, run_dir: Path, precision: str
) -> None:
    dtypes = OutputDtypes()
    trainer = fit_digits(digits, precision, run_dir, callbacks=[dtypes])
    assert trainer.metrics["val/acc"] >= 0.9
    expected = {"32": torch.float32, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
    assert dtypes.dtypes == {expected[precision]}
    assert all(param.dtype == torch.float32 for param in trainer.model.parameters())


def test_only_16_mixed_has_a_live_grad_scaler() -> None:
    cpu = torch.device("cpu")
    assert Precision("16-mixed", cpu).scaler.is_enabled()
    assert not Precision("bf16-mixed", cpu).scaler.is_enabled()
    assert not Precision("32", cpu).scaler.is_enabled()
    assert Precision("32", cpu).state_dict() == {}


def test_16_mixed_on_cpu_keeps_the_scaler_state_in_the_checkpoint(
    trainer_factory: Callable, run_dir: Path
) -> None:
    trainer = trainer_factory(precision="16-mixed", checkpoint=True)
    trainer.fit()
    scaler = trainer.precision.scaler
    assert scaler.is_enabled()
    assert trainer.global_step == 10
    assert scaler.state_dict()["_growth_tracker"] == 10  # ten clean steps since the last growth

    saved = load_checkpoint(run_dir / "checkpoints" / "last-epoch=1-step=10.ckpt")["precision"]
    assert saved == scaler.state_dict()


def test_resume_restores_the_grad_scaler(trainer_factory: Callable) -> None:
    first = trainer_factory(precision="16-mixed", checkpoint=True)
    first.fit()

    resumed = trainer_factory(precision="16-mixed", checkpoint=True)
    assert resumed.precision.scaler.state_dict()["_growth_tracker"] == 0
    resumed.fit(ckpt_path="last")
    assert resumed.precision.scaler.state_dict() == first.precision.scaler.state_dict()


def test_16_mixed_skips_a_step_with_infinite_gradients_and_backs_off(
    trainer_factory: Callable,
) -> None:
    class InfiniteGradientsOnce(Trainer):
        """A finite loss whose gradients overflow, as float16 backward passes do."""

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            if batch_idx == 0:
                loss.register_hook(lambda grad: grad * float("inf"))
            return loss

    model = make_mlp()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    trainer = InfiniteGradientsOnce(
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
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_16_mixed_on_cuda_trains_digits_with_a_live_scaler(
    digits: DigitsData, run_dir: Path
) -> None:
    dtypes = OutputDtypes()
    trainer = fit_digits(digits, "16-mixed", run_dir, device="cuda", callbacks=[dtypes])
    assert trainer.device.type == "cuda"
    assert trainer.precision.scaler.is_enabled()
    assert dtypes.dtypes == {torch.float16}
    assert trainer.metrics["val/acc"] >= 0.9
    _, saved = find_checkpoint("last", run_dir / "checkpoints")
    assert saved["precision"]["scale"] == trainer.precision.scaler.get_scale()


@pytest.mark.gpu
@pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()), reason="needs bf16 CUDA"
)
def test_bf16_mixed_on_cuda_trains_digits(digits: DigitsData, run_dir: Path) -> None:
    trainer = fit_digits(digits, "bf16-mixed", run_dir, device="cuda")
    assert not trainer.precision.scaler.is_enabled()
    assert trainer.metrics["val/acc"] >= 0.9
