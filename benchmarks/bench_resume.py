"""What resuming a stream costs, by how far into it the checkpoint was taken.

    python benchmarks/bench_resume.py                 # k = 10 and 10,000 batches, 5 rounds
    python benchmarks/bench_resume.py --steps 10 1000 100000 --rounds 3

A run that stops at batch k of a stream and resumes must find batch k + 1. A stream that
keeps its own position (`state_dict()` / `load_state_dict()`, on the data set or on
torchdata's `StatefulDataLoader`) is put back there through that protocol; one without
state is read from its start and its first k batches are thrown away. For each kind, this
trains k steps (the stream is the lines of `examples/char_lm_stream.py`, the model a
bigram table, so a step is cheap), keeps the checkpoint, then resumes from it `--rounds`
times and measures from calling `fit(ckpt_path=...)` to the start of the first training
batch: the checkpoint's load plus whatever the position costs. Each resume also checks that
its first batch is the one the straight run trained on next, so a fast wrong resume cannot
pass. Printed: the median and range of each kind at each k, and each kind's ratio of its
largest k to its smallest (1.0: the cost does not grow with k).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # this checkout's trainer and examples

from examples.char_lm_stream import LineStream, ZenLines  # noqa: E402
from trainer import Trainer  # noqa: E402
from trainer.callbacks import Callback  # noqa: E402

BATCH = 8


class _LinesWithoutState(IterableDataset):
    """The same endless stream of lines, with no way to say where it stands."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.stream = LineStream(rows)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(LineStream(self.stream.rows, self.stream.seed))


def _loaders() -> dict[str, Callable[[], Any]]:
    rows = ZenLines().rows
    kinds: dict[str, Callable[[], Any]] = {
        "stream without state (replay)": lambda: DataLoader(_LinesWithoutState(rows), BATCH),
        "stream with state_dict": lambda: DataLoader(LineStream(rows), BATCH),
    }
    try:
        from torchdata.stateful_dataloader import StatefulDataLoader
    except ImportError:
        print("torchdata is not installed: its StatefulDataLoader is left out")
    else:
        kinds["torchdata StatefulDataLoader"] = lambda: StatefulDataLoader(LineStream(rows), BATCH)
    return kinds


class _Bigram(Trainer):
    """Next-character loss of a bigram table; it keeps each batch it trains on."""

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.seen.append(batch)
        scores = self.model(batch[:, :-1])
        return nn.functional.cross_entropy(scores.flatten(0, 1), batch[:, 1:].flatten())


class _FirstBatchClock(Callback):
    """The moment the first training batch begins."""

    def __init__(self) -> None:
        self.at: float | None = None

    def on_train_batch_start(self, trainer: Any, batch: Any, batch_idx: int) -> None:
        if self.at is None:
            self.at = time.perf_counter()


def _trainer(loader: Any, max_steps: int, run_dir: Path, **options: Any) -> _Bigram:
    torch.manual_seed(0)
    model = nn.Embedding(ZenLines().vocab_size, ZenLines().vocab_size)
    trainer = _Bigram(
        model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=None,
        train_loader=loader, max_steps=max_steps, progress_bar=False, logger=False,
        run_dir=run_dir, device="cpu", seed=0, **options,
    )  # fmt: skip
    trainer.seen = []
    return trainer


def _measure(
    make_loader: Callable[[], Any], is_replayed: bool, steps: int, rounds: int, folder: Path
) -> list[float]:
    """Seconds from `fit(ckpt_path)` to the first batch, resuming at batch `steps`; the
    resume says it replays exactly when `is_replayed`."""
    straight = _trainer(make_loader(), steps + 1, folder / "straight", checkpoint=False)
    straight.fit()
    expected = straight.seen[-1]  # the batch after the first `steps`
    stopped = _trainer(make_loader(), steps, folder / "stopped")
    stopped.fit()
    (saved,) = (folder / "stopped").glob(f"version_0/checkpoints/*step={steps}.ckpt")
    kept = folder / "kept.ckpt"
    shutil.copyfile(saved, kept)
    seconds = []
    for round_ in range(rounds):
        clock = _FirstBatchClock()
        resumed = _trainer(make_loader(), steps + 1, folder / f"resumed{round_}",
                           checkpoint=False, callbacks=[clock])  # fmt: skip
        said = io.StringIO()
        began = time.perf_counter()
        with contextlib.redirect_stderr(said):
            resumed.fit(ckpt_path=kept)
        assert clock.at is not None
        seconds.append(clock.at - began)
        if not torch.equal(resumed.seen[0], expected):
            raise AssertionError(f"resumed at batch {steps}, the first batch is not the next one")
        replays = f"replaying {steps} batch" in said.getvalue()
        if replays != is_replayed:
            raise AssertionError(f"expected replay: {is_replayed}; the resume said {said!r}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 10_000])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # the stream without state is warned about when saved
    print(f"torch {torch.__version__}, {args.rounds} resumes each, batches of {BATCH} lines")
    print(f"{'loader':32} {'k':>7} {'median ms':>10} {'min':>8} {'max':>8}")
    for kind, make_loader in _loaders().items():
        medians = []
        for steps in args.steps:
            with tempfile.TemporaryDirectory() as folder:
                seconds = _measure(make_loader, "replay" in kind, steps, args.rounds, Path(folder))
            medians.append(statistics.median(seconds))
            print(f"{kind:32} {steps:>7,} {medians[-1] * 1e3:>10.1f} "
                  f"{min(seconds) * 1e3:>8.1f} {max(seconds) * 1e3:>8.1f}")  # fmt: skip
        print(f"{'':32} k={args.steps[-1]:,} over k={args.steps[0]:,}: "
              f"{medians[-1] / medians[0]:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
