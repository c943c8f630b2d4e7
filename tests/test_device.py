"""`trainer.device`: resolving device names and moving nested batches."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from conftest import make_loader, make_mlp, make_trainer

from trainer.device import batch_size_of, batches_on_device, move_to_device, resolve_device

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


def test_a_dtype_casts_floating_tensors_and_keeps_integer_ones() -> None:
    batch = {"pixels": torch.ones(2, 3), "label": torch.tensor([1, 2]), "mask": torch.ones(2) > 0}
    moved = move_to_device(batch, META, dtype=torch.bfloat16)
    assert moved["pixels"].dtype == torch.bfloat16
    assert moved["label"].dtype == torch.int64
    assert moved["mask"].dtype == torch.bool
    assert devices_in(moved) == {"meta"}


# -------------------------------------------------------------------------- batches_on_device
class CountingLoader:
    """Batches of a known sequence, counting how many were taken."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.taken = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index in range(self.count):
            self.taken += 1
            yield torch.full((2, 3), float(index)), torch.tensor([index, index])


def _check_moved_in_order_without_reading_ahead(device: torch.device) -> None:
    loader = CountingLoader(3)
    batches = batches_on_device(loader, device)
    inputs, targets = next(batches)
    assert loader.taken == 1  # the loader's next batch is not drawn early
    assert inputs.device.type == targets.device.type == device.type
    rest = list(batches)
    assert loader.taken == 3
    assert [int(batch[1][0]) for batch in rest] == [1, 2]
    assert torch.equal(rest[-1][0].cpu(), torch.full((2, 3), 2.0))


def test_batches_on_device_come_in_order_one_at_a_time() -> None:
    _check_moved_in_order_without_reading_ahead(CPU)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_copies_on_a_side_stream_arrive_complete_and_in_order() -> None:
    _check_moved_in_order_without_reading_ahead(torch.device("cuda"))
    pinned = [(torch.randn(256, 1024).pin_memory(), torch.arange(256)) for _ in range(8)]
    totals = [float(inputs.sum() + targets.sum()) for inputs, targets in pinned]
    moved_totals = []
    for inputs, targets in batches_on_device(pinned, torch.device("cuda")):
        work = inputs @ inputs.T  # keeps the compute stream busy while the next copy runs
        moved_totals.append(float(inputs.sum() + targets.sum() + 0 * work.sum()))
    assert moved_totals == pytest.approx(totals)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_run_pins_its_loader_and_matches_a_hand_written_loop(run_dir: Path) -> None:
    trainer = make_trainer(run_dir, model=make_mlp(), device="cuda", val_loader=None)
    trainer.fit()
    assert trainer.train_loader.pin_memory

    model = make_mlp().cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        for inputs, targets in make_loader():
            loss = torch.nn.functional.cross_entropy(model(inputs.cuda()), targets.cuda())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for name, tensor in model.state_dict().items():
        assert torch.allclose(trainer.model.state_dict()[name], tensor, atol=1e-6), name


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
