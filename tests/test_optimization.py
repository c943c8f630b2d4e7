"""The update path: building optimizers and schedulers, and clipping by norm or by value in
every way a run updates (the loop, `self.step`, a closure, "16-mixed"), with the grad norm.

Each clipping test trains a real model and compares it with the hand-written loop it stands
for, or checks the gradients the step is about to use.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_loader, make_mlp, make_trainer
from torch import nn

from trainer import Trainer
from trainer.callbacks import Callback
from trainer.optimization import build_optimizers, build_schedulers, learning_rates, named

CLIP = 0.01


class LargestGradient(Callback):
    """The largest gradient element each optimizer step is about to use."""

    def __init__(self) -> None:
        self.largest: list[float] = []

    def on_before_optimizer_step(self, trainer: Trainer, optimizer: Any) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        self.largest.append(max(float(g.abs().max()) for g in grads if g is not None))


class OwnsItsUpdate(Trainer):
    automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = self.loss_fn(self.model(inputs), targets)
        self.backward(loss)
        self.step(self.optimizer)
        return loss.detach()


class WithClosure(Trainer):
    """LBFGS, as a step that owns its update steps it: through `self.step(opt, closure)`."""

    automatic_optimization = False

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.LBFGS(self.model.parameters(), lr=0.1, max_iter=3)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad()
            loss = self.loss_fn(self.model(inputs), targets)
            self.backward(loss)
            return loss

        self.step(self.optimizer, closure)
        return self.loss_fn(self.model(inputs), targets).detach()


def _hand_written_lbfgs(model: nn.Module, loader: Any, epochs: int) -> None:
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        for inputs, targets in loader:

            def closure(inputs: Any = inputs, targets: Any = targets) -> torch.Tensor:
                optimizer.zero_grad()
                loss = loss_fn(model(inputs), targets)
                loss.backward()
                nn.utils.clip_grad_value_(model.parameters(), CLIP)
                return loss

            optimizer.step(closure)
            optimizer.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------ clipping by value
def test_value_clipping_bounds_every_gradient_in_the_automatic_loop(run_dir: Path) -> None:
    spy = LargestGradient()
    make_trainer(run_dir, gradient_clip_val=CLIP, gradient_clip_algorithm="value",
                 callbacks=[spy]).fit()  # fmt: skip
    assert len(spy.largest) == 10 and max(spy.largest) <= CLIP


def test_value_clipping_matches_the_hand_written_loop(run_dir: Path) -> None:
    clipped = make_mlp()
    make_trainer(run_dir, clipped, gradient_clip_val=CLIP, gradient_clip_algorithm="value",
                 max_epochs=1, val_loader=None).fit()  # fmt: skip
    reference = make_mlp()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for inputs, targets in make_loader():
        nn.CrossEntropyLoss()(reference(inputs), targets).backward()
        nn.utils.clip_grad_value_(reference.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for a, b in zip(reference.parameters(), clipped.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_value_clipping_bounds_every_gradient_in_a_step_that_owns_its_update(
    run_dir: Path,
) -> None:
    spy = LargestGradient()
    trainer = make_trainer(run_dir, trainer_class=OwnsItsUpdate, gradient_clip_val=CLIP,
                           gradient_clip_algorithm="value", callbacks=[spy])  # fmt: skip
    trainer.fit()
    assert len(spy.largest) == 10 and max(spy.largest) <= CLIP


def test_a_closure_optimizer_clips_each_evaluation_by_value_as_by_hand(run_dir: Path) -> None:
    model = make_mlp()
    make_trainer(run_dir, model, trainer_class=WithClosure, optimizer=None, max_epochs=1,
                 gradient_clip_val=CLIP, gradient_clip_algorithm="value",
                 val_loader=None).fit()  # fmt: skip
    reference = make_mlp()
    _hand_written_lbfgs(reference, make_loader(), epochs=1)
    for a, b in zip(reference.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_value_clipping_under_16_mixed_unscales_first_as_a_hand_written_grad_scaler_loop(
    run_dir: Path,
) -> None:
    model = make_mlp()
    trainer = make_trainer(run_dir, model, precision="16-mixed", max_epochs=1, val_loader=None,
                           gradient_clip_val=CLIP, gradient_clip_algorithm="value")  # fmt: skip
    trainer.fit()
    reference = make_mlp()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    for inputs, targets in make_loader():
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.CrossEntropyLoss()(reference(inputs), targets)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_value_(reference.parameters(), CLIP)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    for a, b in zip(reference.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    assert trainer.precision.state_dict()["scale"] == scaler.get_scale()


def test_an_unknown_clip_algorithm_is_refused_naming_the_choices(run_dir: Path) -> None:
    with pytest.raises(ValueError) as excinfo:
        make_trainer(run_dir, gradient_clip_val=1.0, gradient_clip_algorithm="max")
    message = str(excinfo.value)
    assert "gradient_clip_algorithm='max'" in message and "'norm', 'value'" in message


# ---------------------------------------------------------------------------------- the grad norm
class LoggedFigures(Callback):
    def __init__(self) -> None:
        self.logged: list[dict[str, float]] = []

    def on_log(self, trainer: Trainer, metrics: dict[str, float], step: int) -> None:
        self.logged.append(dict(metrics))


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_the_grad_norm_is_logged_on_the_closure_path(run_dir: Path, algorithm: str) -> None:
    figures = LoggedFigures()
    make_trainer(run_dir, trainer_class=WithClosure, optimizer=None, max_epochs=1,
                 gradient_clip_val=1.0, gradient_clip_algorithm=algorithm, log_every_n_steps=1,
                 val_loader=None, callbacks=[figures]).fit()  # fmt: skip
    norms = [record["train/grad_norm"] for record in figures.logged if "lr" in record]
    assert len(norms) == 5 and all(norm > 0 for norm in norms)


def test_clipping_by_norm_logs_the_norm_before_clipping(run_dir: Path) -> None:
    figures = LoggedFigures()
    make_trainer(run_dir, gradient_clip_val=CLIP, log_every_n_steps=1, max_epochs=1,
                 callbacks=[figures]).fit()  # fmt: skip
    norms = [record["train/grad_norm"] for record in figures.logged if "train/loss" in record]
    assert len(norms) == 5 and min(norms) > CLIP


# ------------------------------------------------------------------------ building and naming
def test_optimizers_and_schedulers_are_built_from_factories_and_matched_by_name() -> None:
    model = make_mlp()
    sgd, adam = functools.partial(torch.optim.SGD, lr=0.1), torch.optim.Adam(model.parameters())
    optimizers = build_optimizers({"a": sgd, "b": adam}, model)
    schedulers = build_schedulers(
        {"a": functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1)}, optimizers, "step"
    )
    assert [name for name, _ in named(optimizers)] == ["a", "b"]
    assert schedulers["a"].optimizer is optimizers["a"] and schedulers["b"] is None
    assert learning_rates(optimizers) == {"lr/a": 0.1, "lr/b": 0.001}


def test_the_only_optimizer_and_scheduler_are_derived_not_kept_twice(run_dir: Path) -> None:
    trainer = make_trainer(
        run_dir, scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1)
    )
    assert trainer.optimizer is trainer.optimizers[0]
    assert trainer.scheduler is trainer.schedulers[0]
    with pytest.raises(AttributeError):
        trainer.optimizer = None  # type: ignore[misc]
