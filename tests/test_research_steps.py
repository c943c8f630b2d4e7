"""Research steps: several optimizers, a step that owns its update, `stage`, epoch-mean weights.

Each test states what a hand-written loop would do and checks the trainer does the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from conftest import (
    as_format_3,
    assert_equal_states,
    make_loader,
    make_mlp,
    make_trainer,
    save_as_format,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer import Trainer
from trainer.callbacks import Callback, ModelCheckpoint
from trainer.checkpoint import CheckpointError, load_checkpoint


class TwoNets(nn.Module):
    """A generator and a discriminator, as a GAN holds them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.generator = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 64))
        self.discriminator = nn.Sequential(nn.Linear(64, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))


class GAN(Trainer):
    automatic_optimization = False

    def configure_optimizers(self) -> Any:
        return {
            "g": torch.optim.Adam(self.model.generator.parameters(), 1e-3),
            "d": torch.optim.Adam(self.model.discriminator.parameters(), 1e-3),
        }

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        real, _ = batch
        bce = nn.functional.binary_cross_entropy_with_logits
        noise = torch.randn(real.shape[0], 8)
        fake = self.model.generator(noise)
        real_logits = self.model.discriminator(real)
        fake_logits = self.model.discriminator(fake.detach())
        loss_d = bce(real_logits, torch.ones_like(real_logits)) + bce(
            fake_logits, torch.zeros_like(fake_logits)
        )
        self.backward(loss_d)
        self.step(self.optimizers["d"])
        fooled = self.model.discriminator(fake)
        loss_g = bce(fooled, torch.ones_like(fooled))
        self.backward(loss_g)
        self.step(self.optimizers["g"])
        self.log("train/loss_d", loss_d)
        return {"loss": loss_g.detach()}


def _gan(run_dir: Path, **options: Any) -> GAN:
    return GAN(
        TwoNets(), train_loader=make_loader(n=48, batch_size=8, shuffle=True),
        **{"max_epochs": 2, "run_dir": run_dir, "progress_bar": False, "logger": False,
           "checkpoint": False, "device": "cpu", "seed": 0, **options},
    )  # fmt: skip


def test_a_gan_steps_both_optimizers_and_counts_batches(run_dir: Path) -> None:
    trainer = _gan(run_dir, scheduler={"g": lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1)},
                   scheduler_interval="step")  # fmt: skip
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    history = trainer.fit()
    assert trainer.optimizer is None and set(trainer.optimizers) == {"g", "d"}
    assert trainer.global_step == 12  # training batches, in manual mode
    for name, value in trainer.model.state_dict().items():
        assert not torch.equal(value, before[name]), f"{name} did not train"
    assert {"train/loss", "train/loss_d", "lr/g", "lr/d"} <= set(history[-1])
    assert history[-1]["lr/g"] == pytest.approx(1e-3 * 0.1**12)  # its scheduler, per step
    assert history[-1]["lr/d"] == 1e-3  # none for "d"


def test_a_gan_resumed_from_any_checkpoint_ends_identically(tmp_path: Path) -> None:
    straight = _gan(tmp_path / "straight", max_epochs=3)
    straight.fit()
    saver = ModelCheckpoint(every_n_steps=5, every_n_epochs=1, keep_last=20, dirpath=tmp_path / "c")
    _gan(tmp_path / "saving", max_epochs=3, callbacks=[saver]).fit()
    files = sorted(saver.dirpath.glob("*.ckpt"))
    assert len(files) >= 5
    for file in files:
        resumed = _gan(tmp_path / f"resumed-{file.stem}", max_epochs=3)
        resumed.fit(ckpt_path=file)
        for name, value in straight.model.state_dict().items():
            assert torch.equal(value, resumed.model.state_dict()[name]), (file.name, name)
        for key in ("g", "d"):
            expected = straight.optimizers[key].state_dict()["state"]
            actual = resumed.optimizers[key].state_dict()["state"]
            for index, state in expected.items():
                for entry, tensor in state.items():
                    assert torch.equal(tensor, actual[index][entry]), (file.name, key, entry)


def test_a_gan_file_of_format_3_resumes_identically(tmp_path: Path) -> None:
    """Format 3 held several optimizers and their schedulers by name, beside an empty
    `optimizer` and `scheduler`; a file of it resumes as one of format 4 does."""
    options: dict[str, Any] = {
        "scheduler": {"g": lambda opt: torch.optim.lr_scheduler.StepLR(opt, 4, gamma=0.5)},
        "scheduler_interval": "step",
    }
    straight = _gan(tmp_path / "straight", **options)
    straight.fit()
    saver = ModelCheckpoint(every_n_steps=5, keep_last=10, dirpath=tmp_path / "saved")
    _gan(tmp_path / "saving", callbacks=[saver], **options).fit()
    saved = load_checkpoint(saver.dirpath / "last-epoch=0-step=5.ckpt")  # 5 of 6 batches
    assert set(saved["optimizers"]) == {"g", "d"} and set(saved["schedulers"]) == {"g"}
    older = save_as_format(as_format_3(saved), tmp_path / "older.ckpt", 3)

    resumed = _gan(tmp_path / "resumed", **options)
    resumed.fit(ckpt_path=older)
    assert resumed.global_step == straight.global_step == 12
    assert_equal_states(resumed.model.state_dict(), straight.model.state_dict(), "model")
    for name in ("g", "d"):
        expected, actual = straight.optimizers[name], resumed.optimizers[name]
        assert_equal_states(actual.state_dict(), expected.state_dict(), f"optimizer {name}")
    assert_equal_states(
        resumed.schedulers["g"].state_dict(), straight.schedulers["g"].state_dict(), "g's"
    )


def test_a_checkpoint_of_other_optimizers_is_refused_naming_both(
    run_dir: Path, tmp_path: Path
) -> None:
    gan = _gan(run_dir, max_epochs=1)
    gan.fit()  # its optimizers exist once `configure_optimizers` has run
    path = gan.save_checkpoint(tmp_path / "gan.ckpt")
    model = TwoNets()
    lone = make_trainer(run_dir, model, optimizer=torch.optim.Adam(model.parameters()))
    expected = r"holds optimizers \['d', 'g'\], this trainer has \['0'\]; configure the same"
    with pytest.raises(CheckpointError, match=expected):
        lone.fit(ckpt_path=path)


class ManualRegression(Trainer):
    automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = nn.functional.cross_entropy(self.model(inputs), targets)
        self.backward(loss)
        self.step(self.optimizer)
        return loss


def test_manual_16_mixed_with_accumulation_equals_a_hand_written_loop(run_dir: Path) -> None:
    """GradScaler on CPU, windows of 2 batches (the last one short), clipping: same update."""
    loader = make_loader(n=40, batch_size=8)  # 5 batches: windows of 2, 2 and 1
    model = make_mlp(seed=3)
    reference = make_mlp(seed=3)
    trainer = make_trainer(
        run_dir, model, trainer_class=ManualRegression, precision="16-mixed",
        accumulate_grad_batches=2, gradient_clip_val=1.0, max_epochs=2, train_loader=loader,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5), val_loader=None,
    )  # fmt: skip
    trainer.fit()

    optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler("cpu")
    for _ in range(2):
        batches = list(loader)
        for index, (inputs, targets) in enumerate(batches):
            window = 1 if index == 4 else 2
            with torch.autocast("cpu", dtype=torch.float16):
                loss = nn.functional.cross_entropy(reference(inputs), targets)
            scaler.scale(loss / 2).backward()
            if index % 2 == 1 or index == 4:
                if window == 1:
                    for p in reference.parameters():
                        p.grad.mul_(2)
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(list(reference.parameters()), 1.0)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert trainer.global_step == 10


class LBFGSFit(Trainer):
    automatic_optimization = False

    def configure_optimizers(self) -> Any:
        return torch.optim.LBFGS(self.model.parameters(), lr=1, max_iter=20)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad()
            loss = nn.functional.mse_loss(self.model(inputs), targets)
            self.backward(loss)
            return loss

        return self.step(self.optimizer, closure) and closure().detach()


def test_a_closure_optimizer_fits_a_linear_regression(run_dir: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 3, generator=generator)
    targets = inputs @ torch.tensor([[2.0], [-1.0], [0.5]]) + 0.3
    trainer = make_trainer(
        run_dir, nn.Linear(3, 1), trainer_class=LBFGSFit, optimizer=None, val_loader=None,
        train_loader=DataLoader(TensorDataset(inputs, targets), batch_size=64), max_epochs=3,
    )  # fmt: skip
    trainer.fit()
    torch.testing.assert_close(trainer.model.weight.detach(), torch.tensor([[2.0, -1.0, 0.5]]),
                               rtol=0, atol=1e-3)  # fmt: skip


def test_several_optimizers_without_a_manual_step_say_what_to_do(run_dir: Path) -> None:
    model = TwoNets()
    trainer = make_trainer(run_dir, model, optimizer=[
        torch.optim.SGD(model.generator.parameters(), 0.1),
        torch.optim.SGD(model.discriminator.parameters(), 0.1),
    ])  # fmt: skip
    with pytest.raises(ValueError, match="automatic_optimization = False"):
        trainer.fit()


def test_stage_names_what_runs(run_dir: Path) -> None:
    seen: list[tuple[str, Any]] = []

    class Watch(Callback):
        def on_validation_start(self, trainer: Trainer) -> None:
            seen.append(("on_validation_start", trainer.stage))

        def on_train_epoch_end(self, trainer: Trainer) -> None:
            seen.append(("on_train_epoch_end", trainer.stage))

    class Staged(Trainer):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            seen.append(("training_step", self.stage))
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch: Any, batch_idx: int) -> Any:
            seen.append(("validation_step", self.stage))
            return super().validation_step(batch, batch_idx)

        def predict_step(self, batch: Any, batch_idx: int) -> Any:
            seen.append(("predict_step", self.stage))
            return super().predict_step(batch, batch_idx)

    trainer = make_trainer(run_dir, trainer_class=Staged, max_epochs=1, callbacks=[Watch()])
    assert trainer.stage is None
    trainer.fit()
    trainer.test(make_loader(n=8))
    trainer.predict(make_loader(n=8))
    assert trainer.stage is None
    assert set(seen) == {
        ("training_step", "train"), ("on_validation_start", "validate"),
        ("validation_step", "validate"), ("on_train_epoch_end", "train"),
        ("validation_step", "test"), ("predict_step", "predict"),
    }  # fmt: skip


class SequenceFirst(Trainer):
    """Batches of `[seq, batch]` tensors: dimension 0 is the sequence length."""

    LOSSES: ClassVar[dict[int, float]] = {35: 1.0, 5: 3.0}

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        (tokens,) = batch
        loss = self.model(torch.zeros(1, 1)).sum() * 0 + self.LOSSES[tokens.shape[0]]
        return {"loss": loss, "batch_size": tokens.shape[1]}


def test_a_step_sets_the_weight_of_its_loss_in_the_epoch_mean(run_dir: Path) -> None:
    batches = [(torch.zeros(35, 20),), (torch.zeros(5, 20),)]
    trainer = make_trainer(run_dir, nn.Linear(1, 1), trainer_class=SequenceFirst,
                           train_loader=batches, val_loader=None, max_epochs=1)  # fmt: skip
    history = trainer.fit()
    assert history[0]["train/loss"] == pytest.approx(2.0)  # not 1.25, dimension 0's weights


def test_self_log_takes_a_batch_size(run_dir: Path) -> None:
    class Weighted(Trainer):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("train/seen", float(batch_idx), batch_size=1 + batch_idx)
            return super().training_step(batch, batch_idx)

    history = make_trainer(run_dir, trainer_class=Weighted, max_epochs=1).fit()
    # batches 0..4 weighted 1..5: sum(i * (i + 1)) / sum(i + 1) = 40 / 15
    assert history[0]["train/seen"] == pytest.approx(40 / 15)


@pytest.mark.parametrize("name", ["train/nll", None])
def test_the_returned_loss_is_logged_under_another_name_or_not_at_all(
    run_dir: Path, name: str | None
) -> None:
    class Renamed(Trainer):
        log_loss_as = name

    history = make_trainer(run_dir, trainer_class=Renamed, max_epochs=1).fit()
    assert "train/loss" not in history[0]
    assert (name in history[0]) if name else not any(k.startswith("train/") for k in history[0])
