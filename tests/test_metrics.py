"""`trainer.metrics`: weighted running means kept on the device, and metric callables."""

from __future__ import annotations

import pytest
import torch

from trainer.metrics import RunningMeans, accuracy, compute_metrics


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
