"""Running one job on several processes: the torchrun environment, the process group's set-up
and teardown, collectives, rank-zero helpers, metric reduction, and the decisions every rank
must share. How the model itself is replicated or sharded is `trainer.sharding`'s concern;
`Distributed.shard` hands it the model with this group's kind and device.

`Distributed` is one object with fixed verbs that the loop calls unconditionally. On a single
process each verb is the identity or does nothing, so the loop has one path, as a disabled
GradScaler gives it for precision. Every collective it issues happens at the same point on
every rank (set-up, epoch starts and ends, log steps, checkpoints), never at a point only
some ranks reach, so ranks cannot wait on each other forever.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import gc
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, Literal, get_args

import torch
from torch import nn

from trainer.device import resolve_device
from trainer.metrics import RunningMeans
from trainer.sharding import Sharding, ShardingKind

__all__ = ["STRATEGIES", "Distributed", "StrategyName", "launch_environment"]

StrategyName = Literal["auto", "ddp", "fsdp"]
STRATEGIES: tuple[str, ...] = get_args(StrategyName)
_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launch_environment() -> dict[str, int] | None:
    """Rank, world size and local rank as `torchrun` sets them; None outside such a launch."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    missing = [name for name in _LAUNCH_VARIABLES if name not in os.environ]
    if missing:
        raise ValueError(
            f"RANK and WORLD_SIZE are set but {', '.join(missing)} not: start the job with "
            "torchrun (it sets them all), e.g. torchrun --nproc-per-node 2 train.py."
        )
    return {
        "rank": int(os.environ["RANK"]),
        "world_size": int(os.environ["WORLD_SIZE"]),
        "local_rank": int(os.environ["LOCAL_RANK"]),
    }


class Distributed:
    """How a run spreads over processes: one process, DDP, or FSDP2, launched by torchrun.

    Args:
        strategy: `"auto"` (DDP when the script runs under torchrun or a process group is
            already set up, one plain process otherwise), `"ddp"` or `"fsdp"` (a process
            group of one when not launched).
        timeout: seconds a collective waits for the other ranks before it fails.
        find_unused_parameters: DDP's option for steps that leave some parameters unused.
        shard_modules: FSDP: submodule classes (or class names), such as a transformer
            block, sharded as units of their own; the whole model is always one unit.
        agree_every_n_steps: how often ranks agree on stopping and preemption signals, in
            optimizer steps; None agrees at every log step and at each epoch's last step.

    Example:
        >>> trainer = Trainer(model, optimizer=lambda params: torch.optim.AdamW(params),
        ...                   strategy=Distributed("fsdp", shard_modules=["Block"]), ...)
    """

    def __init__(
        self,
        strategy: str = "auto",
        *,
        timeout: float = 1800.0,
        find_unused_parameters: bool = False,
        shard_modules: Iterable[type[nn.Module] | str] = (),
        agree_every_n_steps: int | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(
                f"strategy={strategy!r} is not supported; use one of "
                f"{', '.join(repr(name) for name in STRATEGIES)} or a Distributed(...)."
            )
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}.")
        if agree_every_n_steps is not None and (
            isinstance(agree_every_n_steps, bool) or agree_every_n_steps < 1
        ):
            raise ValueError(
                f"agree_every_n_steps must be >= 1 or None, got {agree_every_n_steps!r}."
            )
        self.strategy = strategy
        self.timeout = float(timeout)
        self.find_unused_parameters = find_unused_parameters
        self.shard_modules = tuple(shard_modules)
        self.agree_every_n_steps = agree_every_n_steps
        self.kind: ShardingKind = "single"
        self.rank, self.world_size, self.local_rank = 0, 1, 0
        self.device = torch.device("cpu")
        self._owns_group = False
        self._has_failed = False
        self._sharding: Sharding | None = None  # the run's model, once `shard` has it

    # ----------------------------------------------------------------------------- set-up
    @property
    def is_active(self) -> bool:
        """True when this run uses a process group (even one of a single rank)."""
        return self.kind != "single"

    @property
    def ddp(self) -> nn.Module | None:
        """The DDP module the training step runs through (None without DDP), for instance
        to register a communication hook such as fp16 gradient compression."""
        return self._sharding.ddp if self._sharding is not None else None

    @property
    def is_global_zero(self) -> bool:
        """True on the process that writes logs, progress and checkpoints (rank 0)."""
        return self.rank == 0

    def setup(self, device: str | torch.device) -> torch.device:
        """Join the process group (NCCL on CUDA, gloo otherwise) and pick this rank's device."""
        import torch.distributed as dist

        launch = launch_environment()
        is_initialized = dist.is_available() and dist.is_initialized()
        if self.strategy == "auto" and launch is None and not is_initialized:
            self.device = resolve_device(device)
            return self.device
        if not dist.is_available():
            raise ValueError(
                f"strategy={self.strategy!r} needs torch.distributed, which this PyTorch "
                "build lacks."
            )
        self.kind = "fsdp" if self.strategy == "fsdp" else "ddp"
        if launch is not None:
            self.local_rank = launch["local_rank"]
            if not is_initialized and _means_any_gpu(device) and torch.cuda.is_available():
                _check_local_rank(self.local_rank)
                torch.cuda.set_device(self.local_rank)
        self.device = resolve_device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(
                f"device={device!r}: distributed training runs on CUDA (NCCL) or the CPU "
                "(gloo); pass device='cuda', 'cpu' or 'auto'."
            )
        if not is_initialized:
            self._init_process_group(launch is not None)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        return self.device

    def _init_process_group(self, is_launched: bool) -> None:
        import torch.distributed as dist

        backend = "nccl" if self.device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=self.timeout)
        device_id = self.device if backend == "nccl" else None
        if is_launched:  # torchrun's MASTER_ADDR/MASTER_PORT rendezvous
            dist.init_process_group(backend, timeout=timeout, device_id=device_id)
        else:  # a group of one, so "ddp"/"fsdp" also run (and can be tested) unlaunched
            dist.init_process_group(
                backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout,
                device_id=device_id,
            )  # fmt: skip
        self._owns_group = True
        atexit.register(self.teardown)

    def teardown(self) -> None:
        """Leave the process group this object created; runs at exit.

        After a failure NCCL is left alone: destroying it waits for the other ranks, which
        may be gone. gloo is always destroyed, or its threads can abort the exit.
        """
        import torch.distributed as dist

        if self._owns_group and dist.is_initialized():
            if not self._has_failed or dist.get_backend() == "gloo":
                dist.destroy_process_group()
                # Free the wrapped models and their group now, while Python is whole: gloo's
                # threads abort the process if the interpreter is torn down around them.
                gc.collect()
        self._owns_group = False

    def shard(self, model: nn.Module) -> Sharding:
        """`model` as this group trains it: FSDP2 shards (sharded here), DDP replicas (wrapped
        with the training step, see `Sharding.wrap_step`) or the plain module on one process."""
        self._sharding = Sharding(
            model,
            self.kind,
            self.device,
            find_unused_parameters=self.find_unused_parameters,
            shard_modules=self.shard_modules,
        )
        return self._sharding

    # --------------------------------------------------------------------------- the loop
    def agree(self, should_stop: bool, signum: int, *, is_due: bool) -> tuple[bool, int]:
        """The stop flag and preemption signal every rank acts on.

        One process acts on its own values at once. Several ranks act only at due points
        (log steps, epoch ends), where one small all-reduce makes any rank's stop request or
        signal everyone's; in between they carry on together, so no rank leaves a step that
        another still runs.
        """
        if not self.is_active:
            return should_stop, signum
        if not is_due:
            return False, 0
        import torch.distributed as dist

        flags = torch.tensor([int(should_stop), signum], device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        stop, agreed_signum = flags.tolist()
        return bool(stop), int(agreed_signum)

    def reduce_means(self, running: RunningMeans) -> dict[str, float]:
        """Weighted means over every rank's samples: sums and weights added up, then divided."""
        if not self.is_active:
            return running.means()
        import torch.distributed as dist

        totals = running.totals()
        names = sorted(set().union(*self.gather(sorted(totals))))
        if not names:
            return {}
        values = torch.zeros(len(names), 2, dtype=torch.float64, device=self.device)
        for row, name in enumerate(names):
            if name in totals:
                values[row, 0], values[row, 1] = totals[name]
        dist.all_reduce(values)
        sums = values.tolist()
        return {name: total / weight for name, (total, weight) in zip(names, sums, strict=True)}

    # ------------------------------------------------------------------------- rank helpers
    def share_seed(self, seed: int) -> int:
        """Rank 0's `seed`, on every rank."""
        if not self.is_active:
            return seed
        import torch.distributed as dist

        tensor = torch.tensor([seed], dtype=torch.int64, device=self.device)
        dist.broadcast(tensor, src=0)
        return int(tensor.item())

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order; `[value]` on one process."""
        if not self.is_active:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.is_active:
            import torch.distributed as dist

            dist.barrier()

    def run_on_zero(self, what: str, function: Callable[..., Any], *args: Any) -> None:
        """Run `function` on rank 0 only; every rank returns when it is done, or raises.

        The other ranks wait, so none goes on past a checkpoint that is not yet complete,
        and all of them fail when rank 0 fails instead of waiting for it.
        """
        self.from_zero(what, function, *args)

    def from_zero(self, what: str, function: Callable[..., Any], *args: Any) -> Any:
        """Run `function` on rank 0 only and return its (small, picklable) result on every rank.

        Every rank raises when rank 0 fails, instead of waiting for it.
        """
        result: Any = None
        error: Exception | None = None
        if self.is_global_zero:
            try:
                result = function(*args)
            except Exception as caught:
                error = caught
        if self.is_active:
            result, failed = self.gather((result, error is not None))[0]
            if error is None and failed:
                raise RuntimeError(f"rank 0 failed to {what}; its error message says why.")
        if error is not None:
            raise error
        return result

    # ------------------------------------------------------------------------------- failures
    def report_failure(self, exception: BaseException) -> None:
        """Name the rank an error came from, and tell a rank that only saw its effect so.

        The rank where the error arose also records it for torchrun, whose summary then
        shows its message.
        """
        if not self.is_active or not isinstance(exception, Exception):
            return
        self._has_failed = True
        if _is_collective_failure(exception):
            _add_note(
                exception,
                f"rank {self.rank}: a collective operation with the other ranks failed. Most "
                "likely another rank failed first (its error is printed with its rank); "
                "otherwise the ranks disagree, e.g. one ran more batches than the others.",
            )
            return
        _add_note(exception, f"raised on rank {self.rank} of {self.world_size}")
        if os.environ.get("TORCHELASTIC_ERROR_FILE"):
            from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

            with contextlib.suppress(Exception):
                ErrorHandler().record_exception(exception)


def _means_any_gpu(device: str | torch.device) -> bool:
    """`"auto"` and `"cuda"` leave the GPU to us: under torchrun each rank takes its own."""
    return str(device) in ("auto", "cuda")


def _check_local_rank(local_rank: int) -> None:
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(
            f"this is local rank {local_rank}, but the node has {count} GPU(s): start at most "
            f"{count} processes per node (torchrun --nproc-per-node {count}), or pass "
            "device='cpu'."
        )


def _add_note(exception: BaseException, note: str) -> None:
    if hasattr(exception, "add_note"):  # Python 3.11+
        exception.add_note(note)
    else:
        print(note, file=sys.stderr)


def _is_collective_failure(exception: BaseException) -> bool:
    """An error raised because a collective failed (a peer died, or a timeout)."""
    import torch.distributed as dist

    if isinstance(exception, getattr(dist, "DistError", ())):
        return True
    text = str(exception)
    markers = ("gloo", "NCCL", "Connection closed by peer", "Connection reset", "timed out")
    return isinstance(exception, RuntimeError) and any(marker in text for marker in markers)
