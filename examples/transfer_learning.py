"""Lesson: transfer learning: a torchvision ResNet-18 backbone, frozen, with a new head.

A network trained on a large data set has learnt features (edges, textures, parts) that
serve other tasks too. Transfer learning keeps that backbone as it is and trains only a
new final layer, the head, for the new classes: few parameters to learn, so little data
and time are needed. The backbone is frozen twice over: its parameters get no gradients
(`requires_grad_(False)`), and it stays in `eval()` mode, so its BatchNorm layers keep
the statistics of the original data instead of drifting with every batch.

With a network connection, `--weights IMAGENET1K_V1` downloads the ImageNet weights
(45 MB, cached by torchvision); that is the real lesson. Without one, the default random
weights still show the mechanics: a frozen, random backbone, a head that learns.

    python examples/transfer_learning.py                         # random backbone, offline
    python examples/transfer_learning.py --weights IMAGENET1K_V1 # pretrained backbone
    trainer fit --config configs/transfer_learning.yaml
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer import Callback, Trainer, seed_everything
from trainer.data import DigitsData
from trainer.metrics import accuracy

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FrozenBackboneClassifier(nn.Module):
    """A ResNet-18 without its last layer, frozen and always in eval mode, plus a new head.

    Example:
        >>> model = FrozenBackboneClassifier(num_classes=10, weights="IMAGENET1K_V1")
    """

    def __init__(self, num_classes: int = 10, weights: str | None = None) -> None:
        from torchvision.models import resnet18

        super().__init__()
        backbone = resnet18(weights=weights)
        features = backbone.fc.in_features  # 512
        backbone.fc = nn.Identity()  # drop ImageNet's 1000-class layer
        backbone.requires_grad_(False)
        self.backbone = backbone
        self.head = nn.Linear(features, num_classes)
        self.train()

    def train(self, mode: bool = True) -> FrozenBackboneClassifier:
        """Switch the head's mode; the backbone stays in eval mode whatever `mode` is."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores for a batch of 3-channel images."""
        return self.head(self.backbone(images))


class DigitsAsPhotos:
    """The digits scaled up to 32x32, copied to three channels, normalised like ImageNet."""

    def __init__(self, batch_size: int = 64, train_size: int | None = None) -> None:
        digits = DigitsData()
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        sets = []
        for part in (digits.train_set, digits.val_set):
            inputs, labels = part.tensors
            images = F.interpolate(inputs.reshape(-1, 1, 8, 8), size=32, mode="bilinear")
            sets.append(TensorDataset((images.expand(-1, 3, -1, -1) - mean) / std, labels))
        train, self.val_set = sets
        if train_size is not None:
            train = TensorDataset(*(tensor[:train_size] for tensor in train.tensors))
        self.train_set = train
        self.batch_size = batch_size

    def train_loader(self) -> DataLoader:
        """Shuffled training batches of (images (B, 3, 32, 32), labels)."""
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_loader(self) -> DataLoader:
        """Validation batches."""
        return DataLoader(self.val_set, batch_size=256)


class BackboneModeCheck(Callback):
    """Counts training batches during which the backbone was in training mode (should be 0)."""

    def __init__(self) -> None:
        self.batches_with_backbone_training = 0

    def on_train_batch_start(self, trainer: Trainer, batch: Any, batch_idx: int) -> None:
        """Look at the backbone's mode just before the step runs."""
        self.batches_with_backbone_training += int(trainer.model.backbone.training)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train the head; return accuracy and whether anything in the backbone moved."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--weights", default=None, help="e.g. IMAGENET1K_V1 (downloads)")
    parser.add_argument("--train-size", type=int, default=None, help="use the first N images")
    parser.add_argument("--run-dir", default="runs/transfer_learning")
    args = parser.parse_args(argv)

    seed_everything(0)
    model = FrozenBackboneClassifier(num_classes=10, weights=args.weights)
    backbone_before = copy.deepcopy(model.backbone.state_dict())  # weights and BN statistics
    head_before = model.head.weight.detach().clone()
    data = DigitsAsPhotos(batch_size=args.batch_size, train_size=args.train_size)
    check = BackboneModeCheck()
    trainer = Trainer(
        model,
        optimizer=torch.optim.Adam(model.head.parameters(), lr=args.lr),  # the head only
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=data.train_loader(),
        val_loader=data.val_loader(),
        metrics={"acc": accuracy},
        max_epochs=args.epochs,
        callbacks=[check],
        run_dir=args.run_dir,
        seed=0,
    )
    history = trainer.fit()
    backbone_change = max(
        (model.backbone.state_dict()[name].cpu().float() - value.float()).abs().max().item()
        for name, value in backbone_before.items()
    )
    head_change = (model.head.weight.cpu() - head_before).abs().max().item()
    source = args.weights or "random weights"
    print(
        f"ResNet-18 backbone ({source}), {len(history)} epochs: validation accuracy "
        f"{history[-1]['val/acc']:.3f} (chance: 0.100)"
    )
    print(f"largest change in the backbone's weights and BatchNorm statistics: {backbone_change}")
    print(f"largest change in the head's weights: {head_change:.4f}")
    print(
        f"training batches with the backbone in train mode: {check.batches_with_backbone_training}"
    )
    return {
        "val_acc": history[-1]["val/acc"],
        "first_loss": history[0]["train/loss"],
        "last_loss": history[-1]["train/loss"],
        "backbone_change": backbone_change,
        "head_change": head_change,
        "batches_with_backbone_training": float(check.batches_with_backbone_training),
    }


if __name__ == "__main__":
    main()
