"""Writing checkpoints so a crash never leaves a broken one, reading them without running
code, finding `"last"` / `"best"`, and capturing the random number generators.

A checkpoint is a dict of tensors and plain data, written to a temporary file in the same
folder, flushed to disk and renamed into place, and read back with
`torch.load(weights_only=True)`, which cannot execute code from the file.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "FORMAT_VERSION",
    "capture_rng_states",
    "load_checkpoint",
    "resolve_checkpoint_path",
    "restore_rng_states",
    "save_checkpoint",
]

FORMAT_VERSION = 1
LAST_NAME = "last.ckpt"


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """Write `checkpoint` to `path` atomically: the old file stays whole until the new one is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OSError(
                f"could not save checkpoint {path}: {error.strerror or error}. Free disk space "
                "or fix the folder's permissions; earlier checkpoints are intact."
            ) from error
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (not supported on every platform)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist.")
    if path.is_dir():
        raise IsADirectoryError(
            f"checkpoint {path} is a folder; pass a .ckpt file, or 'last' / 'best' with run_dir."
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(
            f"checkpoint {path} cannot be read safely ({type(error).__name__}: {error}). It is "
            "corrupt, truncated, or holds objects other than tensors and plain data."
        ) from error
    if not isinstance(checkpoint, dict) or "format_version" not in checkpoint:
        raise ValueError(f"{path} is not a trainer checkpoint (no format_version).")
    if checkpoint["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format {checkpoint['format_version']}, newer than this "
            f"version of trainer reads ({FORMAT_VERSION}); upgrade trainer."
        )
    return checkpoint


def resolve_checkpoint_path(ckpt_path: str | Path, checkpoint_dir: Path) -> Path | None:
    """Turn `"last"`, `"best"` or a path into a file; None when `"last"` finds nothing yet."""
    if ckpt_path == "last":
        last = checkpoint_dir / LAST_NAME
        return last if last.exists() else None
    if ckpt_path == "best":
        last = checkpoint_dir / LAST_NAME
        best = None
        if last.exists():
            states = load_checkpoint(last).get("callbacks", {})
            best = states.get("ModelCheckpoint", {}).get("best_model_path")
        if not best:
            raise FileNotFoundError(
                f"no best checkpoint recorded under {checkpoint_dir}; 'best' needs a "
                "ModelCheckpoint with monitor=... in a previous run of this run_dir."
            )
        return Path(best)
    return Path(ckpt_path)


def capture_rng_states() -> dict[str, Any]:
    """The state of every random number generator the loop draws from, as plain data."""
    version, mt_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": [version, list(mt_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Put every generator back to the state `capture_rng_states` recorded."""
    version, mt_state, gauss = states["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])
