"""The learning-rate finder: its sweep, suggestion, files and restore; `trainer lr-find`."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_mlp, make_trainer
from torch import nn

from trainer import Trainer, cli
from trainer.callbacks import Callback
from trainer.lr_finder import find_lr
from trainer.report import executable

REPO = Path(__file__).resolve().parents[1]


def digits_trainer(run_dir: Path, digits: Any, **overrides: Any) -> Trainer:
    """A small MLP with dropout and BatchNorm on the real digits, with plain SGD."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10)
    )
    options: dict[str, Any] = {
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        "train_loader": digits.train_loader(),
        "val_loader": None,
        "metrics": None,
    }
    return make_trainer(run_dir, model, **(options | overrides))


def test_find_lr_puts_back_weights_buffers_optimizer_state_and_random_state(
    run_dir: Path, digits: Any
) -> None:
    trainer = digits_trainer(run_dir, digits, max_epochs=1)
    trainer.fit()  # so the optimizer has momentum buffers and the model BatchNorm statistics
    model_before = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    momentum_before = [trainer.optimizer.state[p]["momentum_buffer"].clone()
                       for p in trainer.model.parameters()]  # fmt: skip
    metrics_before = dict(trainer.metrics)
    rng_before = torch.get_rng_state()

    result = find_lr(trainer, num_steps=30)

    assert len(result.lrs) > 10  # it did train
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, model_before[name]), name
    for parameter, momentum in zip(trainer.model.parameters(), momentum_before, strict=True):
        assert torch.equal(trainer.optimizer.state[parameter]["momentum_buffer"], momentum)
        assert parameter.grad is None
    assert trainer.optimizer.param_groups[0]["lr"] == 0.01
    assert trainer.metrics == metrics_before
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert trainer.model.training


def test_a_fit_after_find_lr_reaches_the_same_weights_as_a_fit_without_it(
    tmp_path: Path, digits: Any
) -> None:
    plain = digits_trainer(tmp_path / "plain", digits, max_epochs=1, seed=1)
    plain.fit()
    swept = digits_trainer(tmp_path / "swept", digits, max_epochs=1, seed=1)
    find_lr(swept, num_steps=20)
    swept.fit()
    for a, b in zip(plain.model.parameters(), swept.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_learning_rate_grows_exponentially_and_the_sweep_stops_when_the_loss_blows_up(
    run_dir: Path, digits: Any
) -> None:
    trainer = digits_trainer(run_dir, digits, max_epochs=1)
    result = find_lr(trainer, min_lr=1e-4, max_lr=1e4, num_steps=100)
    assert result.lrs[0] == pytest.approx(1e-4)
    ratios = [later / earlier for earlier, later in zip(result.lrs, result.lrs[1:], strict=False)]
    assert ratios == pytest.approx([10 ** (8 / 99)] * len(ratios))
    assert len(result.lrs) < 100  # stopped early
    last = result.losses[-1]
    assert not math.isfinite(last) or last > 4 * min(result.losses)


def test_the_suggestion_is_a_swept_rate_where_the_loss_is_falling(
    run_dir: Path, digits: Any
) -> None:
    trainer = digits_trainer(run_dir, digits, max_epochs=1)
    result = find_lr(trainer, num_steps=100)
    assert result.suggestion is not None and result.suggestion in result.lrs
    index = result.lrs.index(result.suggestion)
    assert result.losses[index + 1] < result.losses[index - 1]
    assert 1e-4 < result.suggestion < 3.0
    assert result.suggestion <= result.lrs[result.losses.index(min(result.losses))] / 10


def test_the_sweep_runs_a_custom_training_step_and_cycles_short_loaders(run_dir: Path) -> None:
    class CountingTrainer(Trainer):
        calls = 0

        def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
            CountingTrainer.calls += 1
            inputs, targets = batch
            loss = nn.functional.cross_entropy(self.model(inputs), targets)
            self.log("train/custom", loss)
            return {"loss": loss}

    trainer = CountingTrainer(
        make_mlp(), optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        train_loader=make_trainer(run_dir).train_loader, max_epochs=1, device="cpu",
        progress_bar=False, logger=False, checkpoint=False,
    )  # fmt: skip
    result = find_lr(trainer, min_lr=1e-5, max_lr=1e-3, num_steps=12)  # the loader has 5 batches
    assert CountingTrainer.calls == len(result.lrs) == 12
    assert "train/custom" not in trainer.metrics


def test_the_plot_and_the_csv_hold_the_curve(run_dir: Path, digits: Any) -> None:
    result = find_lr(digits_trainer(run_dir, digits, max_epochs=1), num_steps=40)
    png = result.plot(run_dir / "lr.png")
    assert png.read_bytes().startswith(b"\x89PNG")
    with result.to_csv(run_dir / "lr.csv").open() as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["lr", "loss", "raw_loss"]
    assert len(rows) == len(result.lrs) + 1
    assert float(rows[1][0]) == pytest.approx(result.lrs[0])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"min_lr": 1.0, "max_lr": 0.1}, "find_lr needs 0 < min_lr < max_lr, got min_lr=1.0"),
        ({"min_lr": 0.0}, "find_lr needs 0 < min_lr < max_lr"),
        ({"num_steps": 1}, "num_steps must be an integer >= 2, got 1"),
        ({"smoothing": 0.0}, "smoothing must lie in (0, 1], got 0.0"),
        ({"diverge_threshold": 1.0}, "diverge_threshold must be > 1, got 1.0"),
    ],
)
def test_bad_sweep_settings_are_refused_with_the_fix(
    run_dir: Path, arguments: dict[str, Any], message: str
) -> None:
    trainer = make_trainer(run_dir)
    before = [parameter.clone() for parameter in trainer.model.parameters()]
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        find_lr(trainer, **arguments)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def test_find_lr_builds_the_optimizer_from_configure_optimizers(run_dir: Path) -> None:
    class Configured(Trainer):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.model.parameters(), lr=0.05)

    trainer = Configured(
        make_mlp(), loss_fn=nn.CrossEntropyLoss(), train_loader=make_trainer(run_dir).train_loader,
        max_epochs=1, device="cpu", progress_bar=False, logger=False, checkpoint=False,
    )  # fmt: skip
    find_lr(trainer, num_steps=5)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.05


def test_lr_find_command_prints_the_suggestion_and_writes_the_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(REPO / "configs" / "digits_mlp.yaml")
    argv = ["lr-find", "--config", config, "--num_steps", "60", "--trainer.run_dir", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "model and optimizer restored afterwards" in out
    suggestion = out.split("suggested lr:  ")[1].split()[0]
    assert 1e-5 < float(suggestion) < 1.0
    use = f"fit --config {config} --optimizer.lr {suggestion}\n"
    assert f"use it:        {executable('trainer')} {use}" in out  # runnable as pasted
    assert (tmp_path / "lr_find.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "lr_find.csv").read_text().startswith("lr,loss,raw_loss")
    # A sweep is not a run: no run folder, nothing saved.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["lr_find.csv", "lr_find.png"]


def test_lr_find_command_reports_a_bad_range_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = str(REPO / "configs" / "digits_mlp.yaml")
    status = cli.main(["lr-find", "-c", config, "--min_lr", "1", "--max_lr", "0.1"])
    assert status == 2
    assert capsys.readouterr().err == (
        "error: lr-find: find_lr needs 0 < min_lr < max_lr, got min_lr=1.0, max_lr=0.1; "
        "the usual range is min_lr=1e-7, max_lr=10.\n"
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_find_lr_under_mixed_precision_on_cuda_restores_weights_and_grad_scaler(
    run_dir: Path, digits: Any, precision: str
) -> None:
    trainer = digits_trainer(run_dir, digits, max_epochs=1, device="cuda", precision=precision)
    trainer.fit()
    weights = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    scaler = trainer.precision.state_dict()
    result = find_lr(trainer, num_steps=40)
    assert result.suggestion is not None
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    assert trainer.precision.state_dict() == scaler


def test_find_lr_sweeps_a_bf16_true_model_through_the_loops_own_step(run_dir: Path) -> None:
    """The sweep casts batches as the loop does: bfloat16 weights get bfloat16 inputs."""
    trainer = make_trainer(run_dir, precision="bf16-true")
    weights_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = find_lr(trainer, num_steps=8, max_lr=1.0)
    assert len(result.lrs) == 8 and all(math.isfinite(loss) for loss in result.raw_losses)
    for name, value in trainer.model.state_dict().items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, weights_before[name])


def test_the_sweep_steps_through_the_loops_verbs_with_accumulation_and_a_step_scheduler(
    run_dir: Path,
) -> None:
    class CountSteps(Callback):
        steps = 0

        def on_before_optimizer_step(self, trainer: Trainer, optimizer: Any) -> None:
            CountSteps.steps += 1

    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    trainer = make_trainer(run_dir, model, optimizer=optimizer, scheduler=scheduler,
                           scheduler_interval="step", accumulate_grad_batches=2,
                           gradient_clip_val=1.0, callbacks=[CountSteps()])  # fmt: skip
    scheduler_before = scheduler.state_dict()
    result = find_lr(trainer, min_lr=1e-5, max_lr=1e-3, num_steps=10)  # the loader has 5 batches
    assert len(result.lrs) == 10
    assert CountSteps.steps == 6  # windows of 2, 2 and the loader's short last 1, twice
    assert scheduler.state_dict() == scheduler_before and trainer.state.skipped_steps == 0
    assert trainer.state.is_fresh_run and optimizer.param_groups[0]["lr"] == 0.1
