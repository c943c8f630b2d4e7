"""Lesson: a GAN on the digits: two networks, two optimizers, a step that owns the update.

A generator turns random noise into 8x8 images; a discriminator tells real digits from
generated ones. Each batch updates both, in turn: the discriminator to label real images 1
and fakes 0, then the generator to make the discriminator say 1 to its fakes. Two
optimizers and two updates per batch are more than the default loop does, so the `Trainer`
subclass sets `automatic_optimization = False` and updates with `self.backward(loss)` and
`self.step(optimizer)`; the loop still handles devices, logging, checkpoints and exact
resume of both optimizers.

The figures to watch are the discriminator's accuracy on real images and on fakes: if it
stayed at 1.0 on fakes the generator would have lost; if it fell to 0.0 the discriminator
would have. In a GAN that trains, the two compete and both hover in between. A callback
draws the same 32 noise vectors through the generator at each epoch end and saves them as
`samples_epoch{E:03d}.png` in the run folder, so the digits can be watched taking shape.

    python examples/gan_digits.py
    trainer fit --config configs/gan_digits.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parameters_to_vector

from trainer import Trainer, seed_everything
from trainer.callbacks import Callback
from trainer.data import DigitsData


class GeneratorAndDiscriminator(nn.Module):
    """Two MLPs: noise -> 64 pixels in [0, 1], and 64 pixels -> the logit of "real"."""

    def __init__(self, noise_dim: int = 16, hidden: int = 128) -> None:
        super().__init__()
        self.noise_dim = noise_dim
        self.generator = nn.Sequential(
            nn.Linear(noise_dim, hidden), nn.ReLU(), nn.Linear(hidden, 64), nn.Sigmoid()
        )
        self.discriminator = nn.Sequential(
            nn.Linear(64, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1)
        )


class GANTrainer(Trainer):
    """One discriminator update, then one generator update, per batch of real digits."""

    automatic_optimization = False  # the step owns the update: two optimizers, in turn
    log_loss_as = "train/loss_g"  # the loss the step returns is the generator's

    def __init__(self, *args: Any, lr: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lr = lr

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One Adam per network, by name; betas=(0.5, 0.999) as in the DCGAN paper."""
        return {
            "g": torch.optim.Adam(self.model.generator.parameters(), self.lr, betas=(0.5, 0.999)),
            "d": torch.optim.Adam(
                self.model.discriminator.parameters(), self.lr, betas=(0.5, 0.999)
            ),
        }

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """Update the discriminator on real and fake images, then the generator."""
        real, _ = batch  # the labels are not used
        noise = torch.randn(len(real), self.model.noise_dim, device=real.device)
        fake = self.model.generator(noise)

        # Discriminator: real -> 1, fake -> 0. `detach` keeps this loss out of the generator.
        real_logits = self.model.discriminator(real)
        fake_logits = self.model.discriminator(fake.detach())
        loss_d = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
        loss_d = loss_d + F.binary_cross_entropy_with_logits(
            fake_logits, torch.zeros_like(fake_logits)
        )
        self.backward(loss_d)
        self.step(self.optimizers["d"])

        # Generator: make the (just updated) discriminator call its fakes real.
        fooled_logits = self.model.discriminator(fake)
        loss_g = F.binary_cross_entropy_with_logits(fooled_logits, torch.ones_like(fooled_logits))
        self.backward(loss_g)
        self.step(self.optimizers["g"])

        self.log("train/loss_d", loss_d)
        self.log("train/d_acc_real", (real_logits > 0).float().mean())
        self.log("train/d_acc_fake", (fake_logits < 0).float().mean())
        return {"loss": loss_g.detach()}

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """The discriminator's accuracy on held-out digits and on as many new fakes."""
        real, _ = batch
        noise = torch.randn(len(real), self.model.noise_dim, device=real.device)
        fake = self.model.generator(noise)
        return {
            "d_acc_real": (self.model.discriminator(real) > 0).float().mean(),
            "d_acc_fake": (self.model.discriminator(fake) < 0).float().mean(),
        }


def save_digit_grid(images: torch.Tensor, path: Path, columns: int = 8) -> None:
    """Tile flat 8x8 images with values in [0, 1] into one grayscale PNG."""
    from matplotlib.image import imsave  # optional: matplotlib is needed for pictures only

    rows = len(images) // columns
    framed = F.pad(images[: rows * columns].reshape(-1, 8, 8), (0, 1, 0, 1), value=0.5)
    grid = framed.reshape(rows, columns, 9, 9).permute(0, 2, 1, 3).reshape(rows * 9, columns * 9)
    imsave(path, grid.cpu().numpy(), cmap="gray", vmin=0, vmax=1)


class SampleGrid(Callback):
    """At each epoch end, save the generator's images of fixed noise as samples_epoch{E:03d}.png.

    The noise comes from its own generator, so drawing samples leaves the run's random
    stream (and an exact resume) untouched.
    """

    def __init__(self, count: int = 32) -> None:
        self.count = count

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        """Draw the samples and write them into `trainer.log_dir`."""
        if not trainer.is_global_zero or trainer.log_dir is None:
            return
        model = trainer.model
        noise = torch.randn(self.count, model.noise_dim, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            images = model.generator(noise.to(trainer.device))
        save_digit_grid(images, trainer.log_dir / f"samples_epoch{trainer.epoch:03d}.png")


def make_trainer(
    epochs: int, run_dir: str | Path, callbacks: list[Callback] | None = None, **options: Any
) -> GANTrainer:
    """The example's GAN trainer on the digits; `callbacks` join the sample grid."""
    seed_everything(0)  # the initial weights
    data = DigitsData(batch_size=64)
    return GANTrainer(
        GeneratorAndDiscriminator(),
        train_loader=data.train_loader(),
        val_loader=data.val_loader(),
        max_epochs=epochs,
        callbacks=[SampleGrid(), *(callbacks or [])],
        run_dir=run_dir,
        progress_bar=False,
        seed=0,
        **options,
    )


def _largest_change(network: nn.Module, before: torch.Tensor) -> float:
    return (parameters_to_vector(network.parameters()).detach() - before).abs().max().item()


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train the GAN; return the discriminator's accuracies and how far each network moved."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--run-dir", default="runs/gan_digits")
    args = parser.parse_args(argv)

    trainer = make_trainer(args.epochs, args.run_dir)
    generator, discriminator = trainer.model.generator, trainer.model.discriminator
    generator_before = parameters_to_vector(generator.parameters()).detach().clone()
    discriminator_before = parameters_to_vector(discriminator.parameters()).detach().clone()
    history = trainer.fit()
    last = history[-1]
    samples = sorted(trainer.log_dir.glob("samples_epoch*.png"))
    print(
        f"discriminator accuracy, last epoch: real {last['train/d_acc_real']:.2f}, "
        f"fake {last['train/d_acc_fake']:.2f}; held out: real {last['val/d_acc_real']:.2f}, "
        f"fake {last['val/d_acc_fake']:.2f} (1.0 on fakes: the generator lost)"
    )
    print(f"losses: discriminator {last['train/loss_d']:.3f}, generator {last['train/loss_g']:.3f}")
    print(f"{len(samples)} sample grids in {trainer.log_dir}, the last: {samples[-1].name}")
    return {
        "d_acc_real": last["train/d_acc_real"],
        "d_acc_fake": last["train/d_acc_fake"],
        "generator_change": _largest_change(generator, generator_before),
        "discriminator_change": _largest_change(discriminator, discriminator_before),
        "sample_files": float(len(samples)),
    }


if __name__ == "__main__":
    main()
