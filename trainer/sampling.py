"""The data order of an epoch, saved and restored so a run resumes mid-epoch exactly, and
shared out between the ranks of a distributed run.

A plain `DataLoader(shuffle=True)` draws its epoch's seed from torch's global generator
when its iterator starts, so the order cannot be asked for later. `make_resumable` gives
such a loader a `ResumableSampler`, which draws the same seed from the same generator (a
run sees exactly the data order of the loader it was given) but remembers it, and on
resume starts the epoch at the first unconsumed index: consumed batches are skipped as
indices, never loaded. Across N ranks, every rank uses rank 0's seed and takes every N-th
index of the one permutation, so N ranks with batch B see the batches one process with
batch N*B would see. `shard_for_evaluation` splits an evaluation set the same way, without
padding, so averages over it stay exact.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
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
    "EvaluationShard",
    "ResumableSampler",
    "TrainingData",
    "check_same_data",
    "data_generators",
    "length_or_none",
    "make_resumable",
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
        self._resume_at: tuple[dict[str, Any], int] | None = None

    def __len__(self) -> int:
        return -(-self.length // self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        start = 0
        if self._resume_at is not None:
            self.epoch_order, start = self._resume_at
            self._resume_at = None
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
        """Make the next epoch repeat the order `epoch_order` describes, from `start_index`."""
        self._resume_at = (dict(epoch_order), start_index)


class TrainingData:
    """The training loader as the loop draws from it, and where its current epoch stands.

    An epoch's order comes from random generators: torch's global one (a plain shuffle's
    seed, the workers' seeds) and any `generator=` the loader, its sampler or its batch
    sampler holds. Their states as the epoch started let a checkpoint restart it mid-way in
    the same order; their states now let the next epoch draw as if the run never stopped.

    Args:
        loader: the training loader, already made resumable where it can be.
        sampler: its `ResumableSampler`, or None when its order cannot be restarted by
            index (then a resumed epoch draws and discards the batches it had consumed).
    """

    def __init__(self, loader: Iterable[Any], sampler: ResumableSampler | None) -> None:
        self.loader = loader
        self.sampler = sampler
        self.length = length_or_none(loader)  # len() of a DataLoader is not free
        self._has_length = self.length is not None
        self.generators = data_generators(loader)
        self._epoch_start: dict[str, Any] | None = None
        self._resume_at: dict[str, Any] | None = None
        self._has_warned = False

    def batches(self, epoch: int, first: int) -> Iterator[Any]:
        """Epoch `epoch`'s batches from batch `first` on (a resumed epoch skips what it had)."""
        set_sampler_epoch(self.loader, epoch)
        resume, self._resume_at = self._resume_at, None
        if not first or resume is None:
            self._epoch_start = self.random_states()["now"]
            batches = self._iterator(epoch)
        else:
            now = self.random_states()["now"]
            self._epoch_start = resume["epoch_start"]
            self._set(self._epoch_start)  # the iterator draws its seeds as the epoch first did
            if self.sampler is not None:
                self.sampler.resume_at(resume["epoch_order"], first * resume["batch_size"])
                batches = self._iterator(epoch)
            else:
                batches = self._iterator(epoch)
                next(islice(batches, first - 1, None), None)  # load and discard consumed ones
            self._set(now)
        if self._has_length:
            return batches
        self.length = None
        return self._measured(batches, first)

    def _iterator(self, epoch: int) -> Iterator[Any]:
        """`iter(loader)`, drawing from the generators only where an unbroken run drew.

        A DataLoader with persistent workers draws their seed once, when its first epoch
        starts; a run resumed at a later epoch must not draw it again, or every random
        number after it (dropout, the next shuffle) moves. Its seed comes from a spare one.
        """
        if not (epoch > 0 and getattr(self.loader, "persistent_workers", False)):
            return iter(self.loader)
        loader: Any = self.loader
        own = loader.generator
        loader.generator = torch.Generator()
        try:
            return iter(loader)
        finally:
            loader.generator = own

    def _measured(self, batches: Iterator[Any], first: int) -> Iterator[Any]:
        """The batches of a loader without a length, one held back: `length` is set as the
        last one is handed out, so its accumulation window steps inside its own batch."""
        count, batch = first, next(batches, _END)
        while batch is not _END:
            following = next(batches, _END)
            count += 1
            if following is _END:
                self.length = count
            yield batch
            batch = following

    def random_states(self) -> dict[str, Any]:
        """This rank's generator states: as the epoch started, and now."""
        now = {
            "torch": torch.get_rng_state(),
            "generators": [generator.get_state() for generator in self.generators],
        }
        return {"epoch_start": self._epoch_start, "now": now}

    def position(self, is_mid_epoch: bool) -> dict[str, Any]:
        """What a checkpoint needs to restart the current epoch's data where it stopped."""
        if is_mid_epoch and not self._has_warned:
            self._has_warned = _warn_if_inexact_mid_epoch(self.loader)
        dataset = getattr(self.loader, "dataset", None)
        return {
            "epoch_order": self.sampler.epoch_order if self.sampler is not None else {},
            "dataset_length": length_or_none(dataset),
            "batch_size": getattr(self.loader, "batch_size", None),
            "num_batches": self.length,
            "ranks": _ranks_sharing(self.loader),
        }

    def resume(
        self, position: dict[str, Any], random_states: dict[str, Any], is_mid_epoch: bool
    ) -> None:
        """Continue from a checkpoint's `position()` and this rank's `random_states()`."""
        saved = random_states["now"]["generators"]
        if len(saved) != len(self.generators):
            warnings.warn(
                f"the checkpoint's train_loader drew from {len(saved)} generator(s), this "
                f"one from {len(self.generators)}: its data order will differ from the "
                "saved run's. Pass the loader the run was saved with for an exact resume.",
                stacklevel=3,
            )
        for generator, state in zip(self.generators, saved, strict=False):
            generator.set_state(state)
        if is_mid_epoch:
            self._resume_at = position | {"epoch_start": random_states["epoch_start"]}

    def _set(self, states: dict[str, Any]) -> None:
        torch.set_rng_state(states["torch"])
        for generator, state in zip(self.generators, states["generators"], strict=False):
            generator.set_state(state)


_END = object()


def data_generators(loader: Any) -> list[torch.Generator]:
    """Every distinct `torch.Generator` the loader, its sampler or batch sampler draws from."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    holders = (
        loader,
        getattr(loader, "sampler", None),
        batch_sampler,
        getattr(batch_sampler, "sampler", None),
    )
    found: list[torch.Generator] = []
    for holder in holders:
        generator = getattr(holder, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    return found


def _warn_if_inexact_mid_epoch(loader: Iterable[Any]) -> bool:
    """Warn, and return True, when a mid-epoch checkpoint cannot resume `loader` exactly."""
    reason = why_not_resumable(loader) or _worker_randomness(loader)
    if reason is None:
        return False
    warnings.warn(
        f"this checkpoint is saved mid-epoch, but the train_loader cannot resume there "
        f"exactly: {reason}. Checkpoints saved at epoch ends resume exactly; for mid-epoch "
        "ones, use a torch DataLoader (shuffle=True or False) whose random transforms run "
        "in the main process (num_workers=0).",
        stacklevel=4,
    )
    return True


def _worker_randomness(loader: Any) -> str | None:
    """Why workers may make a mid-epoch resume inexact: they may draw random transforms."""
    workers = getattr(loader, "num_workers", 0)
    dataset = getattr(loader, "dataset", None)
    dataset = getattr(dataset, "dataset", dataset)  # a Subset's data set
    transform = getattr(dataset, "transform", None) or getattr(dataset, "transforms", None)
    if workers and transform is not None:
        return (
            f"its {workers} workers apply the data set's transform, and a resumed epoch hands "
            "them other batches than the saved run did, so a random transform draws other "
            "numbers"
        )
    return None


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
    return _rebuilt(loader, sampler, pin_memory), sampler


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
    return _rebuilt(loader, sampler)


def _rebuilt(loader: DataLoader, sampler: Sampler[int], pin_memory: bool = False) -> DataLoader:
    """A DataLoader like `loader` in every setting, drawing indices from `sampler`."""
    settings = {
        name: getattr(loader, name)
        for name in inspect.signature(DataLoader.__init__).parameters
        if name not in ("self", "dataset", "shuffle", "sampler", "batch_sampler")
        and hasattr(loader, name)
    }
    settings["pin_memory"] = settings.get("pin_memory", False) or pin_memory
    return DataLoader(loader.dataset, sampler=sampler, **settings)


def check_same_data(saved: dict[str, Any], loader: Iterable[Any] | None, source: Any) -> None:
    """Refuse a mid-epoch resume whose data set length, batch size or rank count changed."""
    dataset = getattr(loader, "dataset", None)
    now = {
        "dataset_length": length_or_none(dataset),
        "batch_size": getattr(loader, "batch_size", None),
        "ranks": _ranks_sharing(loader),
    }
    before = {name: saved.get(name, 1 if name == "ranks" else None) for name in now}
    changed = [
        f"{name} {before[name]} -> {value}" for name, value in now.items() if before[name] != value
    ]
    if changed:
        raise ValueError(
            f"checkpoint {source} stopped mid-epoch, and the train_loader has changed since "
            f"({', '.join(changed)}), so its position in the epoch means nothing now. Resume "
            "with the same data, batch size and number of ranks, or from a checkpoint saved "
            "at an epoch end (those resume on any number of ranks)."
        )


def set_sampler_epoch(loader: Any, epoch: int) -> None:
    """A DistributedSampler (or any sampler with `set_epoch`) reshuffles per epoch."""
    for sampler in (
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
    ):
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(epoch)


def _ranks_sharing(loader: Any) -> int:
    """How many ranks split the loader's data (ours or a `DistributedSampler`)."""
    return int(getattr(getattr(loader, "sampler", None), "num_replicas", 1))


def length_or_none(sized: Any) -> int | None:
    """`len(sized)`, or None for an iterable without a length."""
    try:
        return len(sized)
    except TypeError:
        return None
