"""`import trainer` stays light: optional libraries load only when a feature needs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

OPTIONAL = ("tensorboard", "omegaconf", "safetensors", "torchvision", "sklearn", "matplotlib")


def test_import_trainer_loads_no_optional_library() -> None:
    code = (
        "import sys, trainer, trainer.callbacks; "
        f"print([m for m in {OPTIONAL!r} if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_building_a_trainer_loads_no_tensorboard_and_a_default_fit_does(tmp_path: Path) -> None:
    """The default logger imports tensorboard's writer when a run starts, not before."""
    code = """
import sys, torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from trainer import Trainer

data = TensorDataset(torch.randn(32, 8), torch.randint(0, 3, (32,)))
model = nn.Linear(8, 3)
trainer = Trainer(
    model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=nn.CrossEntropyLoss(),
    train_loader=DataLoader(data, batch_size=8), val_loader=DataLoader(data, batch_size=8),
    max_epochs=2, log_every_n_steps=2, run_dir=sys.argv[1],
)
print([m for m in ("tensorboard", "google.protobuf", "omegaconf", "yaml") if m in sys.modules])
trainer.fit()
print([m for m in ("tensorboard", "omegaconf") if m in sys.modules])
"""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", code, str(run_dir)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    lines = result.stdout.strip().splitlines()
    assert (lines[0], lines[-1]) == ("[]", "['tensorboard']")
    written = {path.name.split(".")[0] for path in run_dir.rglob("*") if path.is_file()}
    assert {"events", "metrics"} <= written, written
