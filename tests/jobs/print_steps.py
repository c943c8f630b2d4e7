"""The step-printing callback of the jobs that tests kill: each batch's end is one line, so a
test can signal the job at a step of its choosing."""

from __future__ import annotations

import time
from typing import Any

from trainer import Trainer
from trainer.callbacks import Callback


class PrintSteps(Callback):
    """Prints `STEP n BATCH i EPOCH e` after every batch (`RANK r STEP ...` when `with_rank`),
    then sleeps `slow` seconds, which gives a test time to act between two steps."""

    def __init__(self, slow: float, with_rank: bool = False) -> None:
        self.slow = slow
        self.with_rank = with_rank

    def on_train_batch_end(self, trainer: Trainer, outputs: Any, batch: Any, idx: int) -> None:
        rank = f"RANK {trainer.distributed.rank} " if self.with_rank else ""
        print(f"{rank}STEP {trainer.global_step} BATCH {idx} EPOCH {trainer.epoch}", flush=True)
        time.sleep(self.slow)
