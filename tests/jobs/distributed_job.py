"""A training job for the distributed tests, started once per rank (or by torchrun).

    python distributed_job.py RUN_DIR [--batch-size B] [--dropout P] [--strategy S] ...

It trains an MLP on shuffled random data with gradient accumulation and a per-step
scheduler, prints `RANK r STEP n BATCH i EPOCH e` after every batch, keeps every last-state
checkpoint, and at the end saves its final state to RUN_DIR/final.ckpt. Without torchrun's
environment it runs as one plain process, the reference the tests compare ranks with.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from print_steps import PrintSteps
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer import Trainer
from trainer.callbacks import Callback, ModelCheckpoint
from trainer.distributed import Distributed

SAMPLES = 96  # 2 ranks x batch 8 x 6 batches; one process with batch 16 sees the same batches
FEATURES, CLASSES = 16, 4


class StopRequest(Callback):
    """One rank alone asks to stop, as a callback watching a local condition might."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_end(self, trainer: Trainer, outputs: Any, batch: Any, idx: int) -> None:
        if trainer.distributed.rank == self.rank and trainer.global_step == self.step:
            trainer.should_stop = True


class FailingTrainer(Trainer):
    """Raises on one rank at one optimizer step, as a bug would, or returns a NaN loss for
    one batch of one rank, as bad data would."""

    fail_rank = fail_step = nan_rank = nan_batch = -1
    frames_from_fit = 0  # calls from `fit` down to this step, as the last batch found them

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.frames_from_fit = _calls_since_fit(inspect.currentframe())
        rank = self.distributed.rank
        if rank == self.fail_rank and self.global_step == self.fail_step:
            raise RuntimeError(f"injected failure on rank {self.fail_rank}")
        loss = super().training_step(batch, batch_idx)
        is_poisoned = rank == self.nan_rank and batch_idx == self.nan_batch and self.epoch == 0
        return loss * float("nan") if is_poisoned else loss


def _calls_since_fit(frame: FrameType | None) -> int:
    calls = 0
    while frame is not None and frame.f_code is not Trainer.fit.__code__:
        frame, calls = frame.f_back, calls + 1
    return calls


def _data(samples: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(samples, FEATURES, generator=generator)
    targets = torch.randint(0, CLASSES, (samples,), generator=generator)
    return TensorDataset(inputs, targets)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--ckpt-path", default=None)
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--fail-step", type=int, default=-1)
    parser.add_argument("--nan-rank", type=int, default=-1)
    parser.add_argument("--nan-batch", type=int, default=-1)
    parser.add_argument("--nan-policy", default="raise")
    parser.add_argument("--stop-rank", type=int, default=-1)
    parser.add_argument("--stop-step", type=int, default=-1)
    parser.add_argument("--samples-on-rank-1", type=int, default=SAMPLES)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rank = int(os.environ.get("RANK", "0"))
    samples = args.samples_on_rank_1 if rank == 1 else SAMPLES
    # An empty data set cannot even be shuffled; unshuffled, it reaches the trainer's check.
    loader = DataLoader(
        _data(samples), batch_size=args.batch_size, shuffle=samples > 0, num_workers=args.workers
    )
    val_loader = DataLoader(_data(37), batch_size=5)  # uneven: 19 and 18 samples per rank
    model = nn.Sequential(
        nn.Linear(FEATURES, 32), nn.ReLU(), nn.Dropout(args.dropout), nn.Linear(32, CLASSES)
    )
    FailingTrainer.fail_rank, FailingTrainer.fail_step = args.fail_rank, args.fail_step
    FailingTrainer.nan_rank, FailingTrainer.nan_batch = args.nan_rank, args.nan_batch
    trainer = FailingTrainer(
        model,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-2),
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=loader,
        val_loader=val_loader,
        scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=4, gamma=0.9),
        scheduler_interval="step",
        accumulate_grad_batches=2,
        gradient_clip_val=1.0,
        max_epochs=args.epochs,
        seed=0,
        run_dir=args.run_dir,
        log_every_n_steps=2,
        nan_policy=args.nan_policy,
        progress_bar=False,
        logger=False,
        strategy=Distributed(args.strategy, timeout=120),
        callbacks=[
            PrintSteps(args.slow, with_rank=True),
            StopRequest(args.stop_rank, args.stop_step),
            ModelCheckpoint(every_n_steps=2, keep_last=100),
        ],
    )
    history = trainer.fit(ckpt_path=args.ckpt_path or ("last" if args.resume else None))
    trainer.save_checkpoint(args.run_dir / "final.ckpt")
    state = trainer.sharding.model_state_dict()  # FSDP: whole on rank 0 only
    weights = sum(float(tensor.double().sum()) for tensor in state.values())
    figures = history[-1] if history else {}
    print(f"RANK {rank} VAL {figures.get('val/loss')!r} WEIGHTS {weights!r}", flush=True)
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
    print(f"RANK {rank} BACKEND {backend} DEVICE {trainer.device}", flush=True)
    print(f"RANK {rank} FRAMES {trainer.frames_from_fit}", flush=True)
    print(f"RANK {rank} DONE", flush=True)


if __name__ == "__main__":
    main()
