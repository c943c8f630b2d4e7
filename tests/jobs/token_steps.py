"""Padded sequences of different lengths and a training step whose loss is the mean over
their tokens, reporting the count as `num_items`: the accumulation tests and their 2-rank job
train on these, and compare with one update on the concatenated batch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainer import Trainer

FEATURES, CLASSES, LENGTH = 6, 5, 7


def token_data(sequences: int, seed: int = 0) -> TensorDataset:
    """`(index, inputs, targets, mask)` rows: sequences of 1 to LENGTH tokens, padded."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, LENGTH + 1, (sequences,), generator=generator)
    mask = (torch.arange(LENGTH) < lengths[:, None]).float()
    inputs = torch.randn(sequences, LENGTH, FEATURES, generator=generator)
    targets = torch.randint(0, CLASSES, (sequences, LENGTH), generator=generator)
    return TensorDataset(torch.arange(sequences), inputs, targets, mask)


def token_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, CLASSES))


def token_loss(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean loss over the batch's tokens (padding left out), and their count."""
    _, inputs, targets, mask = batch
    losses = nn.functional.cross_entropy(
        model(inputs).flatten(0, 1).float(), targets.flatten(), reduction="none"
    )
    count = mask.sum()
    return (losses * mask.flatten()).sum() / count, count


class TokenTrainer(Trainer):
    """Reports its token count as `num_items`: a tensor, an int, or not at all ("none")."""

    items_as = "tensor"

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss, count = token_loss(self.model, batch)
        if self.items_as == "none":
            return loss
        return {"loss": loss, "num_items": count if self.items_as == "tensor" else int(count)}
