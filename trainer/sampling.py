"""The data order of an epoch, saved and restored so a run resumes mid-epoch exactly.

A plain `DataLoader(shuffle=True)` draws its epoch's seed from torch's global generator
when its iterator starts, so the order cannot be asked for later. `make_resumable` gives
such a loader a `ResumableSampler`, which draws the same seed from the same generator (a
run sees exactly the data order of the loader it was given) but remembers it, and on
resume starts the epoch at the first unconsumed index: consumed batches are skipped as
indices, never loaded.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

__all__ = [
    "ResumableSampler",
    "check_same_data",
    "data_position",
    "make_resumable",
    "why_not_resumable",
]


class ResumableSampler(Sampler[int]):
    """Indices in the order `RandomSampler` (or `SequentialSampler`) gives, restartable mid-epoch.

    Args:
        length: the data set's length.
        shuffle: a fresh permutation each epoch, or 0..length-1 in order.
        generator: the generator a `RandomSampler` was given; None draws each epoch's seed
            from torch's global generator, as `RandomSampler` does.
    """

    def __init__(
        self, length: int, shuffle: bool, generator: torch.Generator | None = None
    ) -> None:
        self.length = length
        self.shuffle = shuffle
        self.generator = generator
        self.epoch_order: dict[str, Any] = {}
        self._resume_at: tuple[dict[str, Any], int] | None = None

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        start = 0
        if self._resume_at is not None:
            self.epoch_order, start = self._resume_at
            self._resume_at = None
        elif self.shuffle:
            self.epoch_order = self._draw_order()
        if not self.shuffle:
            yield from range(start, self.length)
            return
        if "seed" in self.epoch_order:
            generator = torch.Generator()
            generator.manual_seed(self.epoch_order["seed"])
        else:
            generator = self.generator
            generator.set_state(self.epoch_order["generator_state"])
        yield from torch.randperm(self.length, generator=generator).tolist()[start:]
        if generator is self.generator:
            # RandomSampler draws one more (empty) permutation at the end of each epoch;
            # a shared generator must advance the same way.
            torch.randperm(self.length, generator=generator)

    def _draw_order(self) -> dict[str, Any]:
        """Take the epoch's randomness exactly where `RandomSampler` takes it."""
        if self.generator is None:
            return {"seed": int(torch.empty((), dtype=torch.int64).random_().item())}
        return {"generator_state": self.generator.get_state()}

    def resume_at(self, epoch_order: dict[str, Any], start_index: int) -> None:
        """Make the next epoch repeat the order `epoch_order` describes, from `start_index`."""
        self._resume_at = (dict(epoch_order), start_index)


def why_not_resumable(loader: Iterable[Any]) -> str | None:
    """None when `make_resumable` can take over the loader's order, else the reason why not."""
    if type(loader) is not DataLoader:
        return f"it is a {type(loader).__name__}, not a torch DataLoader"
    if isinstance(loader.dataset, IterableDataset):
        return "its data set is an IterableDataset, whose position only it knows"
    if loader.batch_size is None or type(loader.batch_sampler) is not BatchSampler:
        return "it uses its own batch_sampler"
    sampler = loader.sampler
    if isinstance(sampler, ResumableSampler):
        return None
    if type(sampler) is SequentialSampler:
        return None
    if type(sampler) is RandomSampler and not sampler.replacement:
        if sampler.num_samples == len(loader.dataset):  # type: ignore[arg-type]
            return None
    return f"it uses a {type(sampler).__name__}"


def make_resumable(
    loader: DataLoader, pin_memory: bool = False
) -> tuple[DataLoader, ResumableSampler]:
    """The same loader (same order, same settings) driven by a `ResumableSampler`.

    `pin_memory=True` also pins its batches, so copies to a GPU can run asynchronously.
    """
    if isinstance(loader.sampler, ResumableSampler):
        return loader, loader.sampler
    original = loader.sampler
    sampler = ResumableSampler(
        len(loader.dataset),  # type: ignore[arg-type]
        shuffle=isinstance(original, RandomSampler),
        generator=getattr(original, "generator", None),
    )
    settings = {
        name: getattr(loader, name)
        for name in inspect.signature(DataLoader.__init__).parameters
        if name not in ("self", "dataset", "shuffle", "sampler", "batch_sampler")
        and hasattr(loader, name)
    }
    settings["pin_memory"] = settings.get("pin_memory", False) or pin_memory
    return DataLoader(loader.dataset, sampler=sampler, **settings), sampler


def data_position(
    loader: Iterable[Any] | None,
    sampler: ResumableSampler | None,
    epoch_start_rng: torch.Tensor | None,
) -> dict[str, Any]:
    """What a checkpoint needs to restart the current epoch's data where it stopped."""
    dataset = getattr(loader, "dataset", None)
    return {
        "epoch_start_rng": epoch_start_rng,
        "epoch_order": sampler.epoch_order if sampler is not None else {},
        "dataset_length": _length(dataset),
        "batch_size": getattr(loader, "batch_size", None),
        "num_batches": _length(loader),
    }


def check_same_data(saved: dict[str, Any], loader: Iterable[Any] | None, source: Any) -> None:
    """Refuse a mid-epoch resume whose data set length or batch size changed."""
    dataset = getattr(loader, "dataset", None)
    now = {"dataset_length": _length(dataset), "batch_size": getattr(loader, "batch_size", None)}
    changed = [
        f"{name} {saved.get(name)} -> {value}"
        for name, value in now.items()
        if saved.get(name) != value
    ]
    if changed:
        raise ValueError(
            f"checkpoint {source} stopped mid-epoch, and the train_loader has changed since "
            f"({', '.join(changed)}), so its position in the epoch means nothing now. Resume "
            "with the same data and batch size, or from a checkpoint saved at an epoch end."
        )


def _length(sized: Any) -> int | None:
    try:
        return len(sized)
    except TypeError:
        return None
