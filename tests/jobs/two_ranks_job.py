"""Two processes in a real gloo process group train into one run folder.

    python two_ranks_job.py RUN_DIR

Each rank prints `rank R is_global_zero=...`; the test checks that only rank 0 wrote the
event file and the CSV and printed progress lines.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer import Trainer


def train(rank: int, run_dir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{run_dir.parent / 'store'}", rank=rank, world_size=2
    )
    try:
        torch.manual_seed(0)
        inputs, targets = torch.randn(40, 8), torch.randint(0, 3, (40,))
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        trainer = Trainer(
            model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            loss_fn=nn.CrossEntropyLoss(),
            train_loader=DataLoader(TensorDataset(inputs, targets), batch_size=8),
            val_loader=DataLoader(TensorDataset(inputs, targets), batch_size=8),
            max_epochs=2,
            device="cpu",
            run_dir=run_dir,
            checkpoint=False,  # which rank saves is the distributed module's business
        )
        trainer.fit()
        print(f"rank {rank} is_global_zero={trainer.is_global_zero}", flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    # fork: the ranks start with torch already imported, in a fraction of the time of spawn.
    mp.start_processes(train, args=(Path(sys.argv[1]),), nprocs=2, start_method="fork")
