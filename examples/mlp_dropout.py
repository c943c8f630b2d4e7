"""Lesson: an MLP with dropout for three classes; dropout is on in training, off in evaluation.

Dropout zeroes a random half of the hidden activations at every training step (and scales
the rest up), so no unit can rely on another; in evaluation it must do nothing, or the
same flower would get different predictions each time. `Trainer` puts the model in
`train()` mode for training and `eval()` mode for validation, and this example checks it:
it runs the model twice on each batch and logs whether the two outputs differ. The data
are Fisher's 150 iris flowers (four measurements, three species), shipped with
scikit-learn.

    python examples/mlp_dropout.py
    trainer fit --config configs/mlp_dropout.yaml
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer import Trainer, seed_everything
from trainer.metrics import accuracy
from trainer.models import MLP


class IrisData:
    """The iris flowers, standardised, split into 120 training and 30 validation samples."""

    def __init__(self, batch_size: int = 16, split_seed: int = 0) -> None:
        from sklearn.datasets import load_iris

        iris = load_iris()
        inputs = torch.tensor(iris.data, dtype=torch.float32)
        targets = torch.tensor(iris.target, dtype=torch.long)
        order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(split_seed))
        train, val = order[:120], order[120:]
        mean, std = inputs[train].mean(0), inputs[train].std(0)
        inputs = (inputs - mean) / std
        self.train_set = TensorDataset(inputs[train], targets[train])
        self.val_set = TensorDataset(inputs[val], targets[val])
        self.batch_size = batch_size

    def train_loader(self) -> DataLoader:
        """Shuffled training batches."""
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_loader(self) -> DataLoader:
        """The 30 validation flowers in one batch."""
        return DataLoader(self.val_set, batch_size=len(self.val_set))


class DropoutCheckingTrainer(Trainer):
    """Logs `*/outputs_differ`: 1.0 when two forward passes on the same batch disagree."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """The usual loss, plus a second forward pass without gradients to compare."""
        inputs, targets = batch
        outputs = self.model(inputs)
        with torch.no_grad():
            again = self.model(inputs)
        self.log("train/outputs_differ", (outputs != again).any().float())
        return self.loss_fn(outputs, targets)

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """The usual loss and accuracy, plus the same comparison in eval mode."""
        inputs, targets = batch
        outputs, again = self.model(inputs), self.model(inputs)
        return {
            "loss": self.loss_fn(outputs, targets),
            "acc": accuracy(outputs, targets),
            "outputs_differ": (outputs != again).any().float(),
        }


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train the MLP; return validation accuracy and how often outputs differed per mode."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--run-dir", default="runs/mlp_dropout")
    args = parser.parse_args(argv)

    seed_everything(0)
    model = MLP(in_features=4, hidden=[32, 32], out_features=3, dropout=args.dropout)
    data = IrisData()
    trainer = DropoutCheckingTrainer(
        model,
        optimizer=torch.optim.Adam(model.parameters(), lr=0.01),
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=data.train_loader(),
        val_loader=data.val_loader(),
        max_epochs=args.epochs,
        run_dir=args.run_dir,
        progress_bar=False,
        seed=0,
    )
    history = trainer.fit()
    last = history[-1]
    print(f"validation accuracy after {len(history)} epochs: {last['val/acc']:.3f}")
    print(
        f"training batches whose two forward passes differed:   "
        f"{last['train/outputs_differ']:.0%}  (dropout active)"
    )
    print(
        f"validation batches whose two forward passes differed: "
        f"{last['val/outputs_differ']:.0%}  (dropout off)"
    )
    return {
        "val_acc": last["val/acc"],
        "train_outputs_differ": last["train/outputs_differ"],
        "val_outputs_differ": last["val/outputs_differ"],
    }


if __name__ == "__main__":
    main()
