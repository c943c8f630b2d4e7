"""`Precision`: the numeric format of a run as one object with fixed verbs.

The loop calls `autocast()`, `backward()`, `unscale()` and `step()` the same way in every
mode; "16-mixed" gets a live GradScaler and the other modes a disabled one, so the loop
never branches on precision.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal, get_args

import torch

__all__ = ["Precision", "PrecisionName"]

PrecisionName = Literal["32", "16-mixed", "bf16-mixed"]
PRECISION_CHOICES: tuple[str, ...] = get_args(PrecisionName)


class Precision:
    """Autocast, loss scaling and the optimizer step for one precision setting.

    Args:
        name: `"32"` (full precision), `"16-mixed"` (float16 autocast with a GradScaler)
            or `"bf16-mixed"` (bfloat16 autocast, no scaling needed).
        device: where the run computes; autocast is set up for its type.
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
        self._dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(name)
        self.scaler = torch.amp.GradScaler(device.type, enabled=name == "16-mixed")

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context the forward pass and loss run in."""
        if self._dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate `loss`, scaled first when a GradScaler is live."""
        self.scaler.scale(loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true size before clipping or inspection."""
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Step the optimizer; return False when the scaler skipped it for inf/nan gradients."""
        if not self.scaler.is_enabled():
            optimizer.step()
            return True
        scale_before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale_before

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state (empty when no scaler is live)."""
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the scaler from `state_dict()` output."""
        if state:
            self.scaler.load_state_dict(state)
