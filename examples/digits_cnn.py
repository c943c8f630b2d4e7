"""Lesson: a small CNN on the digits, with torchvision transforms for data augmentation.

A convolutional network sees the 8x8 digits as images, not as 64 unrelated numbers: the
same small filters slide over every position. Augmentation shows it each training image
slightly rotated, shifted and scaled, differently every epoch, so it learns the digit
rather than the exact pixels. Validation and test images are never augmented.

    python examples/digits_cnn.py
    python examples/digits_cnn.py --no-augment     # the same run without augmentation
    trainer fit --config configs/digits_cnn.yaml
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from trainer import Trainer, seed_everything
from trainer.data import DigitsData
from trainer.metrics import accuracy


class Transformed(Dataset):
    """Apply `transform` to the image of each (image, label) pair as it is loaded."""

    def __init__(self, dataset: TensorDataset, transform: Callable[[torch.Tensor], Any]) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.dataset[index]
        return self.transform(image), label


def augmentation() -> Callable[[torch.Tensor], torch.Tensor]:
    """Random small rotations, shifts and zooms (torchvision.transforms.v2)."""
    from torchvision.transforms import v2

    return v2.RandomAffine(degrees=10, translate=(0.125, 0.125), scale=(0.9, 1.1))


class DigitImages:
    """The digits as 1x8x8 images; training images are augmented unless `augment` is False."""

    def __init__(self, batch_size: int = 64, augment: bool = True, train_size: int | None = None):
        digits = DigitsData()
        sets = []
        for part in (digits.train_set, digits.val_set, digits.test_set):
            inputs, labels = part.tensors
            sets.append(TensorDataset(inputs.reshape(-1, 1, 8, 8), labels))
        train, self.val_set, self.test_set = sets
        if train_size is not None:
            train = TensorDataset(*(tensor[:train_size] for tensor in train.tensors))
        self.train_set = Transformed(train, augmentation()) if augment else train
        self.batch_size = batch_size

    def train_loader(self) -> DataLoader:
        """Shuffled, augmented training batches of (images (B, 1, 8, 8), labels)."""
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_loader(self) -> DataLoader:
        """Validation images as they are."""
        return DataLoader(self.val_set, batch_size=256)

    def test_loader(self) -> DataLoader:
        """Test images as they are."""
        return DataLoader(self.test_set, batch_size=256)


def small_cnn(num_classes: int = 10, channels: int = 32) -> nn.Module:
    """Two 3x3 convolutions, a 2x2 max-pool, then a linear classifier."""
    return nn.Sequential(
        nn.Conv2d(1, channels // 2, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(channels // 2, channels, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Flatten(),
        nn.Linear(channels * 4 * 4, num_classes),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train the CNN; return validation and test accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    parser.add_argument("--train-size", type=int, default=None, help="use the first N images")
    parser.add_argument("--run-dir", default="runs/digits_cnn")
    args = parser.parse_args(argv)

    seed_everything(0)
    model = small_cnn()
    data = DigitImages(augment=args.augment, train_size=args.train_size)
    trainer = Trainer(
        model,
        optimizer=torch.optim.Adam(model.parameters(), lr=0.003),
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=data.train_loader(),
        val_loader=data.val_loader(),
        metrics={"acc": accuracy},
        max_epochs=args.epochs,
        run_dir=args.run_dir,
        seed=0,
    )
    history = trainer.fit()
    test = trainer.test(data.test_loader())
    kind = "with" if args.augment else "without"
    print(
        f"CNN {kind} augmentation, {len(history)} epochs: validation accuracy "
        f"{history[-1]['val/acc']:.3f}, test accuracy {test['test/acc']:.3f}"
    )
    return {
        "val_acc": history[-1]["val/acc"],
        "test_acc": test["test/acc"],
        "train_loss": history[-1]["train/loss"],
    }


if __name__ == "__main__":
    main()
