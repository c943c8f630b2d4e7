"""The GAN of `examples/gan_digits.py` as a subprocess, so a resume test can really kill it.

    PYTHONPATH=REPOSITORY python gan_job.py RUN_DIR [--resume] [--slow SECONDS]

It trains for `EPOCHS` epochs with a checkpoint every 4 steps, prints `STEP n BATCH i EPOCH e`
after every batch, and at the end saves its final state (both networks, both optimizers) to
RUN_DIR/final.ckpt for the test to compare.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from print_steps import PrintSteps

from examples import gan_digits
from trainer.callbacks import ModelCheckpoint

EPOCHS = 3  # 20 batches an epoch: 60 steps


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
