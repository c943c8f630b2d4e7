"""Lesson: contrastive embeddings: two views of a digit pulled together, all others pushed apart.

No labels are used for training. Each digit is shown twice, each time shifted and
speckled differently (two "views"). An encoder maps every view to a point on a sphere;
the loss (InfoNCE, as in SimCLR) asks each view to be closer to its twin than to any other
image of the batch. The batch is therefore not `(inputs, targets)`, so the `Trainer`
subclass writes its own `training_step`. It logs the mean cosine similarity of the pairs
and of the other images, the two figures the lesson is about: the first climbs towards 1,
the second falls towards 0.

Before training, every embedding points roughly the same way: all images look alike to
the encoder, twins no more than strangers. After training, twins agree and strangers are
spread apart, so a view finds its own twin among a whole batch of validation images.

    python examples/contrastive.py
    trainer fit --config configs/contrastive.yaml
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainer import Trainer, seed_everything
from trainer.data import DigitsData


def random_view(image: torch.Tensor) -> torch.Tensor:
    """The flat 8x8 digit shifted by up to a pixel each way, with a little noise added."""
    padded = F.pad(image.reshape(8, 8), (1, 1, 1, 1))
    top, left = torch.randint(0, 3, (2,)).tolist()
    view = padded[top : top + 8, left : left + 8].reshape(64)
    return view + 0.1 * torch.randn_like(view)


class TwoViews(Dataset):
    """Each image as a pair of independent random views; labels are left out on purpose."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        return random_view(image), random_view(image)


class DigitPairs:
    """Pairs of views of the digits for training and validation."""

    def __init__(self, batch_size: int = 64) -> None:
        digits = DigitsData()
        self.train_images, self.train_labels = digits.train_set.tensors
        self.val_images, self.val_labels = digits.val_set.tensors
        self.batch_size = batch_size

    def train_loader(self) -> DataLoader:
        """Shuffled batches of (views, twin views); the last short batch is dropped."""
        return DataLoader(
            TwoViews(self.train_images), batch_size=self.batch_size, shuffle=True, drop_last=True
        )

    def val_loader(self) -> DataLoader:
        """Pairs of views of the validation digits."""
        return DataLoader(TwoViews(self.val_images), batch_size=self.batch_size)


class Encoder(nn.Module):
    """An MLP from 64 pixels to a `dim`-dimensional unit vector."""

    def __init__(self, dim: int = 32, hidden: int = 256) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings of unit length, so a dot product is a cosine similarity."""
        return F.normalize(self.layers(images), dim=-1)


class ContrastiveTrainer(Trainer):
    """InfoNCE on pairs of views: each view must pick its twin out of the whole batch."""

    def __init__(self, *args: Any, temperature: float = 0.1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.temperature = temperature

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """The contrastive loss, plus the similarity figures of the pairs and the others."""
        figures = self._pair_figures(batch)
        self.log("train/pair_similarity", figures["pair_similarity"])
        self.log("train/other_similarity", figures["other_similarity"])
        return figures["loss"]

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """The same figures on views of validation digits."""
        return self._pair_figures(batch)

    def _pair_figures(self, batch: Any) -> dict[str, torch.Tensor]:
        views, twins = batch
        a, b = self.model(views), self.model(twins)
        similarity = a @ b.T  # (batch, batch) cosines; the diagonal holds the pairs
        targets = torch.arange(len(a), device=a.device)
        logits = similarity / self.temperature
        # Symmetric: each view picks its twin among the batch's twins, and the other way round.
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        is_pair = torch.eye(len(a), dtype=torch.bool, device=a.device)
        return {
            "loss": loss,
            "pair_similarity": similarity[is_pair].mean().detach(),
            "other_similarity": similarity[~is_pair].mean().detach(),
            "twin_found": (similarity.argmax(dim=1) == targets).float().mean(),
        }


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train the encoder without labels; return the validation figures before and after."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--run-dir", default="runs/contrastive")
    args = parser.parse_args(argv)

    seed_everything(0)
    data = DigitPairs()
    model = Encoder()
    trainer = ContrastiveTrainer(
        model,
        optimizer=torch.optim.Adam(model.parameters(), lr=3e-3),
        train_loader=data.train_loader(),
        val_loader=data.val_loader(),
        max_epochs=args.epochs,
        run_dir=args.run_dir,
        progress_bar=False,
        seed=0,
    )
    before = trainer.validate()  # the untrained encoder, on the validation pairs
    after = trainer.fit()[-1]
    print("validation views              untrained   trained")
    for name, label in (
        ("pair_similarity", "cosine, two views of a digit"),
        ("other_similarity", "cosine, different images"),
        ("twin_found", "twin found among the batch"),
    ):
        print(f"{label:29} {before[f'val/{name}']:9.2f} {after[f'val/{name}']:9.2f}")
    return {
        f"{name}_{when}": figures[f"val/{name}"]
        for when, figures in (("before", before), ("after", after))
        for name in ("loss", "pair_similarity", "other_similarity", "twin_found")
    }


if __name__ == "__main__":
    main()
