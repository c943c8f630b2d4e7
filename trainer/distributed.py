"""Running one job on several processes: the torchrun environment, the process group's set-up
and teardown, the DDP or FSDP2 wrap, `no_sync` for accumulation, rank-zero helpers, metric
reduction, and the decisions every rank must share.

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
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from trainer.checkpoint import load_model_weights
from trainer.device import resolve_device
from trainer.metrics import RunningMeans
from trainer.sampling import (
    ResumableSampler,
    make_resumable,
    why_not_resumable,
)
from trainer.sampling import shard_for_evaluation as _evaluation_share

__all__ = ["STRATEGIES", "Distributed", "StrategyName", "launch_environment"]

StrategyName = Literal["auto", "ddp", "fsdp"]
STRATEGIES: tuple[str, ...] = get_args(StrategyName)
_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_NO_CONTEXT = contextlib.nullcontext()


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
        self.kind: Literal["single", "ddp", "fsdp"] = "single"
        self.rank, self.world_size, self.local_rank = 0, 1, 0
        self.device = torch.device("cpu")
        self._owns_group = False
        self._has_failed = False
        self._ddp: nn.Module | None = None
        self._fsdp_root: Any = None
        self._gradient_sync: bool | None = None

    # ----------------------------------------------------------------------------- set-up
    @property
    def is_active(self) -> bool:
        """True when this run uses a process group (even one of a single rank)."""
        return self.kind != "single"

    @property
    def ddp(self) -> nn.Module | None:
        """The DDP module the training step runs through (None without DDP), for instance
        to register a communication hook such as fp16 gradient compression."""
        return self._ddp

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

    def prepare_model(self, model: nn.Module) -> None:
        """FSDP: start every rank from rank 0's weights, then shard the model in place."""
        if self.kind != "fsdp":
            return
        import torch.distributed as dist
        from torch.distributed.fsdp import FSDPModule, fully_shard

        self._fsdp_root, self._gradient_sync = model, None
        if isinstance(model, FSDPModule):  # the user sharded it already
            return
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor, src=0)
        for module in reversed(list(model.modules())):  # inner units first, as FSDP2 expects
            if module is not model and self._is_shard_unit(module):
                fully_shard(module)
        fully_shard(model)

    def _is_shard_unit(self, module: nn.Module) -> bool:
        return any(
            type(module).__name__ == unit if isinstance(unit, str) else isinstance(module, unit)
            for unit in self.shard_modules
        )

    def check_optimizer(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """FSDP replaces the parameters: an optimizer built before sharding would train none."""
        if self.kind != "fsdp":
            return
        current = {id(parameter) for parameter in model.parameters()}
        if not any(id(p) in current for group in optimizer.param_groups for p in group["params"]):
            raise ValueError(
                "strategy='fsdp' shards the model's parameters, so an optimizer built from "
                "them beforehand holds none of the sharded ones. Pass the optimizer as a "
                "callable, e.g. optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3) "
                "(a config's optimizer: section already is one), or configure_optimizers()."
            )

    def wrap_step(
        self, model: nn.Module, step: Callable[[Any, int], Any]
    ) -> Callable[[Any, int], Any]:
        """DDP: the training step as the forward of a DDP module, so its hooks sync gradients.

        Wrapping the step rather than the model keeps `trainer.model` the user's own module,
        while any use of it inside `training_step` takes part in the gradient all-reduce.
        """
        if self.kind != "ddp":
            return step
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self._ddp = DistributedDataParallel(
            _TrainingStep(model, step),
            device_ids=device_ids,
            find_unused_parameters=self.find_unused_parameters,
        )
        return self._ddp

    # --------------------------------------------------------------------------- the loop
    def no_sync(self, is_boundary: bool) -> contextlib.AbstractContextManager[Any]:
        """Skip the gradient all-reduce on micro-steps that do not end an accumulation window."""
        if self._ddp is not None and not is_boundary:
            return self._ddp.no_sync()  # type: ignore[operator]
        if self._fsdp_root is not None and self._gradient_sync is not is_boundary:
            self._fsdp_root.set_requires_gradient_sync(is_boundary)
            self._gradient_sync = is_boundary
        return _NO_CONTEXT

    def sync_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """DDP, for a step that owns its update: average `optimizer`'s gradients over the
        ranks in one all-reduce (a parameter without a gradient takes part with zeros)."""
        if self.kind != "ddp" or not self.is_active:
            return
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        for parameter in parameters:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        grads = [parameter.grad for parameter in parameters]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.world_size
        for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
            grad.copy_(synced)

    def contribute_no_gradient(self, model: nn.Module) -> None:
        """A rank that leaves its batch out still takes part in the all-reduce, with zeros.

        On one process there is nothing to take part in. Under DDP, a backward pass through
        every parameter times zero fires DDP's hooks, so the other ranks' gradients are
        averaged as usual and this rank's batch counts as a zero gradient.
        """
        if self._ddp is None:
            return
        parameters = [p for p in model.parameters() if p.requires_grad]
        torch.stack([p.sum() for p in parameters]).sum().mul(0.0).backward()

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

    def shard_training_loader(
        self, loader: Any, pin_memory: bool = False
    ) -> tuple[Any, ResumableSampler | None]:
        """A plain DataLoader made resumable and, on several ranks, split between them."""
        reason = why_not_resumable(loader)
        if reason is None:
            return make_resumable(
                loader,
                num_replicas=self.world_size,
                rank=self.rank,
                share_seed=self.share_seed,
                pin_memory=pin_memory,
            )
        sampler = getattr(loader, "sampler", None)
        if self.world_size > 1 and not hasattr(sampler, "num_replicas") and self.is_global_zero:
            warnings.warn(
                f"the train_loader is not split between the {self.world_size} ranks ({reason}), "
                "so each rank trains on the same data: give it a DistributedSampler, or pass "
                "a plain DataLoader and the trainer splits it.",
                stacklevel=4,
            )
        return loader, None

    def shard_for_evaluation(self, loader: Any) -> Any:
        """DDP: this rank's share of an evaluation loader, without padding.

        FSDP runs collectives in every forward, so there each rank evaluates the whole
        loader (same count of forwards everywhere; averages stay exact).
        """
        if self.kind != "ddp":
            return loader
        return _evaluation_share(loader, self.world_size, self.rank)

    def check_loader_length(self, length: int | None, accumulate_grad_batches: int) -> None:
        """Refuse ranks with different numbers of batches: DDP would wait for the missing one."""
        if not self.is_active:
            return
        lengths = self.gather(length)
        if len(set(lengths)) > 1:
            listed = ", ".join(f"rank {rank}: {count}" for rank, count in enumerate(lengths))
            raise ValueError(
                f"the ranks disagree on the number of training batches per epoch ({listed}); "
                "each rank must run the same number of steps, or the others would wait for it "
                "forever. Pass a plain DataLoader and the trainer splits it evenly, or use a "
                "DistributedSampler."
            )
        if length is None and accumulate_grad_batches > 1:
            raise ValueError(
                "accumulate_grad_batches > 1 on several ranks needs a train_loader with a "
                "length, so every rank knows where the last accumulation window ends."
            )

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
        error: Exception | None = None
        if self.is_global_zero:
            try:
                function(*args)
            except Exception as caught:
                error = caught
        if self.is_active:
            import torch.distributed as dist

            failed = torch.tensor([int(error is not None)], device=self.device)
            dist.broadcast(failed, src=0)
            if error is None and failed.item():
                raise RuntimeError(f"rank 0 failed to {what}; its error message says why.")
        if error is not None:
            raise error

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

    # --------------------------------------------------------------------------- state dicts
    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The whole model's weights (FSDP: gathered to rank 0 on the CPU; empty elsewhere)."""
        if self.kind != "fsdp":
            return model.state_dict()
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model, options=_full_state_options(cpu_offload=True))

    def optimizer_state_dict(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> dict[str, Any]:
        """The optimizer's state; FSDP: whole, keyed by parameter name, on rank 0."""
        if self.kind != "fsdp":
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(
            model, optimizer, options=_full_state_options(cpu_offload=True)
        )

    def load_model_state(
        self, model: nn.Module, weights: dict[str, torch.Tensor], source: Path | str
    ) -> None:
        """Load whole weights, checked by name and shape; FSDP keeps only this rank's shard."""
        if self.kind != "fsdp":
            load_model_weights(model, weights, source)
            return
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        load_model_weights(
            model,
            weights,
            source,
            load=lambda checked: set_model_state_dict(
                model, checked, options=_full_state_options()
            ),
        )

    def load_optimizer_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None:
        """Load an optimizer state saved by any strategy on any number of ranks."""
        by_name = _is_keyed_by_name(state)
        if self.kind != "fsdp":
            optimizer.load_state_dict(_by_index(state, model, optimizer) if by_name else state)
            return
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        state = state if by_name else _by_name(state, model, optimizer)
        set_optimizer_state_dict(model, optimizer, state, options=_full_state_options())

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


class _TrainingStep(nn.Module):
    """The trainer's training step as a module's forward, for DDP to wrap."""

    def __init__(self, model: nn.Module, step: Callable[[Any, int], Any]) -> None:
        super().__init__()
        self.model = model
        self.step = step

    def forward(self, batch: Any, batch_idx: int) -> Any:
        return self.step(batch, batch_idx)


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


def _full_state_options(cpu_offload: bool = False) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)


def _is_keyed_by_name(state: Mapping[str, Any]) -> bool:
    groups = state.get("param_groups") or [{}]
    return any(isinstance(key, str) for key in state.get("state", {})) or any(
        isinstance(p, str) for p in groups[0].get("params", [])
    )


def _parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each parameter in the optimizer's order (its state-dict index)."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _by_name(
    state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    names = _parameter_names(model, optimizer)
    return {
        "state": {names[int(index)]: value for index, value in state["state"].items()},
        "param_groups": [
            group | {"params": [names[int(i)] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }


def _by_index(
    state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    index = {name: i for i, name in enumerate(_parameter_names(model, optimizer))}
    return {
        "state": {index[name]: value for name, value in state["state"].items()},
        "param_groups": [
            group | {"params": [index[name] for name in group["params"]]}
            for group in state["param_groups"]
        ],
    }


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
