"""Quick debug runs and per-epoch limits: `limit_train_batches`, `limit_val_batches`,
`overfit_batches` and `fast_dev_run`, checked once, resolved against a loader's length, and
the loop settings a dev run overrides.

A limit is an int (batches) or a float in (0, 1] (that fraction of the loader's batches,
rounded down, as in Lightning); a fraction needs a loader with a length. `RunLimits` is the
one resolved object the trainer asks: how many batches a training epoch has (the data
position makes that the epoch's length, so the accumulation window, the epoch's end and a
mid-epoch resume all count the limited epoch), how many batches an evaluation of a stage
runs, whether the run writes files, and which loop settings a dev run replaces (`setting`).
Under several ranks a limit counts each rank's batches.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler

from trainer.data_position import length_or_none
from trainer.sampling import rebuilt_loader

__all__ = ["BatchLimit", "RunLimits", "resolve_limit"]

BatchLimit = int | float | None
"""Batches per epoch: an int, a fraction in (0, 1] of the loader's batches, or None for all."""


@dataclass(frozen=True)
class RunLimits:
    """The debug-run and limit keywords of a `Trainer`, checked and resolved.

    Args:
        limit_train_batches: training batches per epoch (int or fraction); None runs all.
        limit_val_batches: batches per validation (int or fraction; 0 switches it off).
        overfit_batches: train on the same first batches (int or fraction) every epoch, in
            the loader's order made fixed, and validate on the first as many; 0 is off.
        fast_dev_run: batches of train, validation, test and predict in a dev run of one
            epoch that writes no files; 0 is off (`True` becomes 1 in `of`).
    """

    limit_train_batches: BatchLimit = None
    limit_val_batches: BatchLimit = None
    overfit_batches: int | float = 0
    fast_dev_run: int = 0

    @classmethod
    def of(
        cls,
        limit_train_batches: Any = None,
        limit_val_batches: Any = None,
        overfit_batches: Any = 0,
        fast_dev_run: Any = False,
    ) -> RunLimits:
        """Check the keywords as a user passed them; `fast_dev_run=True` means one batch."""
        _check_limit("limit_train_batches", limit_train_batches, allows_zero=False)
        _check_limit("limit_val_batches", limit_val_batches, allows_zero=True)
        _check_limit("overfit_batches", overfit_batches, allows_zero=True, allows_none=False)
        if overfit_batches and limit_train_batches is not None:
            raise ValueError(
                f"overfit_batches={overfit_batches!r} and limit_train_batches="
                f"{limit_train_batches!r} both set how many training batches an epoch has; "
                "pass only one of them (overfit_batches also fixes their order)."
            )
        dev_batches = _dev_batches(fast_dev_run)
        return cls(limit_train_batches, limit_val_batches, overfit_batches, dev_batches)

    @property
    def is_dev_run(self) -> bool:
        """A `fast_dev_run`: a few batches of everything, one epoch, no files."""
        return self.fast_dev_run > 0

    @property
    def writes_files(self) -> bool:
        """Whether the run may write files: logs, checkpoints, configs, a version folder."""
        return not self.is_dev_run

    @property
    def is_overfitting(self) -> bool:
        """`overfit_batches` is set: the same first batches every epoch."""
        return self.overfit_batches != 0

    def setting(self, name: str, requested: Any) -> Any:
        """The loop setting `name` as this run uses it: what a dev run fixes, else `requested`.

        A dev run trains one epoch of `fast_dev_run` batches (`max_epochs`, `max_steps`),
        validates once at its end (`val_check_interval`, `check_val_every_n_epoch`) and runs
        no sanity validation first (`num_sanity_val_steps`), as Lightning's does.
        """
        if not self.is_dev_run:
            return requested
        overrides = {
            "max_epochs": 1,
            "max_steps": self.fast_dev_run,
            "val_check_interval": None,
            "check_val_every_n_epoch": 1,
            "num_sanity_val_steps": 0,
        }
        return overrides.get(name, requested)

    def when_to_stop(
        self, max_epochs: int | None, max_steps: int | None
    ) -> tuple[int | None, int | None]:
        """`max_epochs` and `max_steps` as this run uses them (a dev run fixes both)."""
        return self.setting("max_epochs", max_epochs), self.setting("max_steps", max_steps)

    def training_loader(self, loader: Iterable[Any] | None) -> Iterable[Any] | None:
        """The train_loader as the run draws from it: under `overfit_batches`, a shuffled
        DataLoader is rebuilt in its data set's order (with a warning), so every epoch's
        first batches are the same ones."""
        if not self.is_overfitting or loader is None:
            return loader
        sampler = getattr(loader, "sampler", None)
        if type(loader) is DataLoader and type(sampler) is RandomSampler:
            warnings.warn(
                f"overfit_batches={self.overfit_batches!r}: the train_loader shuffles, so "
                "the trainer draws it in its data set's order instead, and every epoch "
                "trains on the same first batches.",
                stacklevel=3,
            )
            return rebuilt_loader(loader, SequentialSampler(loader.dataset))  # type: ignore[arg-type]
        is_stream = isinstance(getattr(loader, "dataset", None), IterableDataset)
        if sampler is not None and type(sampler) is not SequentialSampler and not is_stream:
            warnings.warn(
                f"overfit_batches={self.overfit_batches!r}: the train_loader's "
                f"{type(sampler).__name__} chooses its own order, so the first batches may "
                "differ between epochs; give it a fixed order to overfit the same batches.",
                stacklevel=3,
            )
        return loader

    def train_batches(self, length: int | None) -> int | None:
        """Batches per training epoch of a loader of `length` batches (None: unknown)."""
        if self.is_dev_run:
            return resolve_limit(self.fast_dev_run, length, "fast_dev_run")
        if self.is_overfitting:
            return resolve_limit(self.overfit_batches, length, "overfit_batches")
        return resolve_limit(self.limit_train_batches, length, "limit_train_batches")

    def eval_batches(self, stage: str, length: int | None) -> int | None:
        """Batches an evaluation of `stage` ("validate", "test", "predict") runs."""
        if self.is_dev_run:
            return resolve_limit(self.fast_dev_run, length, "fast_dev_run")
        if stage != "validate":
            return None
        if self.limit_val_batches is None and self.is_overfitting:
            return resolve_limit(self.overfit_batches, length, "overfit_batches")
        return resolve_limit(self.limit_val_batches, length, "limit_val_batches")

    def first_batches(self, loader: Iterable[Any], stage: str) -> Iterable[Any]:
        """`loader`, or its first batches when a limit applies to `stage`."""
        count = self.eval_batches(stage, length_or_none(loader))
        return loader if count is None else islice(loader, count)

    def validation_loader(self, loader: Any) -> Any:
        """The val_loader a run validates on: None when `limit_val_batches` is 0 (validation
        off, as in Lightning). A fraction of a loader without a length fails here; a dict of
        named loaders is checked loader by loader."""
        if isinstance(loader, Mapping):
            kept = {name: self.validation_loader(one) for name, one in loader.items()}
            return {name: one for name, one in kept.items() if one is not None} or None
        if loader is None or self.eval_batches("validate", length_or_none(loader)) == 0:
            return None
        return loader

    def dev_run_summary(self, train_batches: int, steps: int, val_batches: int | None) -> str:
        """The one line a dev run ends with: what ran, and that nothing was written."""
        validated = f", validated {_batches(val_batches)}" if val_batches else ""
        return (
            f"fast_dev_run: trained {_batches(train_batches)} ({steps} optimizer "
            f"step{'s' * (steps != 1)}){validated} in 1 epoch; a dev run writes no files "
            "(no run folder, logs or checkpoints)."
        )


def resolve_limit(limit: BatchLimit, length: int | None, name: str) -> int | None:
    """Batches `limit` allows of a loader with `length` batches (None: not known).

    An int is a count (a loader without a length runs at most that many); a fraction needs
    a length and rounds down, and must leave at least one batch.
    """
    if limit is None:
        return None
    if isinstance(limit, int):
        return limit if length is None else min(limit, length)
    if length is None:
        raise ValueError(
            f"{name}={limit!r} is a fraction of the loader's batches, but the loader has no "
            f"length (an IterableDataset); pass a number of batches, e.g. {name}=10."
        )
    count = int(length * limit)
    if count == 0 and limit > 0:
        raise ValueError(
            f"{name}={limit!r} of {length} batches is less than one batch; pass at least "
            f"{name}={1 / length:.3g}, or a number of batches, e.g. {name}=1."
        )
    return count


def _check_limit(name: str, value: Any, allows_zero: bool, allows_none: bool = True) -> None:
    """An int >= 1 (or 0 where it switches something off) or a float in (0, 1]."""
    if value is None and allows_none:
        return
    lowest = 0 if allows_zero else 1
    fix = f"pass an int >= {lowest} (batches) or a float in (0, 1] (a fraction of the loader)"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be an int or a float, got {value!r}; {fix}.")
    if isinstance(value, int) and value < lowest:
        raise ValueError(f"{name}={value!r} is out of range; {fix}.")
    if isinstance(value, float) and not (0 < value <= 1 or (allows_zero and value == 0)):
        hint = f" ({name}={int(value)} for {int(value)} batches)" if value.is_integer() else ""
        raise ValueError(f"{name}={value!r} is out of range{hint}; {fix}.")


def _dev_batches(fast_dev_run: Any) -> int:
    """`fast_dev_run` as a batch count: True is 1, False is 0."""
    if isinstance(fast_dev_run, bool):
        return int(fast_dev_run)
    if not isinstance(fast_dev_run, int) or fast_dev_run < 0:
        kind = ValueError if isinstance(fast_dev_run, int) else TypeError
        raise kind(
            f"fast_dev_run must be True, False or a number of batches >= 0, got "
            f"{fast_dev_run!r}; pass fast_dev_run=True for one batch, or e.g. fast_dev_run=3."
        )
    return fast_dev_run


def _batches(count: int | None) -> str:
    return f"{count} batch{'es' * (count != 1)}"
