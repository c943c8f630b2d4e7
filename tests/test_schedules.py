"""`warmup_cosine`: its learning-rate curve step by step in a real run, a config that names it,
its argument checks, and an exact resume through the pickle-free checkpoint."""

from __future__ import annotations

import functools
import math
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import assert_equal_states, make_loader, make_mlp, make_trainer

from trainer import Trainer
from trainer.callbacks import Callback
from trainer.config import build_job, load_config
from trainer.schedules import warmup_cosine

LR, WARMUP, TOTAL, FLOOR = 0.1, 3, 10, 0.01


def _expected(step: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / (WARMUP + 1)
    progress = (step - WARMUP) / (TOTAL - WARMUP)
    return FLOOR + (LR - FLOOR) * (1 + math.cos(math.pi * progress)) / 2


class _RateOfEachStep(Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_before_optimizer_step(self, trainer: Trainer, optimizer: Any) -> None:
        self.rates.append(optimizer.param_groups[0]["lr"])


def _trainer(run_dir: Path, **options: Any) -> Trainer:
    model = make_mlp(dropout=0.2)
    schedule = functools.partial(warmup_cosine, warmup_steps=WARMUP, total_steps=TOTAL,
                                 min_lr=FLOOR)  # fmt: skip
    options = {"max_epochs": None, "max_steps": TOTAL, **options}
    return make_trainer(
        run_dir, model, optimizer=torch.optim.AdamW(model.parameters(), lr=LR),
        scheduler=schedule, scheduler_interval="step",
        train_loader=make_loader(n=24, batch_size=4, shuffle=True), seed=3, **options,
    )  # fmt: skip


def test_the_rate_warms_up_linearly_then_follows_the_cosine_to_the_floor(run_dir: Path) -> None:
    rates = _RateOfEachStep()
    _trainer(run_dir, callbacks=[rates]).fit()
    assert rates.rates == pytest.approx([_expected(step) for step in range(TOTAL)], rel=1e-9)
    assert rates.rates[WARMUP] == pytest.approx(LR)
    assert _expected(TOTAL) == pytest.approx(FLOOR)


def test_without_warmup_it_is_the_cosine_alone() -> None:
    optimizer = torch.optim.SGD(make_mlp().parameters(), lr=LR)
    scheduler = warmup_cosine(optimizer, warmup_steps=0, total_steps=4)
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [((3, 3, 0.0), "total_steps=3 must exceed warmup_steps=3"),
     ((-1, 5, 0.0), "warmup_steps must be an int >= 0, got -1"),
     ((1, 2.5, 0.0), "total_steps must be an int >= 0, got 2.5"),
     ((1, 5, -0.1), "min_lr must be >= 0, got -0.1")],
)  # fmt: skip
def test_bad_arguments_are_refused_naming_them(arguments: tuple, named: str) -> None:
    optimizer = torch.optim.SGD(make_mlp().parameters(), lr=LR)
    with pytest.raises(ValueError, match=named):
        warmup_cosine(optimizer, *arguments)


@pytest.mark.parametrize("stop_at", [2, WARMUP, 7])
def test_a_run_stopped_mid_schedule_resumes_to_the_straight_runs_state(
    tmp_path: Path, stop_at: int
) -> None:
    straight = _trainer(tmp_path / "straight")
    straight.fit()
    first = _trainer(tmp_path / "run", checkpoint=True, max_steps=stop_at)
    first.fit()
    resumed = _trainer(tmp_path / "run", checkpoint=True)
    resumed.fit(ckpt_path="last")
    for run in (straight, resumed):
        assert run.global_step == TOTAL
    assert_equal_states(straight.scheduler.state_dict(), resumed.scheduler.state_dict())
    assert_equal_states(straight.optimizer.state_dict(), resumed.optimizer.state_dict())
    assert_equal_states(straight.model.state_dict(), resumed.model.state_dict())


def test_a_config_names_it_as_the_scheduler(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent("""
        model:
          class_path: trainer.models.MLP
          hidden: [16]
        data:
          class_path: trainer.data.DigitsData
          batch_size: 64
        loss_fn:
          class_path: torch.nn.CrossEntropyLoss
        optimizer:
          class_path: torch.optim.AdamW
          lr: 0.01
        scheduler:
          class_path: trainer.schedules.warmup_cosine
          warmup_steps: 2
          total_steps: ${trainer.max_steps}
        trainer:
          max_steps: 6
          scheduler_interval: step
          run_dir: runs
          progress_bar: false
          logger: false
          checkpoint: false
          device: cpu
    """))
    job = build_job(load_config([path]))
    rates = _RateOfEachStep()
    trainer = job.make_trainer(train_loader=job.data.train_loader(), callbacks=[rates])
    trainer.fit()
    assert isinstance(trainer.scheduler, torch.optim.lr_scheduler.SequentialLR)
    assert rates.rates[:3] == pytest.approx([0.01 / 3, 0.02 / 3, 0.01])
