"""Where the training data stands: the epoch's order, every generator it draws from, the
resume point and the per-rank states a checkpoint keeps of it.

An epoch's order comes from random generators: torch's global one (a plain shuffle's seed,
the workers' seeds) and any `generator=` the loader, its sampler or its batch sampler holds.
`DataPosition` keeps their states as the epoch started, so a checkpoint restarts the epoch
mid-way in the same order, and their states now, so the next epoch draws as if the run had
never stopped. A loader our `ResumableSampler` drives restarts at the first unconsumed index.
A loader that keeps its own state (`state_dict()` and `load_state_dict()`: torchdata's
`StatefulDataLoader`, or a data set or sampler of a `num_workers=0` DataLoader, see
`stateful_source`) is asked for it at each mid-epoch checkpoint, per rank, and handed it
back on resume, so nothing is replayed. Any other loader (an `IterableDataset`, a custom
sampler) replays its epoch from the start with the same generators and discards the
batches it had consumed, saying how many. Torch's global state
itself is saved with the other random states by `checkpoint.capture_rng_states`. Here too:
the training loader made resumable and split between the ranks (which must agree on its
length), and a loader's persistent workers stopped when `fit` ends.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset

from trainer.checkpoint import check_storable
from trainer.sampling import (
    ResumableSampler,
    make_resumable,
    set_sampler_epoch,
    why_not_resumable,
)

if TYPE_CHECKING:
    from trainer.distributed import Distributed

__all__ = [
    "DataPosition",
    "data_generators",
    "length_or_none",
    "stateful_source",
    "stop_persistent_workers",
]


class DataPosition:
    """The training loader as the loop draws from it, and where its current epoch stands.

    Args:
        loader: the training loader, already made resumable where it can be (or None).
        sampler: its `ResumableSampler`, or None when its order cannot be restarted by
            index (then a resumed epoch continues through the loader's own state, or draws
            and discards the batches it had consumed).
        is_global_zero: whether this rank tells the user how many batches a resume replays.
    """

    def __init__(
        self,
        loader: Iterable[Any] | None,
        sampler: ResumableSampler | None,
        is_global_zero: bool = True,
    ) -> None:
        self.loader = loader
        self.sampler = sampler
        self.source = stateful_source(loader) if sampler is None else None
        self.is_global_zero = is_global_zero
        self._held_source_state: Any = None  # a loader without a length: as of the batch out
        self._resumed_source_state: Any = None
        self.loader_length = length_or_none(loader)  # len() of a DataLoader is not free
        self.length = self.loader_length  # this epoch's: known at its last batch without a len()
        self.limit: int | None = None  # batches per epoch the run keeps (`limit_to`)
        self.generators = data_generators(loader)
        self._epoch_start: dict[str, Any] | None = None
        self._resumed_epoch_start: dict[str, Any] | None = None
        self._has_warned = False

    @classmethod
    def of(
        cls, loader: Iterable[Any] | None, distributed: Distributed, pin_memory: bool
    ) -> DataPosition:
        """The position of `loader` once made resumable and split between the ranks.

        `pin_memory=True` also pins its batches, so copies to a GPU can run asynchronously.
        """
        if loader is None:
            return cls(None, None)
        reason = why_not_resumable(loader)
        if reason is None:
            return cls(*make_resumable(
                loader, distributed.world_size, distributed.rank, distributed.share_seed,
                pin_memory=pin_memory,
            ))  # fmt: skip
        sampler = getattr(loader, "sampler", None)
        if distributed.world_size > 1 and not hasattr(sampler, "num_replicas"):
            if distributed.is_global_zero:
                warnings.warn(
                    f"the train_loader is not split between the {distributed.world_size} "
                    f"ranks ({reason}), so each rank trains on the same data: give it a "
                    "DistributedSampler, or pass a plain DataLoader and the trainer splits it.",
                    stacklevel=3,
                )
        return cls(loader, None, distributed.is_global_zero)

    def limit_to(self, batches: int | None) -> None:
        """Run at most `batches` batches an epoch (None: all): `limit_train_batches` and the
        debug runs. The limited count is the epoch's length, so the accumulation window, the
        epoch's end and a mid-epoch resume all count the limited epoch."""
        self.limit = batches
        if batches is not None and self.loader_length is not None:
            self.loader_length = self.length = min(self.loader_length, batches)

    def check_same_length(self, distributed: Distributed, accumulate_grad_batches: int) -> None:
        """Refuse ranks with different numbers of batches: DDP would wait for the missing one."""
        if not distributed.is_active:
            return
        lengths = distributed.gather(self.loader_length)
        if len(set(lengths)) > 1:
            listed = ", ".join(f"rank {rank}: {count}" for rank, count in enumerate(lengths))
            raise ValueError(
                f"the ranks disagree on the number of training batches per epoch ({listed}); "
                "each rank must run the same number of steps, or the others would wait for it "
                "forever. Pass a plain DataLoader and the trainer splits it evenly, or use a "
                "DistributedSampler."
            )
        if self.loader_length is None and accumulate_grad_batches > 1:
            raise ValueError(
                "accumulate_grad_batches > 1 on several ranks needs a train_loader with a "
                "length, so every rank knows where the last accumulation window ends."
            )

    def batches(self, epoch: int, first: int) -> Iterator[Any]:
        """Epoch `epoch`'s batches from batch `first` on (a resumed epoch skips what it had)."""
        set_sampler_epoch(self.loader, epoch)
        resumed_start, self._resumed_epoch_start = self._resumed_epoch_start, None
        if not first or resumed_start is None:
            self._epoch_start = self._states()
            batches = self._open_iterator(epoch)
        else:
            now = self._states()
            self._epoch_start = resumed_start
            self._set(resumed_start)  # the iterator draws its seeds as the epoch first did
            batches = self._open_resumed_iterator(epoch, first)
            self._set(now)
        if self.limit is not None:  # the rest of the epoch's order is never drawn
            batches = islice(batches, max(self.limit - first, 0))
        if self.loader_length is not None:
            return batches
        self.length = None
        return self._measured(batches, first)

    def _open_resumed_iterator(self, epoch: int, first: int) -> Iterator[Any]:
        """The saved epoch's iterator from batch `first` on: our sampler and a loader with
        its own state start there by themselves; any other loader replays up to it."""
        state, self._resumed_source_state = self._resumed_source_state, None
        if state is not None:
            self.source.load_state_dict(state)
        batches = self._open_iterator(epoch)
        if self.sampler is None and state is None:
            self._replay(batches, first)
        return batches

    def _replay(self, batches: Iterator[Any], count: int) -> None:
        """Load and discard the `count` batches the saved epoch had consumed, saying so.

        A bar shows how far it is when the skip runs longer than `REPLAY_BAR_DELAY` seconds.
        """
        if self.is_global_zero:
            print(
                f"trainer: resuming mid-epoch by replaying {count} batch"
                f"{'es' * (count != 1)} of the train_loader ({_why_replayed(self.loader)})",
                file=sys.stderr,
            )
        from tqdm.auto import tqdm

        skipped = islice(batches, count)
        bar = tqdm(skipped, total=count, desc="replaying", unit="batch", leave=False,
                   delay=REPLAY_BAR_DELAY, disable=not self.is_global_zero)  # fmt: skip
        for _ in bar:
            pass

    def _open_iterator(self, epoch: int) -> Iterator[Any]:
        """`iter(loader)`, drawing from the generators only where an unbroken run drew.

        A DataLoader with persistent workers draws their seed once, when its first epoch
        starts; a run resumed at a later epoch must not draw it again, or every random
        number after it (dropout, the next shuffle) moves. Its seed comes from a spare one.
        """
        if not (epoch > 0 and getattr(self.loader, "persistent_workers", False)):
            return iter(self.loader)  # type: ignore[arg-type]
        loader: Any = self.loader
        own = loader.generator
        loader.generator = torch.Generator()
        try:
            return iter(loader)
        finally:
            loader.generator = own

    def _measured(self, batches: Iterator[Any], first: int) -> Iterator[Any]:
        """The batches of a loader without a length, one held back: `length` is set as the
        last one is handed out, so its accumulation window steps inside its own batch.

        The loader has then yielded one batch more than the loop took, so a loader with its
        own state is asked for it before each held-back batch is drawn (microseconds for
        torchdata's and Hugging Face's): a checkpoint keeps the state of the batch handed out.
        """
        count, batch = first, next(batches, _END)
        source = self.source
        while batch is not _END:
            if source is not None:
                self._held_source_state = source.state_dict()
            following = next(batches, _END)
            count += 1
            if following is _END:
                self.length = count
            yield batch
            batch = following

    # ------------------------------------------------------------------ what a checkpoint keeps
    def random_states(self) -> dict[str, Any]:
        """This rank's share of the checkpoint: its generators as the epoch started, and now.

        Torch's global state now is not repeated here: the checkpoint's RNG capture holds it.
        """
        now = {"generators": [generator.get_state() for generator in self.generators]}
        return {"epoch_start": self._epoch_start, "now": now}

    def position(self, is_mid_epoch: bool) -> dict[str, Any]:
        """What a checkpoint needs to restart the current epoch's data where it stopped."""
        if is_mid_epoch and not self._has_warned and self.source is None:
            self._has_warned = _warn_if_inexact_mid_epoch(self.loader)
        return {
            "epoch_order": self.sampler.epoch_order if self.sampler is not None else {},
            **self._shape(),
            "num_batches": self.length,
        }

    def source_state(self, is_mid_epoch: bool) -> Any:
        """This rank's share of the checkpoint from a loader with its own state, mid-epoch.

        None at an epoch's end, where the next epoch starts afresh as after any finished
        pass, from the generators `random_states` keeps; and None for other loaders.
        """
        if self.source is None or not is_mid_epoch:
            return None
        if self.loader_length is None:
            state = self._held_source_state
        else:
            state = self.source.state_dict()
        name = type(self.source).__name__
        try:
            check_storable(state, "state_dict()")
        except TypeError as error:
            raise TypeError(
                f"the train_loader's {name} (its state_dict() is saved in each mid-epoch "
                f"checkpoint) returned a state the checkpoint cannot hold: {error}"
            ) from None
        return state

    def check_same_data(self, saved: dict[str, Any], source: Any) -> None:
        """Refuse a mid-epoch resume whose data set length, batch size or rank count changed."""
        now = self._shape()
        before = {name: saved.get(name, 1 if name == "ranks" else None) for name in now}
        changed = [
            f"{name} {before[name]} -> {value}"
            for name, value in now.items()
            if before[name] != value
        ]
        if changed:
            raise ValueError(
                f"checkpoint {source} stopped mid-epoch, and the train_loader has changed since "
                f"({', '.join(changed)}), so its position in the epoch means nothing now. "
                "Resume with the same data, batch size and number of ranks, or from a "
                "checkpoint saved at an epoch end (those resume on any number of ranks)."
            )

    def resume(
        self,
        position: dict[str, Any],
        random_states: dict[str, Any],
        batches_done: int,
        source_state: Any = None,
    ) -> None:
        """Continue from a checkpoint's `position()`, this rank's `random_states()` and its
        `source_state()` (None: a resumed epoch replays what it had consumed).

        `batches_done` batches of the saved epoch were consumed; 0 at an epoch's end.
        """
        saved = random_states["now"]["generators"]  # older files' "torch" entry is not read
        if len(saved) != len(self.generators):
            warnings.warn(
                f"the checkpoint's train_loader drew from {len(saved)} generator(s), this "
                f"one from {len(self.generators)}: its data order will differ from the "
                "saved run's. Pass the loader the run was saved with for an exact resume.",
                stacklevel=3,
            )
        for generator, state in zip(self.generators, saved, strict=False):
            generator.set_state(state)
        if not batches_done:
            return
        self._resumed_epoch_start = random_states["epoch_start"]
        if self.source is not None:
            self._resumed_source_state = source_state
        if self.sampler is not None:
            self.sampler.resume_at(position["epoch_order"], batches_done * position["batch_size"])

    def _shape(self) -> dict[str, Any]:
        """What a position inside an epoch depends on: data set length, batch size, ranks."""
        return {
            "dataset_length": length_or_none(getattr(self.loader, "dataset", None)),
            "batch_size": getattr(self.loader, "batch_size", None),
            "ranks": int(getattr(getattr(self.loader, "sampler", None), "num_replicas", 1)),
        }

    def _states(self) -> dict[str, Any]:
        """Every generator the epoch's order draws from, torch's global one included."""
        return {
            "torch": torch.get_rng_state(),
            "generators": [generator.get_state() for generator in self.generators],
        }

    def _set(self, states: dict[str, Any]) -> None:
        torch.set_rng_state(states["torch"])
        for generator, state in zip(self.generators, states["generators"], strict=False):
            generator.set_state(state)


_END = object()
REPLAY_BAR_DELAY = 2.0  # seconds: a replay that takes longer shows a progress bar


def stateful_source(loader: Any) -> Any:
    """What resumes `loader` through its own `state_dict()` and `load_state_dict()`, or None.

    The loader itself when it has both (torchdata's `StatefulDataLoader`, a loader of
    yours): its `state_dict()` is taken after the batches it has yielded, and after
    `load_state_dict(state)` its next `iter()` continues after them. For a torch
    DataLoader with `num_workers=0`, which asks its data set or sampler for each batch
    as it yields it (no read-ahead), the first of its `IterableDataset`, its own batch
    sampler and its sampler that has both. With workers, their copies of the data set
    hold the state, out of reach, so such a loader replays.
    """
    if _has_state(loader):
        return loader
    if not isinstance(loader, DataLoader) or loader.num_workers:
        return None
    batch_sampler = loader.batch_sampler
    holders = (
        loader.dataset if isinstance(loader.dataset, IterableDataset) else None,
        batch_sampler if type(batch_sampler) is not BatchSampler else None,
        loader.sampler,
    )
    return next((holder for holder in holders if _has_state(holder)), None)


def _why_replayed(loader: Any) -> str:
    """Why `loader` resumes by replay, and what would resume it without."""
    workers = getattr(loader, "num_workers", 0)
    holders = (getattr(loader, name, None) for name in ("dataset", "batch_sampler", "sampler"))
    if workers and any(_has_state(holder) for holder in holders):
        return (
            f"the state_dict() of its data set or sampler lives in its {workers} workers; "
            "torchdata's StatefulDataLoader gathers it from them"
        )
    return (
        "it keeps no state_dict()/load_state_dict() of its own; torchdata's "
        "StatefulDataLoader resumes without replay"
    )


def _has_state(holder: Any) -> bool:
    return callable(getattr(holder, "state_dict", None)) and callable(
        getattr(holder, "load_state_dict", None)
    )


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


def _warn_if_inexact_mid_epoch(loader: Iterable[Any] | None) -> bool:
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


def length_or_none(sized: Any) -> int | None:
    """`len(sized)`, or None for an iterable without a length."""
    try:
        return len(sized)
    except TypeError:
        return None


def stop_persistent_workers(*loaders: Any) -> None:
    """Stop the persistent workers of each DataLoader among `loaders`; its next epoch starts
    new ones. Other loaders' workers stop with their epoch's iterator.

    Torch keeps them in the loader until the loader is freed, which for a loader held by a
    trainer (it sits in reference cycles) is whenever the cycle collector runs; by then the
    worker queues may be shut, and each worker's join waits out torch's 5 s timeout.
    """
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None) if isinstance(loader, DataLoader) else None
        # A StatefulDataLoader keeps its single-process iterator too: it has no workers.
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            loader._iterator = None  # torch has no public verb for this: its __del__'s own
            iterator._shutdown_workers()
