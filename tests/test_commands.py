"""`trainer.commands`: what each command does once its config is built: `fit` keeps the config
with the run, and the commands that take `--ckpt_path` start from that checkpoint's weights
through the trainer's public `load_weights`."""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path

import pytest

from trainer import commands
from trainer.config import Job, build_job, load_config

CONFIG = """
seed: 0
model:
  class_path: trainer.models.MLP
  hidden: [16]
data:
  class_path: trainer.data.DigitsData
  batch_size: 64
loss_fn:
  class_path: torch.nn.CrossEntropyLoss
optimizer:
  class_path: torch.optim.AdamW
  lr: 0.01
trainer:
  max_epochs: 2
  run_dir: {run_dir}
  progress_bar: false
  logger: false
  device: cpu
"""


def _job(run_dir: Path) -> Job:
    path = run_dir.parent / "config.yaml"
    path.write_text(textwrap.dedent(CONFIG.format(run_dir=run_dir)))
    return build_job(load_config([path]))


def _first_loss_of_a_sweep(run_dir: Path, ckpt_path: str | None) -> float:
    commands.lr_find(_job(run_dir), ckpt_path, [], min_lr=1e-7, max_lr=1e-6, num_steps=3)
    with (run_dir / "lr_find.csv").open(newline="") as file:
        return float(next(csv.DictReader(file))["raw_loss"])


def test_fit_keeps_the_resolved_config_in_the_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    commands.fit(_job(run_dir), None)
    saved = (run_dir / "version_0" / "config.yaml").read_text()
    assert "hidden:\n  - 16" in saved or "hidden: [16]" in saved
    assert "run files:" in capsys.readouterr().out


def test_lr_find_from_a_checkpoint_starts_from_its_trained_weights(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    commands.fit(_job(run_dir), None)
    untrained = _first_loss_of_a_sweep(run_dir, None)
    trained = _first_loss_of_a_sweep(run_dir, "last")
    assert trained < 0.75 * untrained  # two epochs of digits (1.3), initial weights (2.4)
