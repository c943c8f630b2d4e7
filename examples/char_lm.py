"""Lesson: a tiny character-level language model, a small transformer, with a custom step.

The model reads 32 characters and, at every position, predicts the next one; its loss is
the cross-entropy of those predictions. A batch here is not `(inputs, targets)` but one
tensor of character ids, so the `Trainer` subclass writes its own `training_step` and
`validation_step`: the inputs are a window, the targets the same window shifted by one.
It also logs bits per character (the loss in base 2), the figure language models report.

The text is the Zen of Python (`import this`), which every Python installation carries, so
nothing is downloaded. After training the model writes text from a prompt, one character
at a time; on a text this small it learns to recite it, which is what the lesson shows:
the loss falls from log2(vocabulary) bits to well under one bit per character.

    python examples/char_lm.py
    trainer fit --config configs/char_lm.yaml
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainer import Trainer, seed_everything


def zen_of_python() -> str:
    """The text `import this` prints, decoded from the module without printing it."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, "rot13")


class CharWindows(Dataset):
    """Every window of `block_size + 1` consecutive characters, as character ids."""

    def __init__(self, ids: torch.Tensor, block_size: int) -> None:
        self.ids, self.block_size = ids, block_size

    def __len__(self) -> int:
        return len(self.ids) - self.block_size

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.ids[index : index + self.block_size + 1]


class ZenText:
    """The Zen of Python as character windows; the last `val_fraction` is held out."""

    def __init__(self, block_size: int = 32, batch_size: int = 32, val_fraction: float = 0.1):
        self.text = zen_of_python()
        self.vocabulary = sorted(set(self.text))
        ids = self.encode(self.text)
        split = int(len(ids) * (1 - val_fraction))
        self.train_set = CharWindows(ids[:split], block_size)
        self.val_set = CharWindows(ids[split - block_size :], block_size)
        self.block_size, self.batch_size = block_size, batch_size

    def encode(self, text: str) -> torch.Tensor:
        """Character ids of `text`."""
        return torch.tensor([self.vocabulary.index(char) for char in text])

    def decode(self, ids: torch.Tensor) -> str:
        """The text of character ids."""
        return "".join(self.vocabulary[int(i)] for i in ids)

    def train_loader(self) -> DataLoader:
        """Shuffled batches of windows, each of shape (batch, block_size + 1)."""
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_loader(self) -> DataLoader:
        """Windows of the held-out end of the text."""
        return DataLoader(self.val_set, batch_size=128)


class TinyTransformer(nn.Module):
    """A decoder-only transformer: embeddings, causal self-attention blocks, a linear head."""

    def __init__(
        self,
        vocab_size: int = 40,
        block_size: int = 32,
        dim: int = 64,
        heads: int = 4,
        layers: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.token = nn.Embedding(vocab_size, dim)
        self.position = nn.Embedding(block_size, dim)
        block = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Scores of the next character at every position: (batch, time) -> (batch, time, vocab)."""
        length = ids.shape[1]
        positions = torch.arange(length, device=ids.device)
        hidden = self.token(ids) + self.position(positions)
        # Each position may attend only to itself and earlier ones: no peeking at the answer.
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=ids.device)
        hidden = self.blocks(hidden, mask=causal, is_causal=True)
        return self.head(self.norm(hidden))


def zen_model(
    block_size: int = 32, dim: int = 64, heads: int = 4, layers: int = 2, dropout: float = 0.1
) -> TinyTransformer:
    """A `TinyTransformer` sized to the Zen of Python's characters, for configs."""
    vocab_size = len(set(zen_of_python()))
    return TinyTransformer(vocab_size, block_size, dim, heads, layers, dropout)


class LanguageModelTrainer(Trainer):
    """Batches are windows of ids; the targets are the inputs shifted by one character."""

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Next-character cross-entropy over every position of every window."""
        loss = self._next_char_loss(batch)
        self.log("train/bits_per_char", loss / math.log(2))
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        """The same loss on held-out text, and its bits per character."""
        loss = self._next_char_loss(batch)
        return {"loss": loss, "bits_per_char": loss / math.log(2)}

    def _next_char_loss(self, batch: torch.Tensor) -> torch.Tensor:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        scores = self.model(inputs)
        return F.cross_entropy(scores.reshape(-1, scores.shape[-1]), targets.reshape(-1))


@torch.inference_mode()
def generate(model: TinyTransformer, data: ZenText, prompt: str, length: int) -> str:
    """Continue `prompt` by `length` characters, each time taking the likeliest next one."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = data.encode(prompt).to(device)
    for _ in range(length):
        scores = model(ids[-data.block_size :].unsqueeze(0))
        ids = torch.cat([ids, scores[0, -1].argmax().reshape(1)])
    model.train(was_training)
    return data.decode(ids)


def main(argv: list[str] | None = None) -> dict[str, float | str]:
    """Train the model; return its first and last losses and a generated sample."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--prompt", default="Beautiful is ")
    parser.add_argument("--run-dir", default="runs/char_lm")
    args = parser.parse_args(argv)

    seed_everything(0)
    data = ZenText()
    model = TinyTransformer(vocab_size=len(data.vocabulary), block_size=data.block_size)
    trainer = LanguageModelTrainer(
        model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3),
        train_loader=data.train_loader(),
        val_loader=data.val_loader(),
        max_epochs=args.epochs,
        gradient_clip_val=1.0,
        run_dir=args.run_dir,
        progress_bar=False,
        seed=0,
    )
    history = trainer.fit()
    sample = generate(model, data, args.prompt, length=60)
    first, last = history[0], history[-1]
    print(
        f"{len(data.text)} characters, {len(data.vocabulary)} distinct; chance is "
        f"{math.log2(len(data.vocabulary)):.2f} bits per character"
    )
    print(
        f"training: {first['train/bits_per_char']:.2f} -> {last['train/bits_per_char']:.2f} "
        f"bits per character; held-out text: {last['val/bits_per_char']:.2f}"
    )
    print(f"sample: {sample!r}")
    return {
        "first_bits": first["train/bits_per_char"],
        "last_bits": last["train/bits_per_char"],
        "val_bits": last["val/bits_per_char"],
        "sample": sample,
        "chance_bits": math.log2(len(data.vocabulary)),
    }


if __name__ == "__main__":
    main()
