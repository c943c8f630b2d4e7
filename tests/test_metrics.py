"""`trainer.metrics`: weighted running means kept on the device, and metric callables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_trainer

from trainer import Trainer
from trainer.callbacks import Callback
from trainer.metrics import LogBook, RunningMeans, accuracy, compute_metrics


def test_running_means_are_weighted_by_batch_size() -> None:
    means = RunningMeans()
    means.add("loss", torch.tensor(1.0), 10)
    means.add("loss", torch.tensor(4.0), 20)
    assert means.mean("loss") == pytest.approx(3.0)
    assert means.means() == {"loss": pytest.approx(3.0)}


@pytest.mark.parametrize("fold_every", [1, 3, 1024])
def test_folding_on_the_device_gives_the_exact_mean(fold_every: int) -> None:
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(50, generator=generator, dtype=torch.float64)
    weights = torch.randint(1, 65, (50,), generator=generator)
    means = RunningMeans(fold_every=fold_every)
    for value, weight in zip(values, weights, strict=True):
        means.add("loss", value.float(), int(weight))
    expected = float((values * weights).sum() / weights.sum())
    assert means.mean("loss") == pytest.approx(expected, rel=1e-6)


def test_numbers_tensors_shapes_and_dtypes_mix_under_one_name() -> None:
    means = RunningMeans(fold_every=4)
    values = [1.0, torch.tensor(2.0), torch.tensor([3.0]), torch.tensor(4.0).bfloat16(), 5]
    for value in values:
        means.add("figure", value)
    assert means.mean("figure") == pytest.approx(3.0)


def test_reset_forgets_everything_and_unknown_names_have_no_mean() -> None:
    means = RunningMeans()
    means.add("loss", torch.tensor(1.0))
    assert means
    means.reset()
    assert not means
    assert means.mean("loss") is None
    assert means.means() == {}


def test_metric_callables_give_scalars_and_bad_ones_are_named() -> None:
    outputs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    targets = torch.tensor([0, 1, 1])
    assert float(compute_metrics({"acc": accuracy}, outputs, targets)["acc"]) == pytest.approx(
        2 / 3
    )
    with pytest.raises(ValueError, match="metric 'per_row' must return a scalar tensor, got"):
        compute_metrics({"per_row": lambda o, t: o.argmax(-1) == t}, outputs, targets)


def test_the_log_book_takes_values_only_inside_an_open_batch() -> None:
    logs = LogBook(log_every_n_steps=2)
    assert not logs.add("train/aux", torch.tensor(1.0))  # outside a batch: a figure of its own
    logs.open_train_batch((torch.zeros(4, 3), torch.zeros(4)))
    assert logs.add("train/aux", torch.tensor(2.0))
    logs.close_batch()
    assert logs.train.means() == {"train/aux": 2.0} and logs.batch_size == 4
    assert logs.is_log_step(2) and not logs.is_log_step(3)


def test_samples_are_counted_once_with_the_steps_own_batch_size(run_dir: Path) -> None:
    seen: list[int] = []

    class ThreeEach(Trainer):
        def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
            return {"loss": super().training_step(batch, batch_idx), "batch_size": 3}

    class Samples(Callback):
        def on_train_batch_end(self, trainer: Trainer, outputs: Any, batch: Any, idx: int) -> None:
            seen.append(trainer.samples_in_epoch)

    make_trainer(run_dir, trainer_class=ThreeEach, callbacks=[Samples()], max_epochs=1).fit()
    assert seen == [3, 6, 9, 12, 15]  # the progress bar and the throughput read this count
