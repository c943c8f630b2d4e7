"""The model as every rank trains it: DDP replicas or FSDP2 shards, gradient sync (`no_sync`
on accumulation micro-steps, the all-reduce for a step that owns its update), and state dicts
with the plain model's keys, whole under FSDP.

`Sharding` is built once per run by `Distributed.shard` and reached only through its verbs.
On one process every verb is the identity or does nothing, so the loop has a single path.
The user's module is never replaced: `trainer.model` stays it, and its state-dict keys are
its own under every strategy.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from trainer.checkpoint import load_model_weights

__all__ = ["Sharding", "ShardingKind", "run_as_ddp_forward"]

ShardingKind = Literal["single", "ddp", "fsdp"]
_NO_CONTEXT = contextlib.nullcontext()


class Sharding:
    """How `model` is spread over the ranks of the process group, and what follows from it.

    Args:
        model: the user's module, already on its device (and compiled, if asked).
        kind: `"single"` (one plain process), `"ddp"` or `"fsdp"`.
        device: this rank's device.
        find_unused_parameters: DDP's option for steps that leave some parameters unused.
        shard_modules: FSDP: submodule classes (or class names) sharded as units of their own.

    Under FSDP the model is sharded in place here, after every rank took rank 0's weights.
    """

    def __init__(
        self,
        model: nn.Module,
        kind: ShardingKind,
        device: torch.device,
        *,
        find_unused_parameters: bool = False,
        shard_modules: Iterable[type[nn.Module] | str] = (),
    ) -> None:
        self.model, self.kind, self.device = model, kind, device
        self.find_unused_parameters = find_unused_parameters
        self.shard_modules = tuple(shard_modules)
        self._ddp: nn.Module | None = None
        self._gradient_sync: bool | None = None  # FSDP: what it was last told
        if kind == "fsdp":
            self._shard()

    @property
    def ddp(self) -> nn.Module | None:
        """The DDP module whose gradient hooks sync the training step (None without DDP), for
        instance to register a communication hook such as fp16 gradient compression."""
        return self._ddp

    # --------------------------------------------------------------------------- wrapping
    def _shard(self) -> None:
        """FSDP: start every rank from rank 0's weights, then shard the model in place."""
        import torch.distributed as dist
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if isinstance(self.model, FSDPModule):  # the user sharded it already
            return
        with torch.no_grad():
            for tensor in [*self.model.parameters(), *self.model.buffers()]:
                dist.broadcast(tensor, src=0)
        for module in reversed(list(self.model.modules())):  # inner units first, as FSDP2 expects
            if module is not self.model and self._is_shard_unit(module):
                fully_shard(module)
        fully_shard(self.model)

    def _is_shard_unit(self, module: nn.Module) -> bool:
        return any(
            type(module).__name__ == unit if isinstance(unit, str) else isinstance(module, unit)
            for unit in self.shard_modules
        )

    def wrap_step(self, step: Callable[[Any, int], Any]) -> Callable[[Any, int], Any]:
        """DDP: `step` run as the forward of a DDP module over the model, so its gradients sync.

        Whatever the step calls (the whole model, or only submodules, as a GAN does) takes
        part in DDP's bucketed all-reduce, overlapped with the backward pass. The step is
        called directly between DDP's own before- and after-forward work, one frame deep.
        """
        if self.kind != "ddp":
            return step
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self._ddp = DistributedDataParallel(
            self.model, device_ids=device_ids, find_unused_parameters=self.find_unused_parameters
        )
        return functools.partial(run_as_ddp_forward, self._ddp, step)

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """FSDP replaces the parameters: an optimizer built before sharding would train none."""
        if self.kind != "fsdp":
            return
        current = {id(parameter) for parameter in self.model.parameters()}
        if not any(id(p) in current for group in optimizer.param_groups for p in group["params"]):
            raise ValueError(
                "strategy='fsdp' shards the model's parameters, so an optimizer built from "
                "them beforehand holds none of the sharded ones. Pass the optimizer as a "
                "callable, e.g. optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3) "
                "(a config's optimizer: section already is one), or configure_optimizers()."
            )

    def without_autograd(self) -> contextlib.AbstractContextManager[Any]:
        """Evaluation's context: `inference_mode`, or `no_grad` under FSDP, whose first forward
        keeps the gathered parameters it builds; made in inference mode, training's backward
        could not use them (a sanity pass or `validate()` before `fit()` runs that forward)."""
        return torch.no_grad() if self.kind == "fsdp" else torch.inference_mode()

    # ----------------------------------------------------------------------- gradient sync
    def no_sync(self, is_boundary: bool) -> contextlib.AbstractContextManager[Any]:
        """Skip the gradient all-reduce on micro-steps that do not end an accumulation window."""
        if self._ddp is not None and not is_boundary:
            return self._ddp.no_sync()  # type: ignore[operator]
        if self.kind == "fsdp" and self._gradient_sync is not is_boundary:
            self.model.set_requires_gradient_sync(is_boundary)  # type: ignore[operator]
            self._gradient_sync = is_boundary
        return _NO_CONTEXT

    def sync_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """DDP, for a step that owns its update: average `optimizer`'s gradients over the
        ranks in one all-reduce (a parameter without a gradient takes part with zeros).

        Such a step runs several backward passes per batch, which DDP's reducer (one
        backward per forward) cannot follow, so the sync happens here, once per update.
        """
        if self.kind != "ddp":
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
        flat /= dist.get_world_size()
        for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
            grad.copy_(synced)

    def contribute_no_gradient(self) -> None:
        """A rank that leaves its batch out still takes part in the all-reduce, with zeros.

        On one process there is nothing to take part in. Under DDP, a backward pass through
        every parameter times zero fires DDP's hooks, so the other ranks' gradients are
        averaged as usual and this rank's batch counts as a zero gradient.
        """
        if self._ddp is None:
            return
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        torch.stack([p.sum() for p in parameters]).sum().mul(0.0).backward()

    # --------------------------------------------------------------------------- state dicts
    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights (FSDP: gathered to rank 0 on the CPU; empty elsewhere)."""
        if self.kind != "fsdp":
            return self.model.state_dict()
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.model, options=_full_state_options(cpu_offload=True))

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's state; FSDP: whole, keyed by parameter name, on rank 0."""
        if self.kind != "fsdp":
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(
            self.model, optimizer, options=_full_state_options(cpu_offload=True)
        )

    def load_model_state(self, weights: dict[str, torch.Tensor], source: Path | str) -> None:
        """Load whole weights, checked by name and shape; FSDP keeps only this rank's shard."""
        if self.kind != "fsdp":
            load_model_weights(self.model, weights, source)
            return
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        load_model_weights(
            self.model,
            weights,
            source,
            load=lambda checked: set_model_state_dict(
                self.model, checked, options=_full_state_options()
            ),
        )

    def load_optimizer_state(
        self, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None:
        """Load an optimizer state saved by any strategy on any number of ranks."""
        by_name = _is_keyed_by_name(state)
        if self.kind != "fsdp":
            optimizer.load_state_dict(_by_index(state, self.model, optimizer) if by_name else state)
            return
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        state = state if by_name else _by_name(state, self.model, optimizer)
        set_optimizer_state_dict(self.model, optimizer, state, options=_full_state_options())


def run_as_ddp_forward(ddp: nn.Module, step: Callable[[Any, int], Any], *args: Any) -> Any:
    """`step(*args)` as if it were `ddp`'s forward, without passing through any module call.

    `DistributedDataParallel.forward` is these three parts around `self.module(...)`; here
    the step stands in for the module, so any step syncs, and the stack from `fit` to
    `training_step` gains one frame instead of seven. The parts are private to torch (its
    own `torch.distributed._composable.replicate` calls `_pre_forward` and `_post_forward`
    the same way from module hooks); tests/test_sharding.py fails loudly if they change.
    """
    with torch.autograd.profiler.record_function("DistributedDataParallel.forward"):
        args, kwargs = ddp._pre_forward(*args)  # type: ignore[operator]  # buckets, buffers
        with ddp._inside_ddp_forward():  # type: ignore[operator]  # torch.compile's DDP graph split
            outputs = step(*args, **kwargs)
        return ddp._post_forward(outputs)  # type: ignore[operator]  # arms the backward hooks


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
