"""Lesson: the default job in Python: an MLP on the bundled 8x8 handwritten digits.

This is `configs/digits_mlp.yaml` written out as a script, so the two ways of describing a
run can be read side by side: the same model, data, optimizer, scheduler, metric and
callbacks, and the same seed, give the same weights. It ends by reporting accuracy on the
held-out test set, which training never saw.

    python examples/digits_mlp.py
    trainer fit --config configs/digits_mlp.yaml
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from trainer import EarlyStopping, Trainer, seed_everything
from trainer.callbacks import ModelCheckpoint
from trainer.data import DigitsData
from trainer.metrics import accuracy
from trainer.models import MLP


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train the default job; return the last validation figures and the test accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--run-dir", default="runs/digits_mlp")
    args = parser.parse_args(argv)

    seed_everything(0)
    model = MLP(in_features=64, hidden=[256, 128], out_features=10, dropout=0.2)
    data = DigitsData(batch_size=64)
    trainer = Trainer(
        model,
        optimizer=lambda params: torch.optim.AdamW(params, lr=0.002, weight_decay=0.0001),
        scheduler=lambda optimizer: torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=args.epochs
        ),
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=data.train_loader(),
        val_loader=data.val_loader(),
        metrics={"acc": accuracy},
        callbacks=[
            EarlyStopping(monitor="val/acc", mode="max", patience=10),
            ModelCheckpoint(monitor="val/acc", mode="max"),  # keeps the best epoch too
        ],
        max_epochs=args.epochs,
        run_dir=args.run_dir,
        log_every_n_steps=10,
        seed=0,
    )
    history = trainer.fit()
    test = trainer.test(data.test_loader())
    print(
        f"{len(history)} epochs: validation accuracy {history[-1]['val/acc']:.3f}, "
        f"test accuracy {test['test/acc']:.3f} on {len(data.test_set)} unseen digits"
    )
    print(f"TensorBoard: tensorboard --logdir {args.run_dir}")
    return {
        "val_acc": history[-1]["val/acc"],
        "test_acc": test["test/acc"],
        "epochs": float(len(history)),
    }


if __name__ == "__main__":
    main()
