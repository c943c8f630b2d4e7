"""A training job run as a subprocess by the resume tests, so it can really be killed.

    python resumable_job.py RUN_DIR WORKERS [--resume] [--slow SECONDS] [--device DEVICE]
        [--precision PRECISION]

It trains an MLP with dropout on shuffled data with gradient accumulation, a per-step
scheduler and a checkpoint every 3 optimizer steps, prints `STEP n` after every batch, and
at the end saves its final state to RUN_DIR/final.ckpt for the test to compare. It prints
`DEVICE name` first; on CUDA its dropout masks come from the CUDA generator, so an exact
resume there needs the CUDA RNG state restored as well.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import torch
from print_steps import PrintSteps
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer import Trainer
from trainer.callbacks import EarlyStopping, ModelCheckpoint

EPOCHS = 5
SAMPLES = 84  # 11 batches of 8 (the last one short): windows of 2 leave a short last window


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("workers", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="32")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(SAMPLES, 16, generator=generator)
    targets = torch.randint(0, 4, (SAMPLES,), generator=generator)
    loader = DataLoader(
        TensorDataset(inputs, targets), batch_size=8, shuffle=True, num_workers=args.workers
    )
    val_loader = DataLoader(TensorDataset(inputs[:32], targets[:32]), batch_size=16)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4))
    trainer = Trainer(
        model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=loader,
        val_loader=val_loader,
        scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=4, gamma=0.9),
        scheduler_interval="step",
        accumulate_grad_batches=2,
        max_epochs=EPOCHS,
        seed=0,
        device=args.device,
        precision=args.precision,
        run_dir=args.run_dir,
        log_every_n_steps=2,
        progress_bar=False,
        callbacks=[
            PrintSteps(args.slow),
            EarlyStopping(monitor="val/loss", patience=100),
            ModelCheckpoint(every_n_steps=3),
        ],
    )
    print(f"DEVICE {trainer.device}", flush=True)
    trainer.fit(ckpt_path="last" if args.resume else None)
    trainer.save_checkpoint(args.run_dir / "final.ckpt")
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
