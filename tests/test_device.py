"""`trainer.device`: resolving device names and moving nested batches."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, NamedTuple

import pytest
import torch

from trainer.device import batch_size_of, move_to_device, resolve_device

CPU = torch.device("cpu")
# "meta" is a real device on every machine: a move there is visible without a GPU.
META = torch.device("meta")


class Pair(NamedTuple):
    inputs: torch.Tensor
    targets: torch.Tensor


@dataclasses.dataclass
class Sample:
    pixels: torch.Tensor
    label: torch.Tensor
    name: str
    weights: list[torch.Tensor] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class FrozenSample:
    pixels: torch.Tensor
    size: int


def devices_in(batch: Any) -> set[str]:
    """The device types of every tensor inside `batch`."""
    if isinstance(batch, torch.Tensor):
        return {batch.device.type}
    if isinstance(batch, dict):
        batch = list(batch.values())
    elif dataclasses.is_dataclass(batch):
        batch = [getattr(batch, field.name) for field in dataclasses.fields(batch)]
    if isinstance(batch, (list, tuple)):
        return set().union(*(devices_in(item) for item in batch))
    return set()


# ----------------------------------------------------------------------------- move_to_device
def test_moves_a_bare_tensor() -> None:
    assert move_to_device(torch.ones(3), META).device == META


def test_moves_tensors_inside_tuples_and_lists_keeping_their_types() -> None:
    batch = (torch.ones(2), [torch.zeros(2), (torch.ones(1), 7)], "id")
    moved = move_to_device(batch, META)
    assert type(moved) is tuple
    assert type(moved[1]) is list
    assert type(moved[1][1]) is tuple
    assert moved[1][1][1] == 7
    assert moved[2] == "id"
    assert devices_in(moved) == {"meta"}


def test_moves_tensors_inside_dicts_keeping_keys_and_other_values() -> None:
    batch = {"pixels": torch.ones(2, 3), "meta": {"mask": torch.ones(2)}, "ids": [3, 4]}
    moved = move_to_device(batch, META)
    assert list(moved) == ["pixels", "meta", "ids"]
    assert moved["ids"] == [3, 4]
    assert moved["meta"]["mask"].device == META
    assert devices_in(moved) == {"meta"}


def test_moves_named_tuples_and_keeps_their_class() -> None:
    moved = move_to_device(Pair(torch.ones(2), torch.zeros(2)), META)
    assert isinstance(moved, Pair)
    assert moved.inputs.device == META
    assert moved.targets.device == META


def test_moves_dataclasses_and_keeps_their_non_tensor_fields() -> None:
    sample = Sample(torch.ones(2, 3), torch.zeros(2), name="first", weights=[torch.ones(1)])
    moved = move_to_device(sample, META)
    assert isinstance(moved, Sample)
    assert moved.name == "first"
    assert moved.pixels.device == META
    assert moved.label.device == META
    assert moved.weights[0].device == META
    assert sample.pixels.device == CPU  # the original is left as it was


def test_moves_frozen_dataclasses() -> None:
    moved = move_to_device(FrozenSample(torch.ones(2), size=2), META)
    assert moved.pixels.device == META
    assert moved.size == 2


def test_keeps_a_defaultdicts_default_factory() -> None:
    batch = collections.defaultdict(list, {"pixels": torch.ones(2)})
    moved = move_to_device(batch, META)
    assert isinstance(moved, collections.defaultdict)
    assert moved.default_factory is list
    assert moved["pixels"].device == META


def test_leaves_values_without_tensors_untouched() -> None:
    for value in (None, 3, "text", 2.5):
        assert move_to_device(value, META) == value


def test_moving_to_the_same_device_returns_the_same_tensors() -> None:
    tensor = torch.ones(2)
    assert move_to_device((tensor,), CPU)[0] is tensor


# ----------------------------------------------------------------------------- resolve_device
@pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(),
    reason="this machine has an accelerator",
)
def test_auto_is_cpu_without_an_accelerator() -> None:
    assert resolve_device("auto") == CPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_and_cuda_give_an_indexed_cuda_device() -> None:
    assert resolve_device("auto") == torch.device("cuda", torch.cuda.current_device())
    assert resolve_device("cuda").index == torch.cuda.current_device()


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_cpu_by_name_or_device(device: str | torch.device) -> None:
    assert resolve_device(device) == CPU


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="device='gpu0' is not a device; use one of auto, cpu"):
        resolve_device("gpu0")


# ------------------------------------------------------------------------------ batch_size_of
@pytest.mark.parametrize(
    ("batch", "size"),
    [
        (torch.ones(5, 3), 5),
        (torch.tensor(3.0), 1),
        ((torch.ones(4, 2), torch.ones(4)), 4),
        ([torch.ones(6)], 6),
        ({"pixels": torch.ones(7, 2), "label": torch.ones(7)}, 7),
        (Pair(torch.ones(3, 2), torch.ones(3)), 3),
        (Sample(torch.ones(2, 5), torch.ones(2), name="x"), 2),
        (("id", [None, torch.ones(9)]), 9),
        (["no", "tensors"], 0),
        ("text", 0),
    ],
)
def test_batch_size_is_the_length_of_the_first_tensor(batch: Any, size: int) -> None:
    assert batch_size_of(batch) == size
