"""`Precision`: the numeric format of a run as one object with fixed verbs.

The loop calls `convert_module()` once, then `autocast()`, `backward()`, `unscale()`,
`step()` and `update()` the same way in every mode, and moves floating-point inputs to
`input_dtype`; "16-mixed" gets a live GradScaler and the other modes a disabled one, so the
loop never branches on precision (the scaler is read by nothing outside this module).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal, get_args

import torch
from torch import nn

__all__ = ["Precision", "PrecisionName"]

PrecisionName = Literal["32", "16-mixed", "bf16-mixed", "bf16-true"]
PRECISION_CHOICES: tuple[str, ...] = get_args(PrecisionName)


class Precision:
    """Autocast, loss scaling, weight format and the optimizer step for one precision setting.

    Args:
        name: `"32"` (full precision), `"16-mixed"` (float16 autocast with a GradScaler),
            `"bf16-mixed"` (bfloat16 autocast over float32 weights, no scaling needed) or
            `"bf16-true"` (weights, inputs and activations in bfloat16: half the memory,
            less exact updates).
        device: where the run computes; autocast is set up for its type.

    Example:
        >>> precision = Precision("16-mixed", torch.device("cuda"))
        >>> with precision.autocast():
        ...     loss = loss_fn(model(inputs), targets)
        >>> precision.backward(loss)
        >>> precision.unscale(optimizer)      # before clipping or reading gradients
        >>> stepped = precision.step(optimizer)  # False: skipped for inf/nan gradients
        >>> precision.update()                # once the batch's optimizers have stepped
    """

    def __init__(self, name: str, device: torch.device) -> None:
        name = str(name)
        if name not in PRECISION_CHOICES:
            raise ValueError(
                f"precision={name!r} is not supported; use one of "
                f"{', '.join(repr(choice) for choice in PRECISION_CHOICES)}."
            )
        self.name = name
        self.device = device
        self._autocast_dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(name)
        # Floating-point batch tensors are cast to this on their way to the device.
        self.input_dtype: torch.dtype | None = torch.bfloat16 if name == "bf16-true" else None
        self.scaler = torch.amp.GradScaler(device.type, enabled=name == "16-mixed")
        self._is_scaling = self.scaler.is_enabled()  # read every step: a plain attribute
        self._no_autocast = contextlib.nullcontext()  # reusable, unlike torch.autocast
        self._watched: set[int] = set()
        self._has_stepped = False
        self._is_update_due = False

    def convert_module(self, model: nn.Module) -> nn.Module:
        """Put the weights in this mode's format ("bf16-true": bfloat16; others: unchanged).

        Parameters are converted in place, so an optimizer built on them still holds them.
        """
        if self.input_dtype is not None:
            model.to(dtype=self.input_dtype)
        return model

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context the forward pass and loss run in."""
        if self._autocast_dtype is not None:
            return torch.autocast(self.device.type, dtype=self._autocast_dtype)
        if self.input_dtype is not None:
            return _default_dtype(self.input_dtype)
        return self._no_autocast

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate `loss`, scaled first when a GradScaler is live."""
        if self._is_scaling:
            loss = self.scaler.scale(loss)
        loss.backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true size before clipping or inspection."""
        if self._is_scaling:
            self.scaler.unscale_(optimizer)

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        closure: Callable[[], torch.Tensor] | None = None,
    ) -> bool:
        """Step the optimizer; return False when the scaler skipped it for inf/nan gradients.

        The loss scale stays as it is until `update()`, which the caller runs once the
        batch's optimizers have all stepped: each must unscale by the scale its gradients
        were made with. `closure` (LBFGS and the like) recomputes the loss; a live
        GradScaler cannot step through one, so "16-mixed" refuses it.
        """
        if closure is not None:
            if self._is_scaling:
                raise ValueError(
                    "a closure optimizer (LBFGS, ...) cannot step through the GradScaler of "
                    "precision='16-mixed'; use precision='32' or 'bf16-mixed'."
                )
            optimizer.step(closure)
            return True
        if not self._is_scaling:
            optimizer.step()
            return True
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            # Fused optimizers always run and skip on the device; only the scale tells.
            scale_before = self.scaler.get_scale()
            self.scaler.step(optimizer)
            self.scaler.update()
            return self.scaler.get_scale() >= scale_before
        if id(optimizer) not in self._watched:
            # A post-step hook says whether optimizer.step() ran, without reading the scale
            # back from the device (a second host sync per step on CUDA).
            optimizer.register_step_post_hook(self._note_step)
            self._watched.add(id(optimizer))
        self._has_stepped = False
        self.scaler.step(optimizer)
        self._is_update_due = True
        return self._has_stepped

    def update(self) -> None:
        """Adjust the loss scale once the batch's optimizers have stepped (no-op otherwise)."""
        if self._is_update_due:
            self.scaler.update()
            self._is_update_due = False

    def _note_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._has_stepped = True

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state (empty when no scaler is live)."""
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the scaler from `state_dict()` output."""
        if state:
            self.scaler.load_state_dict(state)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Tensors a forward pass creates (masks, positions, zeros) match bfloat16 weights."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
