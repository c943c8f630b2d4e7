"""Lesson: Adam against plain SGD on the same problem, from the same initial weights.

Plain SGD moves every weight by the same multiple of its gradient, so weights with small
gradients crawl. Adam keeps a running mean of each weight's gradient (momentum) and of its
square, and divides one by the root of the other: every weight moves at a similar,
well-scaled pace. On the digits MLP, with each optimizer at its customary learning rate
(0.01 for SGD, 0.001 for Adam), Adam is far ahead after a few epochs. Plain SGD does get
there, more slowly, and with momentum and a tuned rate it often generalises as well.

    python examples/adam_vs_sgd.py
    trainer fit --config configs/digits_mlp.yaml --optimizer.class_path torch.optim.SGD \\
        --optimizer.lr 0.01 --optimizer.weight_decay 0     (the default job with plain SGD)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn

from trainer import Trainer, seed_everything
from trainer.data import DigitsData
from trainer.metrics import accuracy
from trainer.models import MLP

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "SGD (lr 0.01)": lambda params: torch.optim.SGD(params, lr=0.01),
    "Adam (lr 0.001)": lambda params: torch.optim.Adam(params, lr=0.001),
}


def train(
    optimizer: Callable[..., torch.optim.Optimizer], data: DigitsData, epochs: int, run_dir: str
) -> list[dict[str, float]]:
    """Train the digits MLP with `optimizer` from seed 0; return the per-epoch records."""
    seed_everything(0)
    model = MLP(in_features=64, hidden=[128], out_features=10, dropout=0.0)
    trainer = Trainer(
        model,
        optimizer=optimizer,
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=data.train_loader(),
        val_loader=data.val_loader(),
        metrics={"acc": accuracy},
        max_epochs=epochs,
        run_dir=run_dir,
        progress_bar=False,
        checkpoint=False,
        seed=0,
    )
    return trainer.fit()


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, float]]]:
    """Train once per optimizer; return each one's per-epoch records."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--run-dir", default="runs/adam_vs_sgd")
    args = parser.parse_args(argv)
    data = DigitsData(batch_size=64)

    histories = {
        name: train(optimizer, data, args.epochs, f"{args.run_dir}/{name.split()[0]}")
        for name, optimizer in OPTIMIZERS.items()
    }
    print("epoch " + "".join(f"{name + ' loss':>22}{'val acc':>9}" for name in histories))
    for epoch in range(args.epochs):
        print(
            f"{epoch:5d} "
            + "".join(
                f"{history[epoch]['train/loss']:22.4f}{history[epoch]['val/acc']:9.3f}"
                for history in histories.values()
            )
        )
    print(f"tensorboard --logdir {args.run_dir} lays the curves over each other")
    return histories


if __name__ == "__main__":
    main()
