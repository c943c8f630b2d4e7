"""A 2-rank job for the accumulation test: padded sequences of different lengths per rank,
windows of two micro-batches (the epoch's last window short), `num_items` as the token count.

    python accumulation_job.py RUN_DIR --items {tensor,int}

Each rank prints `RANK r EPOCH e BATCH i IDX j k l` per batch (the sequences it trained on),
so the test can rebuild every window's concatenated batch over both ranks; rank 0 saves the
final weights to RUN_DIR/final.pt.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

import torch
from token_steps import TokenTrainer, token_data, token_model
from torch.utils.data import DataLoader

from trainer import Trainer
from trainer.callbacks import Callback
from trainer.distributed import Distributed

SEQUENCES, BATCH, WINDOW, EPOCHS, LR = 30, 3, 2, 2, 0.5  # 5 batches per rank: windows 2, 2, 1


class PrintIndices(Callback):
    def on_train_batch_end(self, trainer: Trainer, outputs: Any, batch: Any, idx: int) -> None:
        indices = " ".join(str(int(i)) for i in batch[0])
        rank = trainer.distributed.rank
        print(f"RANK {rank} EPOCH {trainer.epoch} BATCH {idx} IDX {indices}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--items", default="tensor")
    args = parser.parse_args()
    torch.set_num_threads(1)
    TokenTrainer.items_as = args.items
    trainer = TokenTrainer(
        token_model(),
        optimizer=functools.partial(torch.optim.SGD, lr=LR),
        train_loader=DataLoader(token_data(SEQUENCES), batch_size=BATCH),
        accumulate_grad_batches=WINDOW, max_epochs=EPOCHS, seed=0, run_dir=args.run_dir,
        progress_bar=False, logger=False, checkpoint=False,
        strategy=Distributed("auto", timeout=120), callbacks=[PrintIndices()],
    )  # fmt: skip
    trainer.fit()
    if trainer.distributed.rank == 0:
        torch.save(trainer.model.state_dict(), args.run_dir / "final.pt")


if __name__ == "__main__":
    main()
