"""`import trainer` stays light: optional libraries load only when a feature needs them."""

from __future__ import annotations

import subprocess
import sys

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
