"""Lesson: linear regression on y = 2x; the learned weight ends at 2.00.

The smallest complete training run: one weight, one bias, a mean squared error and plain
SGD. Every step nudges the weight against the gradient of the loss, and the weight settles
on the slope of the data.

    python examples/linear_regression.py
    trainer fit --config configs/linear_regression.yaml
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer import Callback, Trainer, seed_everything


class LineData:
    """Points of the line y = `slope` * x for x evenly spread over [-1, 1]."""

    def __init__(self, num_points: int = 100, slope: float = 2.0, batch_size: int = 10) -> None:
        inputs = torch.linspace(-1, 1, num_points).unsqueeze(1)
        self.dataset = TensorDataset(inputs, slope * inputs)
        self.batch_size = batch_size

    def train_loader(self) -> DataLoader:
        """Shuffled batches of (x, y), both of shape (batch, 1)."""
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True)


class PrintWeight(Callback):
    """Print the weight and bias of a one-input linear model every `every_n_epochs` epochs."""

    def __init__(self, every_n_epochs: int = 10) -> None:
        self.every_n_epochs = every_n_epochs

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        """Show the weight moving towards the slope of the data."""
        is_last = trainer.epoch + 1 == trainer.max_epochs
        if trainer.epoch % self.every_n_epochs == 0 or is_last:
            weight, bias = trainer.model.weight.item(), trainer.model.bias.item()
            loss = trainer.metrics["train/loss"]
            print(
                f"epoch {trainer.epoch:3d}  loss {loss:.6f}  weight {weight:.4f}  bias {bias:+.4f}"
            )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Fit y = 2x and return the learned weight and bias."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--run-dir", default="runs/linear_regression")
    args = parser.parse_args(argv)

    seed_everything(0)
    model = nn.Linear(1, 1)  # y_hat = weight * x + bias, both start random
    trainer = Trainer(
        model,
        optimizer=torch.optim.SGD(model.parameters(), lr=args.lr),
        loss_fn=nn.MSELoss(),
        train_loader=LineData().train_loader(),
        max_epochs=args.epochs,
        callbacks=[PrintWeight(every_n_epochs=10)],
        run_dir=args.run_dir,
        progress_bar=False,
        seed=0,  # as `trainer fit` does with the config's seed: the two runs are the same
    )
    trainer.fit()
    weight, bias = model.weight.item(), model.bias.item()
    prediction = model(torch.tensor([[5.0]], device=model.weight.device)).item()
    print(f"learned weight {weight:.2f} (the data's slope is 2.00), bias {bias:+.2f}")
    print(f"prediction for x = 5: {prediction:.2f}")
    return {"weight": weight, "bias": bias, "prediction_at_5": prediction}


if __name__ == "__main__":
    main()
