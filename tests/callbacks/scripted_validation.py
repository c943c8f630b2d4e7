"""A trainer whose validation figures follow a script, so tests decide when a run improves.

Kept beside the callback tests that rank or stop on monitored figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from conftest import make_trainer
from torch import nn

from trainer import Trainer


class ScriptedValidation(Trainer):
    """Trains for real, but validation reports scripted figures: `script[name][epoch]`."""

    def __init__(
        self, model: nn.Module, *, script: dict[str, Sequence[float]], **kwargs: Any
    ) -> None:
        super().__init__(model, **kwargs)
        self.script = script

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        return {name: torch.tensor(values[self.epoch]) for name, values in self.script.items()}


def scripted_trainer(
    run_dir: Path, script: dict[str, Sequence[float]], **overrides: Any
) -> ScriptedValidation:
    """A quiet run of as many epochs as the script has values."""
    model = overrides.pop("model", None)
    overrides.setdefault("max_epochs", len(next(iter(script.values()))))
    return make_trainer(
        run_dir, model, trainer_class=ScriptedValidation, script=script, **overrides
    )
