"""Lesson: a character language model trained by steps on an endless stream of documents.

Language models are trained by optimizer steps, not epochs: the data is a stream that never
ends, validation comes every few hundred steps, the learning rate warms up and then follows
a cosine, and a run stops at its step count or at the cluster's time limit, to be resumed
exactly where it was. This lesson does all of that on a small scale.

The documents are the lines of the Zen of Python (`import this`), so nothing is downloaded.
The stream draws them in a fresh shuffled order on every pass and keeps its own position
(`state_dict`), so a resumed run continues the stream without reading it again. Each line is
one sample, padded to the longest: a batch holds a different number of real characters each
time, so the training step reports `num_items` (the characters that count) and gradient
accumulation gives the very update one big batch of the same lines would.

    python examples/char_lm_stream.py
    trainer fit --config configs/char_lm_steps.yaml
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset

from examples.char_lm import TinyTransformer, zen_of_python
from trainer import Trainer, seed_everything
from trainer.schedules import warmup_cosine

PAD, START = 0, 1  # two ids before the characters': padding, and the start of a line


class ZenLines:
    """The Zen's lines as padded id rows `[START, characters..., PAD...]`, one per line."""

    def __init__(self) -> None:
        lines = [line for line in zen_of_python().splitlines() if line.strip()]
        self.vocabulary = sorted(set("".join(lines)))
        self.block_size = max(len(line) for line in lines)  # predicted positions per row
        self.rows = torch.full((len(lines), self.block_size + 1), PAD)
        for row, line in enumerate(lines):
            self.rows[row, 0] = START
            self.rows[row, 1 : len(line) + 1] = self.encode(line)

    @property
    def vocab_size(self) -> int:
        """Ids in use: padding, the start mark and every character."""
        return len(self.vocabulary) + 2

    def encode(self, text: str) -> torch.Tensor:
        """The ids of `text`'s characters."""
        return torch.tensor([self.vocabulary.index(char) + 2 for char in text])

    def decode(self, ids: torch.Tensor) -> str:
        """The text of character ids; padding and the start mark are left out."""
        return "".join(self.vocabulary[int(i) - 2] for i in ids if int(i) > START)


class LineStream(IterableDataset):
    """An endless stream of the lines, shuffled anew on every pass, that knows its position.

    `state_dict` is where the stream stands (which pass, how far into it) and
    `load_state_dict` puts it back there, so a resumed run reads on from the next line.
    """

    def __init__(self, rows: torch.Tensor, seed: int = 0) -> None:
        self.rows, self.seed = rows, seed
        self.passes, self.offset = 0, 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            order = torch.randperm(
                len(self.rows), generator=torch.Generator().manual_seed(self.seed + self.passes)
            )
            while self.offset < len(order):
                self.offset += 1  # counted before the line leaves: the position is what was read
                yield self.rows[order[self.offset - 1]]
            self.passes, self.offset = self.passes + 1, 0

    def state_dict(self) -> dict[str, int]:
        """The stream's position: passes done and lines read of the current one."""
        return {"passes": self.passes, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a position `state_dict` returned."""
        self.passes, self.offset = int(state["passes"]), int(state["offset"])


class _Rows(Dataset):
    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.rows[index]


class ZenStream:
    """The data of this lesson: the line stream for training, every line once for validation."""

    def __init__(self, batch_size: int = 8, seed: int = 0) -> None:
        self.lines = ZenLines()
        self.batch_size, self.seed = batch_size, seed

    def train_loader(self) -> DataLoader:
        """Batches of `batch_size` lines from the endless stream."""
        return DataLoader(LineStream(self.lines.rows, self.seed), batch_size=self.batch_size)

    def val_loader(self) -> DataLoader:
        """Every line once, in order: how well the model recites the text."""
        return DataLoader(_Rows(self.lines.rows), batch_size=len(self.lines.rows))


def zen_stream_model(
    dim: int = 64, heads: int = 4, layers: int = 2, dropout: float = 0.1
) -> TinyTransformer:
    """A `TinyTransformer` sized to the lines' ids and length, for configs."""
    lines = ZenLines()
    return TinyTransformer(lines.vocab_size, lines.block_size, dim, heads, layers, dropout)


class StreamLanguageModelTrainer(Trainer):
    """Each step's loss is a mean over the characters that count, and says how many those are."""

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, Any]:
        """Next-character cross-entropy over the real characters, with their count."""
        loss, characters = self._next_char_loss(batch)
        self.log("train/bits_per_char", loss / math.log(2))
        return {"loss": loss, "num_items": characters}

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        """The same loss on every line, and its bits per character."""
        loss, _ = self._next_char_loss(batch)
        return {"loss": loss, "bits_per_char": loss / math.log(2)}

    def _next_char_loss(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        scores = self.model(inputs)
        loss = F.cross_entropy(
            scores.reshape(-1, scores.shape[-1]), targets.reshape(-1), ignore_index=PAD
        )
        return loss, (targets != PAD).sum()  # stays on the device: no sync per step


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train by steps; return the first and last figures and what the run did."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--val-every", type=int, default=50, help="validate every N steps")
    parser.add_argument("--max-time", default="00:00:10:00", help="DD:HH:MM:SS budget")
    parser.add_argument("--run-dir", default="runs/char_lm_stream")
    parser.add_argument("--ckpt-path", default=None, help='"last" resumes the newest run')
    args = parser.parse_args(argv)

    seed_everything(0)  # the model's first weights; fit seeds the rest from `seed`
    data = ZenStream()
    model = zen_stream_model()
    trainer = StreamLanguageModelTrainer(
        model,
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3),
        scheduler=lambda optimizer: warmup_cosine(
            optimizer, warmup_steps=20, total_steps=args.max_steps, min_lr=3e-4
        ),
        scheduler_interval="step",
        train_loader=data.train_loader(),
        val_loader=data.val_loader(),
        max_steps=args.max_steps,
        val_check_interval=args.val_every,
        max_time=args.max_time,
        accumulate_grad_batches=2,
        gradient_clip_val=1.0,
        log_every_n_steps=10,
        run_dir=args.run_dir,
        progress_bar=False,
        seed=0,
    )
    history = trainer.fit(ckpt_path=args.ckpt_path)
    figures = trainer.metrics
    print(
        f"{trainer.global_step} steps on a stream of {len(data.lines.rows)} lines: "
        f"{figures['val/bits_per_char']:.2f} bits per character on the text "
        f"(chance {math.log2(data.lines.vocab_size):.2f})"
    )
    return {
        "steps": trainer.global_step,
        "history": history,
        "metrics": dict(figures),
        "weights": trainer.model.state_dict(),
        "chance_bits": math.log2(data.lines.vocab_size),
    }


if __name__ == "__main__":
    main()
