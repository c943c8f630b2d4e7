"""Lesson: the learning rate: too small crawls, too large diverges, a good one converges.

The same model, `nn.Linear(10, 1)` on random regression data, is trained three times from
the same initial weights, changing only the learning rate of SGD. Each step moves the
weights by learning rate x gradient. Too small, and after five epochs the loss has hardly
moved. Too large, and every step overshoots the minimum by more than it was away from it:
the loss grows geometrically until it overflows, and `Trainer` stops the run with a
`NonFiniteLossError` that points at the learning rate. In between, the loss falls to the
noise floor in an epoch or two.

`trainer lr-find --config configs/linear_random_data.yaml` finds a good value without
trying them one by one (see examples/lr_finder.py).

    python examples/learning_rates.py
    python examples/learning_rates.py --lrs 0.01 0.3 0.9
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer import Callback, Trainer, seed_everything
from trainer.trainer import NonFiniteLossError


def regression_data(num_samples: int = 1000, batch_size: int = 32) -> DataLoader:
    """Random inputs in 10 dimensions; targets from a fixed random linear map plus noise."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(num_samples, 10, generator=generator)
    targets = inputs @ torch.randn(10, 1, generator=generator)
    targets += 0.1 * torch.randn(num_samples, 1, generator=generator)
    return DataLoader(TensorDataset(inputs, targets), batch_size=batch_size, shuffle=True)


class EpochLosses(Callback):
    """Keeps each epoch's mean training loss, so a run that fails still shows its curve."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        """Record the loss the epoch ended with."""
        self.losses.append(trainer.metrics["train/loss"])


def train_at(lr: float, epochs: int) -> tuple[list[float], str]:
    """Train the model at `lr`; return its epoch losses and how the run ended."""
    seed_everything(0)  # the same initial weights and batches for every learning rate
    model = nn.Linear(10, 1)
    record = EpochLosses()
    trainer = Trainer(
        model,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr),
        loss_fn=nn.MSELoss(),
        train_loader=regression_data(),
        max_epochs=epochs,
        callbacks=[record],
        log_every_n_steps=1,  # read the loss every step, so a divergence is caught at once
        run_dir=f"runs/learning_rates/lr={lr:g}",
        progress_bar=False,
        checkpoint=False,
    )
    try:
        trainer.fit()
    except NonFiniteLossError:
        return [*record.losses, math.inf], f"diverged at step {trainer.global_step}"
    return record.losses, "finished"


def main(argv: list[str] | None = None) -> dict[float, list[float]]:
    """Train at each learning rate; return the loss curve of each (inf where it overflowed)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.001, 0.1, 1.5])
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)

    curves, endings = {}, {}
    for lr in args.lrs:
        curves[lr], endings[lr] = train_at(lr, args.epochs)
    print("mean training loss per epoch, one column per learning rate")
    print("epoch " + "".join(f"{f'lr={lr:g}':>14}" for lr in args.lrs))
    for epoch in range(max(map(len, curves.values()))):
        cells = [
            f"{curve[epoch]:14.4g}" if epoch < len(curve) else " " * 14 for curve in curves.values()
        ]
        print(f"{epoch:5d} " + "".join(cells))
    for lr in args.lrs:
        print(f"lr={lr:g}: {endings[lr]}, last loss {curves[lr][-1]:.4g}")
    return curves


if __name__ == "__main__":
    main()
