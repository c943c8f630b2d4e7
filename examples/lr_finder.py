"""Lesson: the learning-rate finder: one short sweep instead of many trial runs.

`find_lr` trains for a hundred batches while raising the learning rate exponentially,
from 1e-7 to 10, and records the loss: flat while the rate is too small, falling fast in
the useful range, exploding once it is too large. It suggests the rate where the loss falls
fastest, saves the loss-vs-rate plot, and then puts the model and optimizer back exactly as
they were, so the real run starts from the same weights. This example then trains the
digits MLP with plain SGD at the suggested rate and, for contrast, at a rate 100 times
smaller.

    python examples/lr_finder.py
    trainer lr-find --config configs/digits_mlp.yaml     (the same sweep from a config)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from trainer import Trainer, seed_everything
from trainer.data import DigitsData
from trainer.lr_finder import find_lr
from trainer.metrics import accuracy
from trainer.models import MLP


def make_trainer(data: DigitsData, epochs: int, lr: float, run_dir: str) -> Trainer:
    """The digits MLP with SGD at `lr`, from the same initial weights every time."""
    seed_everything(0)
    model = MLP(in_features=64, hidden=[256, 128], out_features=10, dropout=0.2)
    return Trainer(
        model,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr),
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


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Sweep, then train at the suggestion and at a hundredth of it; return both accuracies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--num-steps", type=int, default=100)
    parser.add_argument("--run-dir", default="runs/lr_finder")
    args = parser.parse_args(argv)
    data = DigitsData(batch_size=64)

    trainer = make_trainer(data, args.epochs, lr=0.001, run_dir=f"{args.run_dir}/suggested")
    before = [parameter.detach().clone() for parameter in trainer.model.parameters()]
    result = find_lr(trainer, min_lr=1e-7, max_lr=10, num_steps=args.num_steps)
    plot = result.plot(Path(args.run_dir) / "lr_find.png")
    restored = all(
        torch.equal(old, new) for old, new in zip(before, trainer.model.parameters(), strict=True)
    )
    if result.suggestion is None:
        raise SystemExit("the loss never clearly fell during the sweep; try more --num-steps")
    print(f"swept {len(result.lrs)} learning rates; loss-vs-lr plot: {plot}")
    print(f"suggested learning rate: {result.suggestion:.3g}; weights restored: {restored}")

    trainer.optimizer.param_groups[0]["lr"] = result.suggestion
    suggested = trainer.fit()[-1]["val/acc"]
    slow_lr = result.suggestion / 100
    slow = make_trainer(data, args.epochs, lr=slow_lr, run_dir=f"{args.run_dir}/slow").fit()
    print(
        f"after {args.epochs} epochs: validation accuracy {suggested:.3f} at "
        f"lr={result.suggestion:.3g}, {slow[-1]['val/acc']:.3f} at lr={slow_lr:.3g}"
    )
    return {
        "suggestion": result.suggestion,
        "suggested_acc": suggested,
        "slow_acc": slow[-1]["val/acc"],
        "restored": float(restored),
    }


if __name__ == "__main__":
    main()
