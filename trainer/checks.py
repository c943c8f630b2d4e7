"""Checks of what a user hands the `Trainer`: its constructor arguments, what
`configure_optimizers` returns, what the steps take and return, and whether the loss is finite.

Each check returns the value in the form the loop uses, or raises with a message that names
the argument, the value received and the fix, so a mistake fails in the constructor or at
the first batch instead of deep inside torch.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from torch import nn

from trainer.data_position import length_or_none
from trainer.distributed import Distributed
from trainer.state import TrainState

if TYPE_CHECKING:
    from trainer.trainer import Trainer

__all__ = [
    "NAN_POLICIES",
    "NanPolicy",
    "as_distributed",
    "as_eval_outputs",
    "as_step_outputs",
    "check_loader",
    "check_loop_arguments",
    "check_loss_fn",
    "check_optimization_mode",
    "check_positive_int",
    "check_val_loader",
    "compile_options",
    "inputs_and_targets",
    "is_finite_or_skipped",
    "non_finite_loss_message",
    "split_optimization",
]

NanPolicy = Literal["raise", "skip"]
NAN_POLICIES: tuple[str, ...] = get_args(NanPolicy)


# ------------------------------------------------------------------------ constructor arguments
def check_loop_arguments(
    model: Any,
    max_epochs: int | None,
    max_steps: int | None,
    accumulate_grad_batches: int,
    log_every_n_steps: int,
    gradient_clip_val: float | None,
    nan_policy: str,
) -> None:
    """The model, when to stop, how to step and what a NaN loss does: each of the right kind."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if max_epochs is None and max_steps is None:
        raise ValueError("set max_epochs or max_steps (or both) so the run knows when to stop.")
    for name, value in (("max_epochs", max_epochs), ("max_steps", max_steps)):
        if value is not None:
            check_positive_int(name, value)
    check_positive_int("accumulate_grad_batches", accumulate_grad_batches)
    check_positive_int("log_every_n_steps", log_every_n_steps)
    if gradient_clip_val is not None and not gradient_clip_val > 0:
        raise ValueError(f"gradient_clip_val must be > 0 or None, got {gradient_clip_val}.")
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy={nan_policy!r} is not supported; use 'raise' or 'skip'.")


def check_positive_int(name: str, value: Any) -> None:
    """`value` is an int of at least 1 (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def check_loader(loader: Iterable[Any] | None, name: str) -> Iterable[Any] | None:
    """`loader` is None or an iterable of batches that is not known to be empty."""
    if loader is None:
        return None
    if not isinstance(loader, Iterable):
        raise TypeError(f"{name} must be an iterable of batches (a DataLoader), got "
                        f"{type(loader).__name__}.")
    if length_or_none(loader) == 0:
        raise ValueError(
            f"{name} is empty (0 batches); check its data set is not empty and that "
            "batch_size with drop_last=True does not exceed the data set's length."
        )
    return loader


def check_val_loader(loader: Any, name: str = "val_loader") -> Any:
    """`loader` is None, one loader, or a non-empty dict of loaders named by plain strings.

    A name becomes part of every figure of its loader (`val/<name>/loss`), so it is a
    non-empty string without `/`.
    """
    if not isinstance(loader, Mapping):
        return check_loader(loader, name)
    if not loader:
        raise ValueError(
            f"{name} is an empty dict; pass one loader, or a dict of named loaders such as "
            f"{name}={{'clean': clean_dl, 'noisy': noisy_dl}}, or None for no validation."
        )
    for key, value in loader.items():
        if not isinstance(key, str) or not key or "/" in key:
            raise ValueError(
                f"{name} names its loaders by strings without '/', got {key!r}; its figures "
                f"are named '<stage>/<loader name>/<figure>', e.g. {name}={{'clean': clean_dl}}."
            )
        check_loader(value, f"{name}[{key!r}]")
    return dict(loader)


def check_loss_fn(loss_fn: Any, uses_default_steps: bool) -> None:
    """The default training and validation steps need a `loss_fn`."""
    if loss_fn is None and uses_default_steps:
        raise ValueError(
            "loss_fn is missing: the default training_step / validation_step call "
            "loss_fn(outputs, targets). Pass loss_fn=nn.CrossEntropyLoss() (or similar), "
            "or override training_step and validation_step in a subclass."
        )


def compile_options(compile: Any) -> dict[str, Any]:
    """The keywords for `torch.compile` that `compile=True` or `compile={...}` asks for."""
    if compile is True or isinstance(compile, dict):
        return compile if isinstance(compile, dict) else {}
    raise TypeError(
        f"compile must be True, False or a dict of torch.compile options such as "
        f"{{'mode': 'max-autotune'}}, got {type(compile).__name__} {compile!r}."
    )


def as_distributed(strategy: str | Distributed, nan_policy: str) -> Distributed:
    """The run's own `Distributed` for `strategy`, a name or an instance."""
    if isinstance(strategy, str):
        strategy = Distributed(strategy)
    elif isinstance(strategy, Distributed):
        strategy = copy.copy(strategy)  # its own wrapped model: one object may serve two runs
    else:
        raise TypeError(
            f"strategy must be 'auto', 'ddp', 'fsdp' or a trainer.distributed.Distributed, "
            f"got {type(strategy).__name__}."
        )
    if strategy.strategy == "fsdp" and nan_policy == "skip":
        raise ValueError(
            "nan_policy='skip' does not work with strategy='fsdp': a rank that leaves its batch "
            "out cannot take part in FSDP's gradient reduce-scatter. Use nan_policy='raise', "
            "or strategy='ddp'."
        )
    return strategy


# ------------------------------------------------------------------- what the user's code returns
def split_optimization(configured: Any) -> tuple[Any, Any]:
    """`(optimizers, schedulers)` from what `configure_optimizers` returned: an optimizer, a
    list or dict of them, or a pair of those and their scheduler(s)."""
    if isinstance(configured, (tuple, list)) and not all(
        isinstance(item, torch.optim.Optimizer) for item in configured
    ):
        if len(configured) != 2:
            raise ValueError(
                "configure_optimizers must return an optimizer (or a list or dict of them), "
                "or (optimizers, schedulers)."
            )
        return configured[0], configured[1]
    return configured, None


def check_optimization_mode(trainer: Trainer) -> None:
    """Several optimizers need a step that owns the update, which some settings cannot serve."""
    count = len(trainer.optimizers)
    if trainer.automatic_optimization and count != 1:
        raise ValueError(
            f"{count} optimizers, but the loop steps one: set automatic_optimization = False "
            "in your Trainer subclass and step each with self.step(optimizer) in "
            "training_step (see docs/research.md)."
        )
    if not trainer.automatic_optimization and trainer.nan_policy == "skip":
        raise ValueError(
            "nan_policy='skip' leaves a batch's loss out of the backward pass, which a step "
            "that owns the update runs itself; check the loss in training_step instead."
        )
    if not trainer.automatic_optimization and trainer.distributed.kind == "fsdp":
        raise ValueError(
            "automatic_optimization = False is not supported with strategy='fsdp'; use "
            "'ddp', or one optimizer with the loop's update."
        )


def inputs_and_targets(batch: Any, step_name: str) -> tuple[Any, Any]:
    """The two halves of an `(inputs, targets)` batch, which the default steps expect."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    shape = f"a {type(batch).__name__}"
    if isinstance(batch, (tuple, list)):
        shape += f" of {len(batch)} items"
    raise TypeError(
        f"the default {step_name} expects each batch to be (inputs, targets), got {shape}. "
        f"Override {step_name}(self, batch, batch_idx) in a Trainer subclass to unpack your "
        "batches and return the loss."
    )


def as_step_outputs(outputs: Any, owns_update: bool = False) -> dict[str, Any]:
    """Check a training step's result and return it as a dict holding `"loss"`.

    A step that `owns_update` (manual optimization) has done its own backward passes: it may
    return None, or a loss that no longer needs grad.
    """
    if owns_update:
        if outputs is None:
            return {}
        outputs = dict(outputs) if isinstance(outputs, Mapping) else {"loss": outputs}
        return _with_checked_items(outputs) if "num_items" in outputs else outputs
    if isinstance(outputs, torch.Tensor):
        outputs = {"loss": outputs}
    elif outputs is None:
        raise ValueError(
            "training_step returned None; return the loss tensor or a dict with 'loss'."
        )
    elif isinstance(outputs, Mapping):
        if "loss" not in outputs:
            raise ValueError(
                f"training_step returned a dict without 'loss' (keys: {sorted(outputs)}); "
                "put the tensor to minimise under 'loss'."
            )
        outputs = dict(outputs)
    else:
        outputs = {"loss": outputs}
    loss = outputs["loss"]
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"the loss must be a tensor, got {type(loss).__name__}.")
    if loss.numel() != 1:
        raise ValueError(
            f"the loss must be a scalar tensor, got shape {tuple(loss.shape)}; did you forget "
            ".mean()? (or reduction='mean' in the loss function)"
        )
    if not loss.requires_grad:
        raise ValueError(
            "the loss does not require grad: it was computed without autograd (under "
            "torch.no_grad(), from detached tensors, or from a model whose parameters are "
            "all frozen)."
        )
    return _with_checked_items(outputs) if "num_items" in outputs else outputs


def _with_checked_items(outputs: dict[str, Any]) -> dict[str, Any]:
    """`outputs` with its `num_items`, if any, checked: a positive int or a 0-d tensor (kept
    on its device, detached; its value is not read, which would cost a host sync)."""
    items = outputs.get("num_items")
    if items is None:
        return outputs
    if isinstance(items, torch.Tensor):
        if items.numel() != 1 or items.is_complex() or items.dtype == torch.bool:
            raise ValueError(
                f"training_step returned num_items as a {items.dtype} tensor of shape "
                f"{tuple(items.shape)}; return the count of items the loss averages as an "
                "int or a 0-d tensor, e.g. mask.sum()."
            )
        outputs["num_items"] = items.detach().reshape(())
    elif isinstance(items, bool) or not isinstance(items, int) or items <= 0:
        raise ValueError(
            f"training_step returned num_items={items!r}; it must be the count of items the "
            "loss averages (tokens, samples): a positive int or a 0-d tensor."
        )
    return outputs


def as_eval_outputs(outputs: Any, stage: str) -> Mapping[str, Any]:
    """A validation or test step's result as a mapping of names to figures (None: none)."""
    if outputs is None:
        return {}
    if isinstance(outputs, torch.Tensor):
        return {"loss": outputs}
    if not isinstance(outputs, Mapping):
        raise TypeError(
            f"{stage}_step must return a loss tensor, a dict of scalar tensors or None, "
            f"got {type(outputs).__name__}."
        )
    return outputs


def is_finite_or_skipped(loss: torch.Tensor, state: TrainState) -> bool:
    """True for a finite loss; a NaN/inf one is counted as skipped (with a warning at first)."""
    loss = loss.detach()
    if bool(torch.isfinite(loss)):
        return True
    if not state.skipped_batches:
        warnings.warn(
            f"skipping a batch with a non-finite loss ({loss.item()}) at optimizer step "
            f"{state.global_step} (nan_policy='skip'); trainer.state.skipped_batches "
            "counts them.",
            stacklevel=2,
        )
    state.skipped_batches += 1
    return False


def non_finite_loss_message(loss: float, state: TrainState, last_finite_step: int) -> str:
    """Where the loss became NaN/inf, and what to look at."""
    return (
        f"the training loss is {loss} at optimizer step {state.global_step} (epoch "
        f"{state.epoch}); it was finite up to step {last_finite_step}. Look at the "
        "learning rate (too high diverges), the data (NaN or inf inputs?) and the loss "
        "(log of 0, division by 0). log_every_n_steps=1 finds the exact step; "
        "nan_policy='skip' skips such batches. Checkpoints saved so far are intact."
    )
