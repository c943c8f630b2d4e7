"""`LearningRateMonitor`: log momentum and weight decay of every param group.

The trainer already logs `lr` (or `lr/groupN`) by default; this callback adds the other
optimizer settings schedulers change, such as the momentum a one-cycle policy cycles.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from trainer.callbacks.base import Callback

if TYPE_CHECKING:
    from trainer.trainer import Trainer

__all__ = ["LearningRateMonitor"]


class LearningRateMonitor(Callback):
    """Log `momentum` and `weight_decay` per param group at every optimizer step.

    Args:
        log_momentum: log `momentum` (SGD) or the first Adam beta.
        log_weight_decay: log `weight_decay`.

    Names follow `lr`: `momentum` for one param group, `momentum/group0`, ... for several.
    """

    def __init__(self, log_momentum: bool = True, log_weight_decay: bool = False) -> None:
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay

    def on_before_optimizer_step(
        self, trainer: Trainer, optimizer: torch.optim.Optimizer
    ) -> None:
        """Record the settings the coming step uses."""
        groups = optimizer.param_groups
        for index, group in enumerate(groups):
            suffix = f"/group{index}" if len(groups) > 1 else ""
            momentum = group.get("momentum", group.get("betas", (None,))[0])
            if self.log_momentum and momentum is not None:
                trainer.log(f"momentum{suffix}", float(momentum))
            if self.log_weight_decay and "weight_decay" in group:
                trainer.log(f"weight_decay{suffix}", float(group["weight_decay"]))
