"""The GAN of `examples/gan_digits.py` as a subprocess, so a resume test can really kill it.

    PYTHONPATH=REPOSITORY python gan_job.py RUN_DIR [--resume] [--slow SECONDS]

It trains for `EPOCHS` epochs with a checkpoint every 4 steps, prints `STEP n` after every
batch, and at the end saves its final state (both networks, both optimizers) to
RUN_DIR/final.ckpt for the test to compare.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from examples import gan_digits
from trainer import Trainer
from trainer.callbacks import Callback, ModelCheckpoint

EPOCHS = 3  # 20 batches an epoch: 60 steps


class PrintSteps(Callback):
    def __init__(self, slow: float) -> None:
        self.slow = slow

    def on_train_batch_end(self, trainer: Trainer, outputs: Any, batch: Any, idx: int) -> None:
        print(f"STEP {trainer.global_step}", flush=True)
        time.sleep(self.slow)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--slow", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    callbacks = [PrintSteps(args.slow), ModelCheckpoint(every_n_steps=4)]
    trainer = gan_digits.make_trainer(EPOCHS, args.run_dir, callbacks, device="cpu")
    trainer.fit(ckpt_path="last" if args.resume else None)
    trainer.save_checkpoint(args.run_dir / "final.ckpt")
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
