"""Lesson: an exponential moving average of the weights evaluates better than the weights.

With a large learning rate and small batches, SGD's weights jitter around a good solution
from step to step; so does the validation loss measured on them. `EMA(decay=0.98)` keeps a
running average of the weights (about the last 50 steps), which sits closer to the centre
of that jitter. Validation and test use the average, and the model holds it after `fit`.
This example trains the same MLP twice on the digits, with and without the average, and
compares the validation loss of the last epochs: lower, and steadier, with it.

    python examples/ema_digits.py
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from trainer import Trainer
from trainer.callbacks import EMA
from trainer.data import DigitsData
from trainer.metrics import accuracy
from trainer.models import MLP


def train(epochs: int, use_ema: bool, run_dir: str) -> list[dict[str, float]]:
    """The same noisy SGD run, with or without the average; returns its history."""
    torch.manual_seed(0)
    model = MLP(in_features=64, hidden=[128], out_features=10)
    data = DigitsData(batch_size=16)
    trainer = Trainer(
        model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=data.train_loader(),
        val_loader=data.val_loader(),
        metrics={"acc": accuracy},
        max_epochs=epochs,
        callbacks=[EMA(decay=0.98)] if use_ema else [],
        run_dir=run_dir,
        seed=0,
        progress_bar=False,
        logger=False,
    )
    return trainer.fit()


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train with and without EMA; return the last epochs' validation loss of each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--run-dir", default="runs/ema_digits")
    args = parser.parse_args(argv)
    last = max(args.epochs // 2, 2)
    figures = {}
    for name, use_ema in (("plain", False), ("ema", True)):
        history = train(args.epochs, use_ema, f"{args.run_dir}/{name}")
        losses = [record["val/loss"] for record in history[-last:]]
        figures[f"{name}_val_loss"] = statistics.mean(losses)
        figures[f"{name}_val_loss_spread"] = statistics.pstdev(losses)
        figures[f"{name}_val_acc"] = history[-1]["val/acc"]
        print(
            f"{name:>5}: val/loss over the last {last} epochs {figures[f'{name}_val_loss']:.4f} "
            f"(spread {figures[f'{name}_val_loss_spread']:.4f}), "
            f"final val/acc {figures[f'{name}_val_acc']:.3f}"
        )
    return figures


if __name__ == "__main__":
    main()
