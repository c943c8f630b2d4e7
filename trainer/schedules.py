"""Learning-rate schedules built from torch's own schedulers, for `scheduler_interval="step"`.

`warmup_cosine` is the shape most language-model recipes use: a linear warmup, then a
cosine decay to a floor. It is torch's `LinearLR` followed by `CosineAnnealingLR` through
`SequentialLR`, so its state is torch's (plain numbers, saved in the pickle-free checkpoint
and resumed exactly) and a config names it as a scheduler `class_path` with its arguments,
the Trainer passing the optimizer.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

__all__ = ["warmup_cosine"]


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    min_lr: float = 0.0,
) -> LRScheduler:
    """A linear warmup over `warmup_steps` optimizer steps, then a cosine decay that reaches
    `min_lr` at `total_steps` (past it the rate rises again, as torch's cosine does: set
    `total_steps` to `max_steps`).

    The warmup starts at `lr / (warmup_steps + 1)`, not 0, so the first step trains: step s
    (0-based) uses `lr * (s + 1) / (warmup_steps + 1)`, and step `warmup_steps` the full
    `lr` as the cosine begins. Step it every optimizer step (`scheduler_interval="step"`).

    Args:
        optimizer: the optimizer whose groups' `lr` are the peak rates.
        warmup_steps: optimizer steps of linear warmup (0: the cosine alone).
        total_steps: optimizer steps until the rate reaches `min_lr`, warmup included
            (usually `max_steps`).
        min_lr: the floor the cosine decays to, for every parameter group.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        >>> scheduler = warmup_cosine(optimizer, warmup_steps=100, total_steps=1000)
    """
    _check(warmup_steps, total_steps, min_lr)
    decay = CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps, eta_min=min_lr)
    if warmup_steps == 0:
        return decay
    warmup = LinearLR(
        optimizer, start_factor=1.0 / (warmup_steps + 1), end_factor=1.0, total_iters=warmup_steps
    )
    return SequentialLR(optimizer, [warmup, decay], milestones=[warmup_steps])


def _check(warmup_steps: int, total_steps: int, min_lr: float) -> None:
    for name, value in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}.")
    if total_steps <= warmup_steps:
        raise ValueError(
            f"total_steps={total_steps} must exceed warmup_steps={warmup_steps}: the cosine "
            "decays over the steps after the warmup; set total_steps to max_steps."
        )
    if min_lr < 0:
        raise ValueError(f"min_lr must be >= 0, got {min_lr!r}.")
