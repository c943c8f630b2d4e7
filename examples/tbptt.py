"""Lesson: truncated backprop through time, and state a Trainer subclass must checkpoint itself.

An LSTM learns to predict the next value of a noisy sine wave. The wave is cut into 16
long streams read side by side, 20 time steps per batch, so each batch is a `[time,
stream, 1]` tensor: dimension 0 is time, not the batch, and the step says its batch size
(`"batch_size"` in the dict it returns) for the epoch means. Backpropagating through a whole
stream would be slow and unstable, so each batch backpropagates through its own 20 steps
only, but the LSTM's hidden state is carried from one batch to the next (detached: the
values go on, the graph is cut). That is truncated backprop through time.

The hidden state lives on the `Trainer` subclass, between batches, where the checkpoint
does not look unless told: the subclass returns it from `state_dict()` and takes it back in
`load_state_dict(state)`. Resumed mid-epoch from a checkpoint, it ends with exactly the
weights of the uninterrupted run. A subclass that forgets `load_state_dict` does not crash:
its resumed run restarts the LSTM from a blank state in mid-stream and quietly ends with
other weights.

    python examples/tbptt.py
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainer import Trainer, seed_everything
from trainer.callbacks import ModelCheckpoint


class TimeSteps(Dataset):
    """Item t of a `[time, stream, 1]` series: its values at t and, as targets, at t + 1."""

    def __init__(self, series: torch.Tensor) -> None:
        self.series = series

    def __len__(self) -> int:
        return len(self.series) - 1

    def __getitem__(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.series[t], self.series[t + 1]


class NoisySine:
    """A noisy sine wave in `streams` consecutive pieces, read `bptt` time steps at a time."""

    def __init__(self, streams: int = 16, length: int = 400, bptt: int = 20, noise: float = 0.05):
        generator = torch.Generator().manual_seed(0)
        time = torch.arange(streams * (length + 1)) * 0.2
        wave = torch.sin(time) + noise * torch.randn(len(time), generator=generator)
        self.series = wave.reshape(streams, length + 1).T.unsqueeze(-1)  # [time, stream, 1]
        self.bptt = bptt

    def train_loader(self) -> DataLoader:
        """Batches of `[bptt, streams, 1]` inputs and targets, in time order (never shuffled)."""
        return DataLoader(TimeSteps(self.series), batch_size=self.bptt)


class NextValue(nn.Module):
    """An LSTM over `[time, stream, 1]` inputs and a linear read-out of the next value."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.lstm = nn.LSTM(1, hidden)  # sequence first, as the batches come
        self.head = nn.Linear(hidden, 1)

    def forward(self, inputs: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """Predictions at every time step, and the LSTM's state after the last one."""
        outputs, state = self.lstm(inputs, state)
        return self.head(outputs), state


class TBPTTTrainer(Trainer):
    """Carries the LSTM's state from batch to batch, and through checkpoints."""

    hidden: tuple[torch.Tensor, torch.Tensor] | None = None

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        """Predict the batch's next values, starting from the state the last batch left."""
        inputs, targets = batch
        if batch_idx == 0:  # a new pass over the streams starts from a blank state
            self.hidden = None
        predictions, hidden = self.model(inputs, self.hidden)
        # Keep the values for the next batch; cut the graph, so backprop stops at this batch.
        self.hidden = (hidden[0].detach(), hidden[1].detach())
        return {"loss": F.mse_loss(predictions, targets), "batch_size": inputs.shape[1]}

    def state_dict(self) -> dict[str, Any]:
        """The hidden state, saved in every checkpoint."""
        return {"hidden": self.hidden}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take the hidden state back when a run resumes."""
        self.hidden = state["hidden"]


class ForgetfulTBPTTTrainer(TBPTTTrainer):
    """The same, but `load_state_dict` is left as `Trainer`'s, which takes nothing back."""

    load_state_dict = Trainer.load_state_dict


def train(
    trainer_class: type[TBPTTTrainer],
    epochs: int,
    run_dir: Path,
    ckpt_path: Path | None = None,
    **options: Any,
) -> TBPTTTrainer:
    """A fresh model (the same initial weights each time) trained by `trainer_class`."""
    seed_everything(0)
    model = NextValue()
    trainer = trainer_class(
        model,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        train_loader=NoisySine().train_loader(),
        max_epochs=epochs,
        run_dir=run_dir,
        progress_bar=False,
        logger=False,
        seed=0,
        device="cpu",
        **options,
    )
    trainer.fit(ckpt_path=ckpt_path)
    return trainer


def _largest_difference(a: nn.Module, b: nn.Module) -> float:
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    return max((x - y).abs().max().item() for x, y in pairs)


def _identical(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train straight through; resume from a mid-epoch checkpoint with and without the state."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--resume-at", type=int, default=30, help="step of the checkpoint")
    parser.add_argument("--run-dir", default="runs/tbptt")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)

    saver = ModelCheckpoint(every_n_steps=args.resume_at, every_n_epochs=0, keep_last=100)
    straight = train(TBPTTTrainer, args.epochs, run_dir / "straight", callbacks=[saver])
    (checkpoint,) = straight.checkpoint_dir.glob(f"last-epoch=*-step={args.resume_at}.ckpt")
    resumed = train(TBPTTTrainer, args.epochs, run_dir / "resumed", ckpt_path=checkpoint)
    forgetful = train(
        ForgetfulTBPTTTrainer, args.epochs, run_dir / "forgetful", ckpt_path=checkpoint
    )

    loss = straight.metrics["train/loss"]
    resumed_difference = _largest_difference(straight.model, resumed.model)
    forgetful_difference = _largest_difference(straight.model, forgetful.model)
    print(f"{straight.num_train_batches} batches an epoch; last epoch's loss {loss:.4f}")
    print(f"resumed from {checkpoint.name}, state restored: weights differ by {resumed_difference}")
    print(f"the same, state forgotten:           weights differ by {forgetful_difference:.2e}")
    return {
        "loss": loss,
        "batches_per_epoch": float(straight.num_train_batches),
        "resumed_identical": float(_identical(straight.model, resumed.model)),
        "forgetful_identical": float(_identical(straight.model, forgetful.model)),
        "resumed_difference": resumed_difference,
        "forgetful_difference": forgetful_difference,
    }


if __name__ == "__main__":
    main()
