"""Gradient accumulation that equals the big batch: each micro-batch weighed by its items.

A training step's loss is a mean over its items: its samples, or the `num_items` it reports
(tokens that are not padding, say). Averaging the micro-batches' means, as dividing each
loss by the window does, weighs a short last batch or a sequence of few tokens as much as a
full one. `WindowItems` keeps the window's counts instead: micro-batch i is backpropagated
times `n_i / n_ref` (before the division by the window), `n_ref` being the window's first
count, and at the window's end the gradients are multiplied by `n_ref * window / sum(n)`,
which makes them the gradient of the mean over every item of the window. When the counts
are equal every ratio is exactly 1 and nothing is multiplied, so the arithmetic stays that
of a loop dividing each loss by the window, to the bit. Under DDP (or FSDP), where the
ranks' gradients are averaged, a reported count is all-reduced: `n_ref` is the largest
first count over the ranks and `sum(n)` covers every rank, so the factor becomes
`ranks * n_ref * window / sum(n)`; both are tiny all-reduces on the device, no host sync.
"""

from __future__ import annotations

from typing import TypeAlias

import torch

__all__ = ["Count", "WindowItems"]

Count: TypeAlias = "int | torch.Tensor"


class WindowItems:
    """The item counts of the accumulation window in flight, and the factors they give.

    Args:
        window: micro-batches per optimizer step (`accumulate_grad_batches`).
        world_size: the ranks whose gradients are averaged (1 on one process).
        device: where a shared count is all-reduced (this rank's device).
    """

    def __init__(self, window: int, world_size: int = 1, device: torch.device | None = None):
        self.window, self.world_size, self.device = window, world_size, device
        # Whether weighing can change anything, by whether the step reported its count: one
        # micro-batch per step on one process never does, nor under DDP with counts nobody
        # reported (the same batch sizes on every rank). Attributes: asked at every batch.
        self.weighs = {False: window > 1, True: window > 1 or world_size > 1}
        self._reference: Count | None = None  # the window's first count: None before it
        self._total: Count = 0
        self._is_uneven = False
        self._is_shared = False  # this window's counts are all-reduced over the ranks

    def weight(self, items: Count, is_reported: bool) -> float | torch.Tensor | None:
        """Record a micro-batch's count; return its loss's factor `n_i / n_ref` (None for 1).

        `is_reported`: the step reported `num_items` (under DDP: counts that may differ
        between ranks, so they are shared).
        """
        if self._reference is None:
            self._is_shared = is_reported and self.world_size > 1
            if not self._is_shared:
                self._reference = self._total = items
                return None
            items = self._on_device(items)
            self._reference = _all_reduce(items.clone(), "max").clamp_min(1)
            self._total = items
        else:
            self._total = self._total + (self._on_device(items) if self._is_shared else items)
        if not isinstance(items, torch.Tensor) and not isinstance(self._reference, torch.Tensor):
            if items == self._reference:
                return None
        self._is_uneven = True
        return items / self._reference

    def leave_out(self, items: Count, is_reported: bool) -> None:
        """A micro-batch left out (a non-finite loss) adds no gradient. On one process, or in
        a window whose counts are shared, it adds no items either, and a shared window still
        takes part in the all-reduces the other ranks make. Under DDP with counts nobody
        reported, its `items` still count: the factor must be the same on every rank and no
        rank knows of another's left-out batch, so it stands as a batch of zero gradient."""
        is_shared = self._is_shared if self._reference is not None else is_reported
        if is_shared and self.world_size > 1:
            self.weight(0, is_reported=True)
        elif self.world_size > 1:
            self.weight(items, is_reported=False)

    def end_window(self) -> float | torch.Tensor | None:
        """The factor that makes the window's gradients those of the mean over all its items
        (None when nothing was recorded, or for a full window of equal counts); the next
        window starts empty."""
        reference, total = self._reference, self._total
        if reference is None:
            return None
        is_uneven, is_shared = self._is_uneven, self._is_shared
        self._reference, self._total, self._is_uneven, self._is_shared = None, 0, False, False
        if is_shared:
            total = _all_reduce(total, "sum").clamp_min(1)
            return self.world_size * self.window * reference / total
        if not is_uneven and total == reference * self.window:
            return None
        return reference * self.window / total

    def _on_device(self, items: Count) -> torch.Tensor:
        return torch.as_tensor(items, dtype=torch.float32, device=self.device)


def _all_reduce(tensor: torch.Tensor, op: str) -> torch.Tensor:
    """`tensor` reduced over every rank, in place (queued on the device: no host wait)."""
    import torch.distributed as dist

    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor
