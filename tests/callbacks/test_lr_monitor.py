"""`LearningRateMonitor`: momentum (SGD momentum or Adam's first beta) and weight decay."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from conftest import make_mlp

from trainer import Trainer
from trainer.callbacks import Callback, LearningRateMonitor


class Logged(Callback):
    """Every figure handed to loggers, by step."""

    def __init__(self) -> None:
        self.by_step: dict[int, dict[str, float]] = {}

    def on_log(self, trainer: Trainer, metrics: dict[str, float], step: int) -> None:
        self.by_step.setdefault(step, {}).update(metrics)


def test_logs_sgd_momentum_at_every_log_step(trainer_factory: Callable) -> None:
    model = make_mlp()
    logged = Logged()
    trainer = trainer_factory(
        model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        callbacks=[LearningRateMonitor(), logged],
        log_every_n_steps=1,
        max_epochs=1,
    )
    trainer.fit()
    assert [figures["momentum"] for figures in logged.by_step.values()] == pytest.approx([0.9] * 5)
    assert trainer.metrics["momentum"] == pytest.approx(0.9)


def test_logs_adam_first_beta_as_momentum(trainer_factory: Callable) -> None:
    model = make_mlp()
    logged = Logged()
    trainer_factory(
        model,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.8, 0.99)),
        callbacks=[LearningRateMonitor(), logged],
        log_every_n_steps=1,
        max_epochs=1,
    ).fit()
    assert logged.by_step[3]["momentum"] == pytest.approx(0.8)
    assert logged.by_step[3]["lr"] == pytest.approx(1e-3)


def test_plain_sgd_has_momentum_zero(trainer_factory: Callable) -> None:
    logged = Logged()
    trainer_factory(
        callbacks=[LearningRateMonitor(), logged], log_every_n_steps=1, max_epochs=1
    ).fit()
    assert logged.by_step[1]["momentum"] == 0.0


def test_follows_a_scheduler_that_cycles_momentum(trainer_factory: Callable) -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=0.1, total_steps=5, base_momentum=0.8, max_momentum=0.95
    )
    logged = Logged()
    trainer_factory(
        model,
        optimizer=optimizer,
        scheduler=scheduler,
        scheduler_interval="step",
        callbacks=[LearningRateMonitor(), logged],
        log_every_n_steps=1,
        max_epochs=1,
    ).fit()
    momenta = [logged.by_step[step]["momentum"] for step in range(1, 6)]
    assert momenta[0] == pytest.approx(0.95)
    assert min(momenta) < 0.9


def test_names_follow_param_groups_and_weight_decay_is_optional(
    trainer_factory: Callable,
) -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(
        [
            {"params": model[0].parameters(), "momentum": 0.5, "weight_decay": 0.01},
            {"params": model[3].parameters(), "momentum": 0.9},
        ],
        lr=0.1,
    )
    logged = Logged()
    trainer_factory(
        model,
        optimizer=optimizer,
        callbacks=[LearningRateMonitor(log_weight_decay=True), logged],
        log_every_n_steps=1,
        max_epochs=1,
    ).fit()
    figures = logged.by_step[1]
    assert figures["momentum/group0"] == pytest.approx(0.5)
    assert figures["momentum/group1"] == pytest.approx(0.9)
    assert figures["weight_decay/group0"] == pytest.approx(0.01)
    assert figures["weight_decay/group1"] == 0.0
    assert figures["lr/group0"] == pytest.approx(0.1)
    assert "momentum" not in figures
