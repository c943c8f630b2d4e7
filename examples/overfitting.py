"""Lesson: overfitting, seen as training loss falling while validation loss rises, and fixes.

A large MLP trained on only 60 digits memorises them: its training loss falls towards zero
while its validation loss, after a first dip, climbs again as the network grows confident
about what it memorised. The gap between the two curves is overfitting. Four fixes, each
run from the same start, close part of the gap:

- more data: 240 training digits instead of 60;
- dropout: half the hidden units dropped at each step, so none can be relied on alone;
- early stopping: stop when the validation loss has not improved for 5 epochs, and keep
  the weights of its best epoch;
- augmentation: each training digit shifted by up to a pixel, differently every epoch.

Every run writes TensorBoard logs under one folder, so the curves can be laid over each
other:  tensorboard --logdir runs/overfitting

    python examples/overfitting.py
    python examples/overfitting.py --plot docs/img/overfitting.png   (curves as a picture)
    trainer fit --config configs/overfitting.yaml                     (the overfitting run)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from trainer import Callback, EarlyStopping, Trainer, seed_everything
from trainer.data import DigitsData
from trainer.metrics import accuracy
from trainer.models import MLP

FIXES = ("more data", "dropout", "early stopping", "augmentation")


class RandomShift(Dataset):
    """Each 8x8 digit (stored flat, 64 values) moved by up to `max_shift` pixels each way."""

    def __init__(self, dataset: TensorDataset, max_shift: int = 1) -> None:
        self.dataset, self.max_shift = dataset, max_shift

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.dataset[index]
        shift = self.max_shift
        padded = F.pad(image.reshape(8, 8), (shift, shift, shift, shift))
        top, left = torch.randint(0, 2 * shift + 1, (2,)).tolist()
        return padded[top : top + 8, left : left + 8].reshape(64), label


class SmallDigits:
    """The first `train_size` training digits, all in one batch, and the full validation set."""

    def __init__(self, train_size: int = 60, augment: bool = False) -> None:
        digits = DigitsData()
        inputs, labels = digits.train_set.tensors
        subset = TensorDataset(inputs[:train_size], labels[:train_size])
        self.train_set = RandomShift(subset) if augment else subset
        self.val_set = digits.val_set

    def train_loader(self) -> DataLoader:
        """One shuffled batch holding every training digit: one step per epoch."""
        return DataLoader(self.train_set, batch_size=len(self.train_set), shuffle=True)

    def val_loader(self) -> DataLoader:
        """The 270 validation digits."""
        return DataLoader(self.val_set, batch_size=len(self.val_set))


class Curves(Callback):
    """Keeps the training and validation loss of every epoch, for the summary table."""

    def __init__(self) -> None:
        self.train: list[float] = []
        self.val: list[float] = []

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        """Record this epoch's two losses."""
        self.train.append(trainer.metrics["train/loss"])
        self.val.append(trainer.metrics["val/loss"])


def run(fix: str | None, epochs: int, run_dir: Path) -> dict[str, float]:
    """Train the overfitting model with one fix (or none); return its figures."""
    seed_everything(0)
    model = MLP(
        in_features=64, hidden=[256, 256], out_features=10, dropout=0.5 if fix == "dropout" else 0.0
    )
    data = SmallDigits(train_size=240 if fix == "more data" else 60, augment=fix == "augmentation")
    curves = Curves()
    callbacks: list[Callback] = [curves]
    if fix == "early stopping":
        callbacks.append(EarlyStopping("val/loss", patience=5, restore_best_weights=True))
    trainer = Trainer(
        model,
        optimizer=torch.optim.Adam(model.parameters(), lr=0.003),
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=data.train_loader(),
        val_loader=data.val_loader(),
        metrics={"acc": accuracy},
        max_epochs=epochs,
        callbacks=callbacks,
        run_dir=run_dir / (fix or "no fix").replace(" ", "_"),
        progress_bar=False,
        checkpoint=False,
        seed=0,
    )
    trainer.fit()
    final = trainer.validate()  # after early stopping: the restored best weights
    best = min(curves.val)
    return {
        "epochs": float(len(curves.val)),
        "train_loss": curves.train[-1],
        "val_loss": final["val/loss"],
        "val_acc": final["val/acc"],
        "best_val_loss": best,
        "best_epoch": float(curves.val.index(best)),
        "gap": final["val/loss"] - curves.train[-1],
    }


def read_scalars(run_dir: Path, tag: str) -> tuple[list[int], list[float]]:
    """A TensorBoard tag's (steps, values), read back from the newest run of `run_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    newest = max(run_dir.glob("version_*"), key=lambda run: int(run.name.split("_")[1]))
    events = EventAccumulator(str(newest), size_guidance={"scalars": 0}).Reload()
    scalars = events.Scalars(tag)
    return [point.step for point in scalars], [point.value for point in scalars]


def plot(run_dir: Path, path: Path) -> Path:
    """Draw each run's training and validation loss, read from its TensorBoard logs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = ["no fix", *FIXES]
    figure = Figure(figsize=(10, 5.5), dpi=100)
    FigureCanvasAgg(figure)
    axes_grid = figure.subplots(2, 3, sharex=True, sharey=True).flat
    for axes, name in zip(axes_grid, names, strict=False):
        folder = run_dir / name.replace(" ", "_")
        for tag, label in (("train/loss_epoch", "training loss"), ("val/loss", "validation")):
            steps, values = read_scalars(folder, tag)
            axes.plot(steps, values, label=label)
        axes.set_title(name)
        axes.set_ylim(0, 2.5)
    axes_grid[len(names) - 1].legend()
    figure.delaxes(axes_grid[len(names)])
    figure.supxlabel("epoch (one optimizer step each)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the overfitting model and each fix; return every run's figures by name."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/overfitting"))
    parser.add_argument("--plot", type=Path, help="save the loss curves to this image")
    args = parser.parse_args(argv)

    results = {
        name: run(None if name == "no fix" else name, args.epochs, args.run_dir)
        for name in ("no fix", *FIXES)
    }
    print(
        f"{'':15} {'epochs':>6} {'train loss':>10} {'val loss':>9} {'best val (epoch)':>17} "
        f"{'gap':>6} {'val acc':>7}"
    )
    for name, figures in results.items():
        print(
            f"{name:15} {figures['epochs']:6.0f} {figures['train_loss']:10.4f} "
            f"{figures['val_loss']:9.3f} {figures['best_val_loss']:10.3f} "
            f"({figures['best_epoch']:3.0f}) {figures['gap']:6.3f} {figures['val_acc']:7.3f}"
        )
    print(
        "gap = validation loss - training loss at the end; "
        f"tensorboard --logdir {args.run_dir} shows the curves"
    )
    if args.plot:
        print(f"curves saved to {plot(args.run_dir, args.plot)}")
    return results


if __name__ == "__main__":
    main()
