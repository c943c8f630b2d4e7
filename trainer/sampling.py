"""The samplers: an epoch's order that restarts at any index, split between the ranks of a
distributed run, the evaluation shards, and telling a loader's samplers the epoch.

A plain `DataLoader(shuffle=True)` draws its epoch's seed from torch's global generator
when its iterator starts, so the order cannot be asked for later. `make_resumable` gives
such a loader a `ResumableSampler`, which draws the same seed from the same generator (a
run sees exactly the data order of the loader it was given) but remembers it, and on
resume starts the epoch at the first unconsumed index: consumed batches are skipped as
indices, never loaded. Across N ranks, every rank uses rank 0's seed and takes every N-th
index of the one permutation, so N ranks with batch B see the batches one process with
batch N*B would see. `shard_for_evaluation` splits an evaluation set the same way, without
padding, so averages over it stay exact; `evaluation_loader` does so under DDP. Where the
data stands as a run goes (the generators' states, what a checkpoint keeps) is
`data_position.py`'s concern.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

if TYPE_CHECKING:
    from trainer.distributed import Distributed

__all__ = [
    "EvaluationShard",
    "ResumableSampler",
    "evaluation_loader",
    "make_resumable",
    "rebuilt_loader",
    "set_sampler_epoch",
    "shard_for_evaluation",
    "why_not_resumable",
]


class ResumableSampler(Sampler[int]):
    """Indices in the order `RandomSampler` (or `SequentialSampler`) gives, restartable mid-epoch.

    With `num_replicas` > 1 the sampler yields this `rank`'s share: every `num_replicas`-th
    index of the epoch's order, starting at `rank`, after repeating the first indices so that
    every rank gets the same count (as `DistributedSampler` does). The epoch's seed is drawn
    as on one process, then replaced by rank 0's through `share_seed`, so all ranks shard
    one permutation.

    Args:
        length: the data set's length.
        shuffle: a fresh permutation each epoch, or 0..length-1 in order.
        generator: the generator a `RandomSampler` was given; None draws each epoch's seed
            from torch's global generator, as `RandomSampler` does.
        num_replicas: how many ranks share the data set.
        rank: which share this sampler yields.
        share_seed: turns this rank's seed into rank 0's (a broadcast); needed when
            `num_replicas` > 1 and `shuffle` is True.
    """

    def __init__(
        self,
        length: int,
        shuffle: bool,
        generator: torch.Generator | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        share_seed: Callable[[int], int] | None = None,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in 0..{num_replicas - 1}, got {rank}.")
        if num_replicas > 1 and shuffle and share_seed is None:
            raise ValueError("a shuffling sampler shared by several ranks needs share_seed.")
        self.length = length
        self.shuffle = shuffle
        self.generator = generator
        self.num_replicas = num_replicas
        self.rank = rank
        self.share_seed = share_seed
        self.epoch_order: dict[str, Any] = {}
        self._resume_point: tuple[dict[str, Any], int] | None = None

    def __len__(self) -> int:
        return -(-self.length // self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        start = 0
        if self._resume_point is not None:
            self.epoch_order, start = self._resume_point
            self._resume_point = None
        elif self.shuffle:
            self.epoch_order = self._draw_order()
        if not self.shuffle:
            yield from self._share(range(self.length))[start:]
            return
        if "seed" in self.epoch_order:
            generator = torch.Generator()
            generator.manual_seed(self.epoch_order["seed"])
        else:
            generator = self.generator
            generator.set_state(self.epoch_order["generator_state"])
        yield from self._share(torch.randperm(self.length, generator=generator).tolist())[start:]
        if generator is self.generator:
            # RandomSampler draws one more (empty) permutation at the end of each epoch;
            # a shared generator must advance the same way.
            torch.randperm(self.length, generator=generator)

    def _draw_order(self) -> dict[str, Any]:
        """Take the epoch's randomness exactly where `RandomSampler` takes it."""
        if self.num_replicas > 1:
            assert self.share_seed is not None
            seed = torch.empty((), dtype=torch.int64).random_(generator=self.generator)
            return {"seed": self.share_seed(int(seed.item()))}
        if self.generator is None:
            return {"seed": int(torch.empty((), dtype=torch.int64).random_().item())}
        return {"generator_state": self.generator.get_state()}

    def _share(self, order: Sequence[int]) -> Sequence[int]:
        """This rank's share of `order`, padded by its first indices to equal counts."""
        if self.num_replicas == 1:
            return order
        total = len(self) * self.num_replicas
        padded = list(order) * -(-total // max(len(order), 1))
        return padded[:total][self.rank :: self.num_replicas]

    def resume_at(self, epoch_order: dict[str, Any], start_index: int) -> None:
        """Make the next epoch repeat the order `epoch_order` describes, from `start_index`.

        The sampler keeps it until its next pass starts: the one home of where a resumed
        epoch restarts.
        """
        self._resume_point = (dict(epoch_order), start_index)


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
    loader: DataLoader,
    num_replicas: int = 1,
    rank: int = 0,
    share_seed: Callable[[int], int] | None = None,
    pin_memory: bool = False,
) -> tuple[DataLoader, ResumableSampler]:
    """The same loader (same order, same settings) driven by a `ResumableSampler`.

    With `num_replicas` > 1 it yields only `rank`'s share of each epoch (see
    `ResumableSampler`). `pin_memory=True` also pins its batches, so copies to a GPU can
    run asynchronously.
    """
    if isinstance(loader.sampler, ResumableSampler):
        return loader, loader.sampler
    original = loader.sampler
    sampler = ResumableSampler(
        len(loader.dataset),  # type: ignore[arg-type]
        shuffle=isinstance(original, RandomSampler),
        generator=getattr(original, "generator", None),
        num_replicas=num_replicas,
        rank=rank,
        share_seed=share_seed,
    )
    return rebuilt_loader(loader, sampler, pin_memory), sampler


class EvaluationShard(Sampler[int]):
    """One rank's share of an evaluation set: indices `rank`, `rank + n`, ... without padding.

    Shares differ in length by at most one sample; no sample is seen twice, so sums and
    counts added up over the ranks give exact averages.
    """

    def __init__(self, length: int, num_replicas: int, rank: int) -> None:
        self.length = length
        self.num_replicas = num_replicas
        self.rank = rank

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.num_replicas))


def shard_for_evaluation(loader: Any, num_replicas: int, rank: int) -> Any:
    """The loader restricted to `rank`'s `EvaluationShard`; other loaders come back unchanged.

    A loader that is not a plain `DataLoader` with an ordinary sampler is evaluated whole on
    every rank, which still gives exact averages, at `num_replicas` times the cost.
    """
    if num_replicas == 1 or isinstance(getattr(loader, "sampler", None), EvaluationShard):
        return loader
    if why_not_resumable(loader) is not None:
        return loader
    sampler = EvaluationShard(len(loader.dataset), num_replicas, rank)
    return rebuilt_loader(loader, sampler)


def evaluation_loader(loader: Any, distributed: Distributed) -> Any:
    """DDP: this rank's share of an evaluation loader, without padding.

    FSDP runs collectives in every forward, so there each rank evaluates the whole
    loader (same count of forwards everywhere; averages stay exact). A dict of named
    loaders is split loader by loader.
    """
    if distributed.kind != "ddp":
        return loader
    if isinstance(loader, Mapping):
        return {name: evaluation_loader(one, distributed) for name, one in loader.items()}
    return shard_for_evaluation(loader, distributed.world_size, distributed.rank)


def rebuilt_loader(
    loader: DataLoader, sampler: Sampler[int], pin_memory: bool = False
) -> DataLoader:
    """A DataLoader like `loader` in every setting, drawing indices from `sampler`."""
    settings = {
        name: getattr(loader, name)
        for name in inspect.signature(DataLoader.__init__).parameters
        if name not in ("self", "dataset", "shuffle", "sampler", "batch_sampler")
        and hasattr(loader, name)
    }
    settings["pin_memory"] = settings.get("pin_memory", False) or pin_memory
    return DataLoader(loader.dataset, sampler=sampler, **settings)


def set_sampler_epoch(loader: Any, epoch: int) -> None:
    """A DistributedSampler (or any sampler with `set_epoch`) reshuffles per epoch; so does
    a data set with `set_epoch` (a Hugging Face `IterableDataset`, whose saved state applies
    only to the epoch it names), as the Hugging Face Trainer tells it."""
    for holder in (
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
        getattr(loader, "dataset", None),
    ):
        if callable(getattr(holder, "set_epoch", None)):
            holder.set_epoch(epoch)
