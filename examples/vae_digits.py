"""Lesson: a variational autoencoder on the digits, and a step that knows which stage runs it.

The encoder maps a digit to a small Gaussian in an 8-dimensional latent space; a sample of
it goes through the decoder back to 64 pixels. The loss is the negative ELBO (evidence
lower bound) per image: how badly the decoder reconstructs the digit (a Bernoulli
log-likelihood of its pixels) plus how far the encoder's Gaussian strays from the standard
normal prior (a KL divergence). Minimising it raises the bound on the data's likelihood.
The subclass names that loss `train/neg_elbo` with `log_loss_as`, and logs both parts.

Pictures of reconstructions belong to validation: at each epoch's validation the first
batch's digits and their reconstructions are saved as `reconstructions_epoch{E:03d}.png`
in the run folder. `test_step` calls `validation_step` by default, so the step checks
`self.stage == "validate"`; `trainer.test(...)` then measures without writing pictures.

    python examples/vae_digits.py
    trainer fit --config configs/vae_digits.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer import Trainer, seed_everything
from trainer.data import DigitsData


class VAE(nn.Module):
    """An MLP encoder to a latent Gaussian (mean, log-variance) and an MLP decoder back."""

    def __init__(self, latent_dim: int = 8, hidden: int = 128) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, 64)
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Pixel logits of the reconstruction, and the latent Gaussian's mean and log-variance."""
        mean, log_var = self.encoder(images).chunk(2, dim=-1)
        # The reparameterisation trick: sample as mean + noise * std, so gradients reach both.
        # Evaluation decodes the mean itself, so its figures do not depend on the noise.
        latent = mean + torch.randn_like(mean) * (0.5 * log_var).exp() if self.training else mean
        return self.decoder(latent), mean, log_var


class VAETrainer(Trainer):
    """Minimises the negative ELBO; validation saves pictures of reconstructions."""

    log_loss_as = "train/neg_elbo"  # the returned loss, under its own name (not train/loss)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """The negative ELBO of a batch of digits; its two parts are logged as well."""
        figures = self._elbo_figures(batch[0])
        self.log("train/reconstruction", figures["reconstruction"])
        self.log("train/kl", figures["kl"])
        return figures["neg_elbo"]

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """The same figures on held-out digits; at validation, a picture of the first batch."""
        images = batch[0]
        figures = self._elbo_figures(images)
        logits = figures.pop("logits")
        # test_step calls this method too: only fit's (and validate's) validation draws.
        if self.stage == "validate" and batch_idx == 0 and self.log_dir and self.is_global_zero:
            path = self.log_dir / f"reconstructions_epoch{self.epoch:03d}.png"
            save_digit_grid(torch.cat([images[:16], torch.sigmoid(logits[:16])]), path)
        return figures

    def _elbo_figures(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, mean, log_var = self.model(images)
        per_image = len(images)
        reconstruction = F.binary_cross_entropy_with_logits(logits, images, reduction="sum")
        kl = -0.5 * (1 + log_var - mean.pow(2) - log_var.exp()).sum()
        return {
            "neg_elbo": (reconstruction + kl) / per_image,
            "reconstruction": reconstruction / per_image,
            "kl": kl / per_image,
            "logits": logits,
        }


def save_digit_grid(images: torch.Tensor, path: Path, columns: int = 8) -> None:
    """Tile flat 8x8 images with values in [0, 1] into one grayscale PNG."""
    from matplotlib.image import imsave  # optional: matplotlib is needed for pictures only

    rows = len(images) // columns
    framed = F.pad(images[: rows * columns].reshape(-1, 8, 8), (0, 1, 0, 1), value=0.5)
    grid = framed.reshape(rows, columns, 9, 9).permute(0, 2, 1, 3).reshape(rows * 9, columns * 9)
    imsave(path, grid.cpu().numpy(), cmap="gray", vmin=0, vmax=1)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train the VAE, then test it; return the ELBO figures and the pictures each stage wrote."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--run-dir", default="runs/vae_digits")
    args = parser.parse_args(argv)

    seed_everything(0)
    data = DigitsData(batch_size=64)
    model = VAE()
    trainer = VAETrainer(
        model,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        train_loader=data.train_loader(),
        val_loader=data.val_loader(),
        max_epochs=args.epochs,
        run_dir=args.run_dir,
        progress_bar=False,
        seed=0,
    )
    history = trainer.fit()
    after_fit = len(list(trainer.log_dir.glob("reconstructions_epoch*.png")))
    tested = trainer.test(data.test_loader())
    after_test = len(list(trainer.log_dir.glob("reconstructions_epoch*.png")))
    first, last = history[0], history[-1]
    print(
        f"negative ELBO per image, validation: {first['val/neg_elbo']:.1f} -> "
        f"{last['val/neg_elbo']:.1f} (reconstruction {last['val/reconstruction']:.1f} + "
        f"KL {last['val/kl']:.1f}); test: {tested['test/neg_elbo']:.1f}"
    )
    print(f"reconstruction pictures: {after_fit} after fit, {after_test - after_fit} added by test")
    return {
        "first_train_neg_elbo": first["train/neg_elbo"],
        "last_train_neg_elbo": last["train/neg_elbo"],
        "first_val_neg_elbo": first["val/neg_elbo"],
        "last_val_neg_elbo": last["val/neg_elbo"],
        "test_neg_elbo": tested["test/neg_elbo"],
        "pictures_after_fit": float(after_fit),
        "pictures_added_by_test": float(after_test - after_fit),
    }


if __name__ == "__main__":
    main()
