"""A run's checkpoint: what it holds, and putting it back into a trainer for an exact resume.

One checkpoint holds the model, the optimizers and schedulers by name, the grad scaler,
`TrainState`, the random states of every rank (the data's generators among them, and the
state of a train_loader that keeps its own), the data position inside the epoch, each
callback's state, the best file its callbacks declare and the trainer subclass's own
`state_dict()`, so a resumed run continues as if it had never stopped. `checkpoint.py`
writes and reads the files, `run_files.py` finds them; this module fills them and empties
them, and reads the contents of older formats. The `Trainer` fires the
`on_save_checkpoint` and `on_load_checkpoint` hooks around these functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.checkpoint import CheckpointError, capture_rng_states, restore_rng_states
from trainer.data_position import DataPosition
from trainer.optimization import named

if TYPE_CHECKING:
    from trainer.metrics import LogBook
    from trainer.trainer import Trainer

__all__ = ["restore_run", "run_checkpoint"]


def run_checkpoint(trainer: Trainer, data: DataPosition, logs: LogBook) -> dict[str, Any]:
    """Everything needed to continue `trainer`'s run from where it is now.

    On several ranks every rank calls it: what each rank keeps of its own (`_rank_states`)
    is gathered.
    """
    state = trainer.state
    return {
        "model": trainer.sharding.model_state_dict(),
        **_optimization_states(trainer),
        "precision": trainer.precision.state_dict(),
        "state": state.state_dict(),
        # Each rank's own states, rank 0's first.
        "ranks": trainer.distributed.gather(_rank_states(data, logs, state.is_mid_epoch)),
        "data": data.position(state.is_mid_epoch),
        "callbacks": trainer.callbacks.state_dicts(),
        # The file `fit(ckpt_path="best")` loads, as the callbacks declare it ("" for none).
        "best_checkpoint": best.path if (best := trainer.callbacks.best_so_far()) else "",
        "trainer": trainer.state_dict(),
    }


def restore_run(
    trainer: Trainer, data: DataPosition, logs: LogBook, path: Path, checkpoint: dict[str, Any]
) -> dict[str, Any]:
    """Put `checkpoint`, loaded from `path`, back into `trainer`; return it.

    The data position is handed to `data`, which uses it when the first epoch starts.
    """
    trainer.sharding.load_model_state(checkpoint["model"], path)
    trainer.state.load_state_dict(checkpoint["state"])
    is_mid_epoch = trainer.state.is_mid_epoch
    if is_mid_epoch:
        data.check_same_data(checkpoint["data"], path)
    own = _own_states(checkpoint, trainer.distributed.rank)
    _load_optimization_states(trainer, checkpoint, path)
    trainer.precision.load_state_dict(checkpoint["precision"])
    trainer.callbacks.load_state_dicts(checkpoint["callbacks"])
    trainer.load_state_dict(checkpoint.get("trainer", {}))
    restore_rng_states(own["rng"])
    batches_done = trainer.state.batches_in_epoch
    data.resume(checkpoint["data"], own["data"], batches_done, own.get("loader"))
    if is_mid_epoch:
        logs.load_state_dict(own["logs"])
    return checkpoint


def _optimization_states(trainer: Trainer) -> dict[str, Any]:
    """The optimizers' and schedulers' states by the names `named` gives them ("0" for a
    lone optimizer, a dict's keys, a list's positions), read back by
    `_load_optimization_states`. Under FSDP every rank takes part in gathering each one."""
    return {
        "optimizers": {
            name: trainer.sharding.optimizer_state_dict(optimizer)
            for name, optimizer in named(trainer.optimizers)
        },
        "schedulers": {
            name: scheduler.state_dict()
            for name, scheduler in named(trainer.schedulers)
            if scheduler is not None
        },
    }


def _load_optimization_states(trainer: Trainer, checkpoint: dict[str, Any], path: Path) -> None:
    """Put `_optimization_states` back, matched by name; one optimizer or several alike."""
    pairs = named(trainer.optimizers)
    names = [name for name, _ in pairs]
    if "optimizer" in checkpoint:
        optimizers, schedulers = _optimization_of_format_3(checkpoint, names)
    else:
        optimizers, schedulers = checkpoint["optimizers"], checkpoint["schedulers"]
    if sorted(optimizers) != sorted(names):
        raise CheckpointError(
            f"checkpoint {path} holds optimizers {sorted(optimizers)}, this trainer has "
            f"{names}; configure the same optimizers to resume."
        )
    for name, optimizer in pairs:
        trainer.sharding.load_optimizer_state(optimizer, optimizers[name])
    for name, scheduler in named(trainer.schedulers):
        if scheduler is not None and name in schedulers:
            scheduler.load_state_dict(schedulers[name])


def _optimization_of_format_3(
    checkpoint: dict[str, Any], names: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Files before format 4 kept a lone optimizer and its scheduler apart, as `optimizer`
    and `scheduler`; with several those were empty, and `optimizers` and `schedulers` (which
    files older than several optimizers lack) held them by name."""
    if not checkpoint["optimizer"]:
        return checkpoint.get("optimizers", {}), checkpoint.get("schedulers", {})
    # The lone optimizer was saved without its name: it is this trainer's lone one, if it
    # has one (a dict of one keeps its key), and a mismatch with "0" otherwise.
    name = names[0] if len(names) == 1 else "0"
    scheduler = checkpoint["scheduler"]
    return {name: checkpoint["optimizer"]}, ({name: scheduler} if scheduler else {})


def _rank_states(data: DataPosition, logs: LogBook, is_mid_epoch: bool) -> dict[str, Any]:
    """What each rank saves of its own, read back by `_own_states`: its random streams (for
    dropout and workers), its data generators, its epoch's running sums and, mid-epoch, the
    state of a train_loader that keeps its own (None otherwise; files before it lack it)."""
    return {
        "rng": capture_rng_states(),
        "data": data.random_states(),
        "logs": logs.state_dict(),
        "loader": data.source_state(is_mid_epoch),
    }


def _own_states(checkpoint: dict[str, Any], rank: int) -> dict[str, Any]:
    """What rank `rank` saved of its own; a rank the saved run did not have takes rank 0's
    random states (only epoch-end checkpoints resume on another number of ranks)."""
    if "ranks" not in checkpoint:
        return _own_states_of_format_2(checkpoint, rank)
    ranks = checkpoint["ranks"]
    return ranks[rank] if rank < len(ranks) else ranks[0]


def _own_states_of_format_2(checkpoint: dict[str, Any], rank: int) -> dict[str, Any]:
    """Files written before the data's generators and running sums were saved."""
    rng, epoch_start = checkpoint["rng"], checkpoint["data"].get("epoch_start_rng")
    others = rng.get("other_ranks") or []
    if 0 < rank <= len(others):
        rng, epoch_start = others[rank - 1]["rng"], others[rank - 1]["epoch_start_rng"]
    start = {"torch": epoch_start, "generators": []}
    data = {"epoch_start": start, "now": {"generators": []}}
    empty_logs = {"train": {"sums": {}, "weights": {}, "pending": {}}, "step": {}}
    return {"rng": rng, "data": data, "logs": empty_logs}
