"""Lesson: LBFGS, an optimizer that evaluates the loss many times per step, through a closure.

A degree-5 polynomial is fitted by least squares to 200 noisy points of a cubic. The
features x, x^2, ..., x^5 are strongly correlated on [-1, 1], so the loss surface is a long
narrow valley: gradient descent zigzags across it and crawls along it. LBFGS builds up an
estimate of the curvature from its recent gradients and walks down the valley.

LBFGS calls the loss again and again within one `optimizer.step(closure)`, so the
`Trainer` subclass sets `automatic_optimization = False` and hands the step a closure that
recomputes the loss and calls `self.backward(loss)`. With the same number of optimizer
steps, LBFGS reaches the exact least-squares fit while plain SGD (at about the largest
learning rate that does not diverge) is still far above it; SGD given as many gradient
evaluations as LBFGS used is still short of it.

    python examples/lbfgs_regression.py
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer import Trainer, seed_everything


def polynomial_data(points: int = 200, degree: int = 5, noise: float = 0.1) -> TensorDataset:
    """Features x..x^degree of points on [-1, 1], and a cubic of x plus Gaussian noise."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(points, 1, generator=generator) * 2 - 1
    targets = (
        1 - 2 * x + 0.5 * x**2 + 3 * x**3 + noise * torch.randn(points, 1, generator=generator)
    )
    features = torch.cat([x**power for power in range(1, degree + 1)], dim=1)
    return TensorDataset(features, targets)


class LBFGSTrainer(Trainer):
    """Steps LBFGS with a closure, and counts the closure's loss evaluations."""

    automatic_optimization = False  # LBFGS needs the closure: the step owns the update
    evaluations = 0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """LBFGS with a line search: up to 20 evaluations per step."""
        return torch.optim.LBFGS(
            self.model.parameters(), max_iter=20, line_search_fn="strong_wolfe"
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """One LBFGS step; the loss returned is the one after it."""
        inputs, targets = batch

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad()
            loss = F.mse_loss(self.model(inputs), targets)
            self.backward(loss)
            self.evaluations += 1
            return loss

        self.step(self.optimizer, closure)
        with torch.no_grad():
            return F.mse_loss(self.model(inputs), targets)


def least_squares_loss(data: TensorDataset) -> float:
    """The mean squared error of the exact least-squares fit (features plus a bias column)."""
    features, targets = data.tensors
    design = torch.cat([features, torch.ones(len(features), 1)], dim=1)
    solution = torch.linalg.lstsq(design, targets).solution
    return F.mse_loss(design @ solution, targets).item()


def fit(trainer_class: type[Trainer], steps: int, optimizer: Any = None) -> tuple[Trainer, float]:
    """Fit a fresh linear model on the full data set for `steps` steps; return its final loss."""
    seed_everything(0)
    data = polynomial_data()
    model = nn.Linear(data.tensors[0].shape[1], 1)
    trainer = trainer_class(
        model,
        optimizer=optimizer(model.parameters()) if optimizer else None,
        loss_fn=nn.MSELoss(),
        train_loader=DataLoader(data, batch_size=len(data)),  # full batch: one step an epoch
        max_epochs=steps,
        progress_bar=False,
        logger=False,
        checkpoint=False,
        device="cpu",
    )
    trainer.fit()
    with torch.no_grad():
        return trainer, F.mse_loss(model(data.tensors[0]), data.tensors[1]).item()


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Fit with LBFGS and with SGD; return their final losses and the lowest one possible."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sgd-lr", type=float, default=0.5, help="1.0 already diverges")
    args = parser.parse_args(argv)

    def sgd(params: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=args.sgd_lr)

    lbfgs, lbfgs_loss = fit(LBFGSTrainer, args.steps)
    _, sgd_loss = fit(Trainer, args.steps, sgd)
    _, sgd_long_loss = fit(Trainer, lbfgs.evaluations, sgd)
    best = least_squares_loss(polynomial_data())
    print(f"exact least squares (the lowest loss there is): {best:.4f}")
    print(f"LBFGS, {args.steps} steps ({lbfgs.evaluations} loss evaluations): {lbfgs_loss:.4f}")
    print(f"SGD lr {args.sgd_lr}, {args.steps} steps:                      {sgd_loss:.4f}")
    print(
        f"SGD lr {args.sgd_lr}, {lbfgs.evaluations} steps:                     {sgd_long_loss:.4f}"
    )
    return {
        "lbfgs_loss": lbfgs_loss,
        "sgd_loss": sgd_loss,
        "sgd_same_evaluations_loss": sgd_long_loss,
        "evaluations": float(lbfgs.evaluations),
        "least_squares_loss": best,
    }


if __name__ == "__main__":
    main()
