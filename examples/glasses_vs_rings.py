"""Lesson: a classifier with two features learns from four examples and labels a new one.

Each object is described by two numbers, its width in centimetres and how many holes it
has. Two pairs of glasses and two rings are enough for a linear classifier to find a line
between the classes; the new object (12 cm wide, two holes) lands on the glasses' side.
The features are standardised first: a width in centimetres would otherwise outweigh the
count of holes and slow the descent.

    python examples/glasses_vs_rings.py
    trainer fit --config configs/glasses_vs_rings.yaml
    trainer predict --config configs/glasses_vs_rings.yaml --ckpt_path last
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer import Trainer, seed_everything

CLASSES = ("glasses", "ring")
# width in cm, number of holes  ->  class index
EXAMPLES = [((14.0, 2.0), 0), ((13.0, 2.0), 0), ((2.0, 1.0), 1), ((1.8, 1.0), 1)]
NEW_OBJECT = (12.0, 2.0)


class GlassesVsRings:
    """The four labelled objects, and the new object for `predict_loader`."""

    def __init__(self) -> None:
        features = torch.tensor([features for features, _ in EXAMPLES])
        # Standardise with the training set's statistics, and reuse them for new objects.
        self.mean, self.std = features.mean(0), features.std(0)
        labels = torch.tensor([label for _, label in EXAMPLES])
        self.train_set = TensorDataset(self.standardise(features), labels)

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        """Centre each feature on the training mean and scale it to unit spread."""
        return (features - self.mean) / self.std

    def train_loader(self) -> DataLoader:
        """All four examples in one batch."""
        return DataLoader(self.train_set, batch_size=len(self.train_set))

    def predict_loader(self) -> DataLoader:
        """The new object, standardised like the training examples."""
        return DataLoader(self.standardise(torch.tensor([NEW_OBJECT])), batch_size=1)


def main(argv: list[str] | None = None) -> dict[str, float | str]:
    """Train on the four examples; return the new object's predicted class and probability."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--run-dir", default="runs/glasses_vs_rings")
    args = parser.parse_args(argv)

    seed_everything(0)
    model = nn.Linear(2, len(CLASSES))  # one score per class; the larger one wins
    data = GlassesVsRings()
    trainer = Trainer(
        model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=data.train_loader(),
        max_epochs=args.epochs,
        run_dir=args.run_dir,
        progress_bar=False,
        seed=0,
    )
    history = trainer.fit()
    (scores,) = trainer.predict(data.predict_loader())
    probabilities = scores.softmax(-1)[0]
    label = CLASSES[int(probabilities.argmax())]
    print(f"training loss {history[0]['train/loss']:.3f} -> {history[-1]['train/loss']:.4f}")
    width, holes = NEW_OBJECT
    print(
        f"new object ({width:g} cm wide, {holes:g} holes): {label} (p = {probabilities.max():.3f})"
    )
    return {
        "label": label,
        "probability": float(probabilities.max()),
        "final_loss": history[-1]["train/loss"],
    }


if __name__ == "__main__":
    main()
