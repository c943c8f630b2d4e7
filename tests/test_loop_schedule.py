"""Validation by steps and fractions of an epoch, the sanity pass, and wall-clock budgets."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import assert_equal_states, make_loader, make_mlp, make_trainer, message_of
from torch.utils.data import DataLoader, IterableDataset

from trainer import Trainer
from trainer.callbacks import Callback, EarlyStopping, ModelCheckpoint
from trainer.loop_schedule import parse_duration


class _Record(Callback):
    """Where validations ran, what the loggers got, and the modes a batch saw after them."""

    def __init__(self) -> None:
        self.validated: list[tuple[int, int]] = []  # (epoch, global_step)
        self.logged: list[tuple[int, set[str]]] = []
        self.modes: list[tuple[bool, bool, str | None]] = []

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.validated.append((trainer.epoch, trainer.global_step))

    def on_log(self, trainer: Trainer, metrics: dict[str, float], step: int) -> None:
        self.logged.append((step, set(metrics)))

    def on_train_batch_start(self, trainer: Trainer, batch: Any, batch_idx: int) -> None:
        frozen = trainer.model[0]
        self.modes.append((trainer.model.training, frozen.training, trainer.stage))


class _Stream(IterableDataset):
    """Forty samples with no length: an epoch ends only when it runs out."""

    def __iter__(self):
        yield from make_loader(n=40, batch_size=1).dataset


def _loader(kind: str) -> Any:
    if kind == "stream":
        return DataLoader(_Stream(), batch_size=8)
    return make_loader(n=40, batch_size=8, shuffle=True)  # 5 batches an epoch


def _run(tmp_path: Path, kind: str = "sized", window: int = 1, **options: Any) -> _Record:
    record = _Record()
    model = make_mlp()
    model[0].eval()  # a frozen first layer: its eval mode must survive every validation
    options = {"max_epochs": 3, "num_sanity_val_steps": 0, **options}
    trainer = make_trainer(
        tmp_path, model, train_loader=_loader(kind), accumulate_grad_batches=window,
        callbacks=[record, *options.pop("callbacks", [])], **options,
    )  # fmt: skip
    trainer.fit()
    return record


@pytest.mark.parametrize("kind", ["sized", "stream"])
@pytest.mark.parametrize("window", [1, 2])
def test_an_int_interval_validates_every_n_optimizer_steps_across_epochs(
    tmp_path: Path, kind: str, window: int
) -> None:
    record = _run(tmp_path, kind, window, val_check_interval=2)
    steps_per_epoch = 5 if window == 1 else 3  # windows of 2, 2, 1
    total = 3 * steps_per_epoch
    expected = [*range(2, total + 1, 2), *([total] if total % 2 else [])]  # fit's end too
    assert [step for _, step in record.validated] == expected, record.validated
    for _, step in record.validated:  # each validation's figures are logged at its step
        assert any(at == step and "val/loss" in names for at, names in record.logged), step
    assert all(mode == (True, False, "train") for mode in record.modes), record.modes


@pytest.mark.parametrize("window", [1, 2])
def test_a_fraction_validates_inside_each_epoch_and_at_its_end(tmp_path: Path, window: int) -> None:
    record = _run(tmp_path, window=window, val_check_interval=0.5)
    per_epoch = [[s for e, s in record.validated if e == epoch] for epoch in range(3)]
    assert all(len(steps) == 2 for steps in per_epoch), record.validated
    steps_per_epoch = 5 if window == 1 else 3
    assert [steps[-1] for steps in per_epoch] == [steps_per_epoch * (e + 1) for e in range(3)]
    assert all(mode == (True, False, "train") for mode in record.modes)


def test_check_val_every_n_epoch_validates_every_nth_epoch_end(tmp_path: Path) -> None:
    record = _run(tmp_path, max_epochs=4, check_val_every_n_epoch=2)
    assert [epoch for epoch, _ in record.validated] == [1, 3]  # the last step was validated


def test_the_defaults_validate_once_per_epoch_end(tmp_path: Path) -> None:
    record = _run(tmp_path)
    assert record.validated == [(0, 5), (1, 10), (2, 15)]


class _ValLossRises(Trainer):
    """Validation loss that only grows, so patience runs out after `patience` validations."""

    calls = 0

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        type(self).calls += 1
        return {"loss": torch.tensor(float(self.global_step))}


def test_early_stopping_counts_validations_and_stops_mid_epoch(tmp_path: Path) -> None:
    stopper = EarlyStopping("val/loss", patience=2)
    trainer = make_trainer(
        tmp_path, trainer_class=_ValLossRises, train_loader=make_loader(n=80, batch_size=8),
        max_epochs=5, val_check_interval=2, num_sanity_val_steps=0, callbacks=[stopper],
    )  # fmt: skip
    trainer.fit()
    assert trainer.global_step == 6  # validated at 2 (best), 4 and 6 (no better): stop
    assert trainer.epoch == 0  # mid-epoch: the first epoch has 10 batches


def test_a_monitored_checkpoint_ranks_mid_epoch_validations(tmp_path: Path) -> None:
    saver = ModelCheckpoint(monitor="val/loss", mode="max", save_top_k=2, dirpath=tmp_path / "c")
    trainer = make_trainer(
        tmp_path, trainer_class=_ValLossRises, train_loader=make_loader(n=80, batch_size=8),
        max_epochs=1, val_check_interval=3, num_sanity_val_steps=0, callbacks=[saver],
    )  # fmt: skip
    trainer.fit()
    assert "step=9" in Path(saver.best_model_path).name, saver.best_model_path
    assert len([f for f in saver.dirpath.glob("*.ckpt") if not f.name.startswith("last")]) == 2


def test_a_plateau_scheduler_steps_on_every_validation(tmp_path: Path) -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    trainer = make_trainer(
        tmp_path, model, trainer_class=_ValLossRises, optimizer=optimizer,
        scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0),
        train_loader=make_loader(n=80, batch_size=8), max_epochs=1, val_check_interval=2,
        num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)  # 5 validations, 4 worse


def test_the_sanity_pass_leaves_the_run_exactly_as_without_it(tmp_path: Path) -> None:
    def final(sanity: int) -> dict[str, Any]:
        torch.manual_seed(0)
        model = make_mlp(dropout=0.3)
        record = _Record()
        trainer = make_trainer(
            tmp_path / str(sanity), model, train_loader=make_loader(shuffle=True),
            num_sanity_val_steps=sanity, callbacks=[record], seed=None,
        )  # fmt: skip
        trainer.fit()
        return {"model": model.state_dict(), "metrics": trainer.metrics, "v": record.validated}

    assert_equal_states(final(0), final(2), "a sanity pass changed the run")


class _BrokenValidation(Trainer):
    trained = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        type(self).trained += 1
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        raise RuntimeError("a bug in validation_step")


def test_a_broken_validation_step_fails_before_the_first_training_batch(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, trainer_class=_BrokenValidation)
    with pytest.raises(RuntimeError, match="a bug in validation_step"):
        trainer.fit()
    assert _BrokenValidation.trained == 0


class _Slow(Callback):
    def on_train_batch_end(self, trainer: Trainer, outputs: Any, batch: Any, idx: int) -> None:
        time.sleep(0.02)


def test_max_time_stops_with_a_checkpoint_and_a_resume_gets_its_own_budget(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    def trainer(max_time: Any) -> Trainer:
        return make_trainer(
            tmp_path, train_loader=make_loader(n=80, batch_size=4), max_epochs=2,
            max_time=max_time, checkpoint=True, callbacks=[_Slow()],
        )  # fmt: skip

    first = trainer(0.2)
    first.fit()
    assert 0 < first.global_step < 40
    said = capfd.readouterr()
    assert "max_time" in said.out + said.err  # the run says why it stopped
    saved = sorted((tmp_path).rglob("*.ckpt"))
    assert saved, "max_time stopped without a checkpoint to resume from"
    second = trainer(timedelta(seconds=0.2))
    second.fit(ckpt_path="last")
    assert second.global_step > first.global_step  # its own budget: it trained on
    third = trainer("00:00:10:00")
    third.fit(ckpt_path="last")
    assert third.global_step == 40


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(90, 90.0), (1.5, 1.5), ("00:01:00:30", 3630.0), ("01:00:00:00", 86400.0),
     (timedelta(minutes=2), 120.0), ("90", 90.0)],
)  # fmt: skip
def test_durations_read_as_seconds(value: Any, seconds: float) -> None:
    assert parse_duration(value, "max_time") == seconds


@pytest.mark.parametrize("value", ["12h", "1:00", -5, 0, True, "00:00:00:00"])
def test_a_bad_max_time_fails_in_the_constructor_naming_it(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ValueError) as excinfo:
        make_trainer(tmp_path, max_time=value)
    assert "max_time" in message_of(excinfo)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"val_check_interval": 0}, "val_check_interval"),
        ({"val_check_interval": 1.5}, "val_check_interval"),
        ({"val_check_interval": 2, "check_val_every_n_epoch": 3}, "check_val_every_n_epoch"),
        ({"val_check_interval": 0.5, "train_loader": DataLoader(_Stream())}, "no length"),
        ({"num_sanity_val_steps": -1}, "num_sanity_val_steps"),
    ],
)
def test_bad_validation_schedules_fail_in_the_constructor(
    tmp_path: Path, options: dict[str, Any], words: str
) -> None:
    with pytest.raises((ValueError, TypeError)) as excinfo:
        make_trainer(tmp_path, **options)
    assert words in message_of(excinfo)


def test_train_time_interval_saves_on_a_clock(tmp_path: Path) -> None:
    saver = ModelCheckpoint(
        train_time_interval=0.05, every_n_epochs=0, keep_last=100, dirpath=tmp_path / "c"
    )
    trainer = make_trainer(
        tmp_path, train_loader=make_loader(n=80, batch_size=4), max_epochs=1,
        log_every_n_steps=1, callbacks=[saver, _Slow()],
    )  # fmt: skip
    trainer.fit()
    saves = list(saver.dirpath.glob("*.ckpt"))
    assert 3 <= len(saves) <= 20, saves  # about every third step of 20 steps of 0.02 s


def test_hparams_keep_the_schedule(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, val_check_interval=3, max_time=timedelta(hours=1))
    assert trainer.hparams["val_check_interval"] == 3
    assert "1:00:00" in str(trainer.hparams["max_time"])


class _Figures(Callback):
    def __init__(self) -> None:
        self.validations: list[dict[str, float]] = []

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.validations.append(dict(metrics))


def test_each_epochs_record_carries_its_last_validation(tmp_path: Path) -> None:
    """An epoch that validated only inside (every 3 of its 5 steps) keeps its last
    validation's figures; one that validated nowhere has none; a run stopped by max_steps
    mid-epoch ends with the figures of its last step."""
    figures = _Figures()
    trainer = make_trainer(
        tmp_path, train_loader=_loader("sized"), callbacks=[figures], max_epochs=3, max_steps=12,
        val_check_interval=3, num_sanity_val_steps=0,
    )  # fmt: skip
    history = trainer.fit()  # validations at steps 3 (epoch 0), 6, 9 (epoch 1), 12 (epoch 2)
    assert len(figures.validations) == 4 and len(history) == 3
    assert history[0]["val/loss"] == figures.validations[0]["val/loss"]
    assert history[1]["val/loss"] == figures.validations[2]["val/loss"]
    assert history[2]["val/loss"] == figures.validations[3]["val/loss"]
    every_other = make_trainer(tmp_path, max_epochs=2, check_val_every_n_epoch=2,
                               num_sanity_val_steps=0).fit()  # fmt: skip
    assert "val/loss" not in every_other[0] and "val/loss" in every_other[1]
