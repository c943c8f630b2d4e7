"""Lesson: forward, loss, backward, step; and epochs, batches and iterations.

`nn.Linear(10, 1)` learns a hidden linear map from random inputs with a mean squared error
and plain SGD, twice: once with the four lines of a hand-written loop, once with `Trainer`.
Both start from the same weights and see the same batches, and they end with identical
weights, because those four lines are what `Trainer` runs for every batch:

    outputs = model(inputs)              # forward pass
    loss = loss_fn(outputs, targets)     # how wrong the outputs are
    loss.backward()                      # backpropagation: d loss / d weight, per weight
    optimizer.step(); optimizer.zero_grad()   # weight update, then forget the gradients

One pass over the data is an epoch; a batch is a slice of it; each batch is one iteration
(one optimizer step), so an epoch takes ceil(samples / batch size) iterations.

    python examples/linear_random_data.py
    trainer fit --config configs/linear_random_data.yaml
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer import Trainer, seed_everything


class RandomLinearData:
    """Random inputs in 10 dimensions; targets from a fixed random linear map plus noise."""

    def __init__(
        self, num_samples: int = 1000, batch_size: int = 32, noise: float = 0.1, seed: int = 0
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        inputs = torch.randn(num_samples, 10, generator=generator)
        true_weight = torch.randn(10, 1, generator=generator)
        targets = inputs @ true_weight + noise * torch.randn(num_samples, 1, generator=generator)
        self.dataset = TensorDataset(inputs, targets)
        self.batch_size = batch_size

    def train_loader(self) -> DataLoader:
        """Shuffled batches of (inputs (batch, 10), targets (batch, 1))."""
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True)


def train_by_hand(model: nn.Module, loader: DataLoader, epochs: int, lr: float) -> list[float]:
    """The training loop written out; returns the mean loss of each epoch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.MSELoss()
    model.train()
    epoch_losses = []
    for _ in range(epochs):
        total, count = 0.0, 0
        for inputs, targets in loader:
            outputs = model(inputs)  # forward pass
            loss = loss_fn(outputs, targets)  # loss
            loss.backward()  # backpropagation
            optimizer.step()  # weight update
            optimizer.zero_grad(set_to_none=True)
            total, count = total + loss.item() * len(inputs), count + len(inputs)
        epoch_losses.append(total / count)
    return epoch_losses


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train by hand and with Trainer; return both final losses and their weight difference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--run-dir", default="runs/linear_random_data")
    args = parser.parse_args(argv)
    data = RandomLinearData(num_samples=args.samples, batch_size=args.batch_size)

    seed_everything(0)
    by_hand = nn.Linear(10, 1)
    hand_losses = train_by_hand(by_hand, data.train_loader(), args.epochs, args.lr)

    seed_everything(0)  # the same initial weights and the same shuffles
    model = nn.Linear(10, 1)
    trainer = Trainer(
        model,
        optimizer=torch.optim.SGD(model.parameters(), lr=args.lr),
        loss_fn=nn.MSELoss(),
        train_loader=data.train_loader(),
        max_epochs=args.epochs,
        run_dir=args.run_dir,
        progress_bar=False,
        device="cpu",  # where the hand-written loop ran: the same arithmetic, the same bits
    )
    history = trainer.fit()

    iterations = math.ceil(args.samples / args.batch_size)
    print(
        f"{args.samples} samples in batches of {args.batch_size}: {iterations} iterations "
        f"per epoch, {args.epochs} epochs = {trainer.global_step} optimizer steps"
    )
    print("epoch   by hand   Trainer")
    for epoch, (hand, record) in enumerate(zip(hand_losses, history, strict=True)):
        print(f"{epoch:5d}  {hand:8.5f}  {record['train/loss']:8.5f}")
    difference = max(
        (a - b).abs().max().item()
        for a, b in zip(by_hand.parameters(), model.parameters(), strict=True)
    )
    print(f"largest difference between the two models' weights: {difference}")
    return {
        "hand_loss": hand_losses[-1],
        "trainer_loss": history[-1]["train/loss"],
        "first_loss": history[0]["train/loss"],
        "weight_difference": difference,
        "optimizer_steps": trainer.global_step,
        "iterations_per_epoch": iterations,
    }


if __name__ == "__main__":
    main()
