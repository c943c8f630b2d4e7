"""A run's checkpoint: what it holds, and putting it back into a trainer for an exact resume.

One checkpoint holds the model, optimizer, scheduler, grad scaler, `TrainState`, the random
states of every rank, the data position inside the epoch and each callback's state, so a
resumed run continues as if it had never stopped. `checkpoint.py` writes, reads and finds
the files; this module fills them and empties them. The `Trainer` fires the
`on_save_checkpoint` and `on_load_checkpoint` hooks around these functions.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainer.checkpoint import capture_rng_states, restore_rng_states
from trainer.sampling import ResumableSampler, check_same_data, data_position, why_not_resumable

if TYPE_CHECKING:
    from trainer.trainer import Trainer

__all__ = ["restore_run", "resumed_batches", "run_checkpoint", "warn_if_inexact_mid_epoch"]


def run_checkpoint(
    trainer: Trainer,
    state: dict[str, Any],
    sampler: ResumableSampler | None,
    epoch_start_rng: torch.Tensor | None,
) -> dict[str, Any]:
    """Everything needed to continue `trainer`'s run; `state` is its `TrainState` as saved.

    On several ranks every rank calls it: the ranks' random states are gathered here.
    """
    distributed, optimizer = trainer.distributed, trainer.optimizer
    rng = capture_rng_states()
    ranks = distributed.gather({"rng": rng, "epoch_start_rng": epoch_start_rng})
    return {
        "model": distributed.model_state_dict(trainer.model),
        "optimizer": distributed.optimizer_state_dict(trainer.model, optimizer)
        if optimizer
        else {},
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler else {},
        "precision": trainer.precision.state_dict(),
        "state": state,
        # Ranks 1.. keep their own random streams (dropout, workers) for an exact resume.
        "rng": rng | {"other_ranks": ranks[1:]},
        "data": data_position(trainer.train_loader, sampler, epoch_start_rng),
        "callbacks": trainer.callbacks.state_dicts(),
    }


def restore_run(trainer: Trainer, path: Path, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Put `checkpoint`, loaded from `path`, back into `trainer`; return it.

    The data position is used when the first epoch starts; everything else is restored here.
    """
    distributed = trainer.distributed
    distributed.load_model_state(trainer.model, checkpoint["model"], path)
    if checkpoint["state"]["batches_in_epoch"]:
        check_same_data(checkpoint["data"], trainer.train_loader, path)
    _take_own_random_states(checkpoint, distributed.rank)
    distributed.load_optimizer_state(trainer.model, trainer.optimizer, checkpoint["optimizer"])
    if trainer.scheduler is not None and checkpoint["scheduler"]:
        trainer.scheduler.load_state_dict(checkpoint["scheduler"])
    trainer.precision.load_state_dict(checkpoint["precision"])
    trainer.state.load_state_dict(checkpoint["state"])
    trainer.callbacks.load_state_dicts(checkpoint["callbacks"])
    restore_rng_states(checkpoint["rng"])
    return checkpoint


def resumed_batches(
    loader: Iterable[Any], sampler: ResumableSampler, checkpoint: dict[str, Any], first: int
) -> Iterator[Any]:
    """The resumed epoch's batches from `first` on, in the order the saved run drew them."""
    # Start the iterator from the epoch's own random state (its worker seeds come from
    # there), have the sampler skip the consumed indices, then continue from the
    # checkpoint's random state.
    data = checkpoint["data"]
    torch.set_rng_state(data["epoch_start_rng"])
    sampler.resume_at(data["epoch_order"], first * data["batch_size"])
    batches = iter(loader)
    restore_rng_states(checkpoint["rng"])
    return batches


def warn_if_inexact_mid_epoch(loader: Iterable[Any]) -> bool:
    """Warn, and return True, when a mid-epoch checkpoint cannot resume `loader` exactly."""
    reason = why_not_resumable(loader)
    if reason is None:
        return False
    warnings.warn(
        f"this checkpoint is saved mid-epoch, but the train_loader cannot resume there "
        f"exactly: {reason}. A resumed run will draw and discard the consumed batches, and "
        "their order may differ. Use a torch DataLoader (shuffle=True or False) for exact "
        "resume, or save only at epoch ends.",
        stacklevel=3,
    )
    return True


def _take_own_random_states(checkpoint: dict[str, Any], rank: int) -> None:
    """Rank r > 0 resumes from its own saved random states (when the run had that rank)."""
    others = checkpoint["rng"].get("other_ranks") or []
    if 0 < rank <= len(others):
        checkpoint["rng"] = others[rank - 1]["rng"]
        checkpoint["data"]["epoch_start_rng"] = others[rank - 1]["epoch_start_rng"]
