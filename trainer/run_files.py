"""A run's files: its version folder, finding `"last"` and `"best"`, rotation, the sweep of
files that dead saves left, and errors that say which of these went wrong.

Two runs sharing a `run_dir` must never overwrite, rotate away or resume each other's files.
So `run_dir` names a family of runs, as in Lightning: each run from scratch claims the next
`version_N` (N one more than the highest there, created with `mkdir`, which only one process
can win), and keeps its TensorBoard events, `metrics.csv`, `config.yaml` and `checkpoints/`
there. `"last"` continues the newest version that has a valid checkpoint, in that same
folder: its most recently saved file that loads (by the time each file records, never by the
step in its name). The folder is chosen when `fit` starts, on rank 0, and shared with every
rank; a `Trainer` keeps it for its later calls. A `run_dir/checkpoints/` of a trainer older
than versions still counts, as the oldest run, continued in `run_dir` itself. `RunFiles`
also owns the queue that finishes this trainer's saves in the background, so every load and
every rotation here comes after them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.background import BackgroundWrites
from trainer.checkpoint import (
    CheckpointError,
    export_weights,
    is_stale_temporary,
    load_checkpoint,
    save_checkpoint,
    saved_at_ns,
)

if TYPE_CHECKING:
    import torch

    from trainer.distributed import Distributed

__all__ = [
    "KEEP_LAST",
    "VERSION_PREFIX",
    "NoBestCheckpointError",
    "NoCheckpointError",
    "NoValidCheckpointError",
    "NotARunCheckpointError",
    "RunFiles",
    "best_checkpoint",
    "check_run_checkpoint",
    "claim_new_version",
    "find_checkpoint",
    "find_in_run",
    "home_of",
    "last_checkpoint_name",
    "newest_checkpoint_files",
    "newest_valid_checkpoint",
    "remove_stale_temporary_files",
    "rotate_last_checkpoints",
    "run_homes",
]

VERSION_PREFIX = "version_"
KEEP_LAST = 2  # last-state files kept in a folder unless a callback there declares otherwise
Found = tuple[Path, dict[str, Any]]


class NoCheckpointError(CheckpointError):
    """Nothing is saved where a checkpoint was asked for: the run has not trained yet."""


class NoValidCheckpointError(CheckpointError):
    """Checkpoints are there but none can be used; the message names each and why."""


class NoBestCheckpointError(CheckpointError):
    """`"best"` was asked of a run that ranked no checkpoint by a monitored metric."""


class NotARunCheckpointError(CheckpointError):
    """A checkpoint file that lacks the parts a resume reads (not written by `fit`)."""


class RunFiles:
    """A `run_dir`, the version folder (`log_dir`) this trainer writes in once chosen, and
    the queue (`writes`) that finishes its saves in the background.

    `writes_files=False` (a `fast_dev_run`) claims no folder: `log_dir` stays None, and a
    checkpoint to resume from is still found and read.
    """

    def __init__(self, run_dir: Path, writes_files: bool = True) -> None:
        self.run_dir = run_dir
        self.writes_files = writes_files
        self.log_dir: Path | None = None
        self.writes = BackgroundWrites()
        self._found: Found | None = None  # rank 0's loaded checkpoint, not sent to others

    @property
    def checkpoint_dir(self) -> Path | None:
        """`log_dir/checkpoints`, None before a folder is chosen."""
        return self.log_dir / "checkpoints" if self.log_dir is not None else None

    def start(self, ckpt_path: str | Path | None, distributed: Distributed) -> Found | None:
        """Choose the folder as `fit` starts; return the checkpoint to resume from, if any.

        Rank 0 chooses (and claims a new version); every rank gets the same folder and file.
        """
        self.writes.wait()  # a save of an earlier fit may still be renaming its file
        log_dir, path = distributed.from_zero(
            "choose the run's folder", self._choose, ckpt_path
        )
        self.log_dir = Path(log_dir) if log_dir is not None else None
        found, self._found = self._found, None
        if path is None or found is not None:
            return found
        return find_checkpoint(path, (self.log_dir or self.run_dir) / "checkpoints")

    def find(self, ckpt_path: str | Path) -> Found:
        """`"last"`, `"best"` or a path, for validate/test/predict; creates no folder."""
        self.writes.wait()
        if ckpt_path not in ("last", "best") or self.log_dir is not None:
            found = find_checkpoint(ckpt_path, (self.log_dir or self.run_dir) / "checkpoints")
        else:
            in_run = find_in_run(ckpt_path, self.run_dir)
            found = in_run[1] if in_run is not None else None
        if found is None:
            raise NoCheckpointError(f"no checkpoint in {self.run_dir} to load.")
        return found

    def save(self, checkpoint: dict[str, Any], path: str | Path, wait: bool = True) -> Path:
        """Save `checkpoint` to `path` after this run's pending saves; `wait=False` leaves
        the `fsync` and rename to the background."""
        return save_checkpoint(checkpoint, path, self.writes, wait=wait)

    def export(self, weights: dict[str, torch.Tensor], path: str | Path) -> Path:
        """Write `weights` as a plain `.safetensors` file, after this run's pending saves."""
        return export_weights(weights, path, self.writes)

    def rotate_last_checkpoints(self, folder: Path, keep: int) -> None:
        """Once the pending saves have landed, keep the `keep` newest last-state files."""
        self.writes.after_pending(lambda: rotate_last_checkpoints(folder, keep))

    def remove(self, path: Path) -> None:
        """Delete `path` once the pending saves have landed (its successor among them)."""
        self.writes.after_pending(lambda: path.unlink(missing_ok=True))

    def _choose(self, ckpt_path: str | Path | None) -> tuple[str | None, str | None]:
        """The run's folder (None when the run writes no files) and the checkpoint file to
        resume, as text for other ranks."""
        if self.log_dir is not None:  # chosen by an earlier fit of this trainer: kept
            home = self.log_dir
            found = find_checkpoint(ckpt_path, home / "checkpoints") if ckpt_path else None
        elif ckpt_path in ("last", "best"):
            in_run = find_in_run(ckpt_path, self.run_dir)
            home, found = in_run if in_run is not None else (None, None)
        elif ckpt_path is not None:
            found = find_checkpoint(ckpt_path, self.run_dir)  # loaded before a folder is made
            home = home_of(found[0], self.run_dir) if found is not None else None
        else:
            home, found = None, None
        if ckpt_path is not None and found is None:
            print(f"No checkpoint in {self.run_dir} yet; starting from scratch.")
        self._found = found
        if home is None and self.writes_files:
            home = claim_new_version(self.run_dir)
        return (
            str(home) if home is not None else None,
            str(found[0]) if found is not None else None,
        )


# ------------------------------------------------------------------------ version folders
def run_homes(run_dir: Path) -> list[Path]:
    """The folders of `run_dir`'s runs, newest first: `version_N` by N, then a legacy run."""
    numbered = [(_version_number(path), path) for path in run_dir.glob(f"{VERSION_PREFIX}*")]
    homes = [path for number, path in sorted(numbered, reverse=True) if number is not None]
    if (run_dir / "checkpoints").is_dir():
        homes.append(run_dir)
    return homes


def claim_new_version(run_dir: Path) -> Path:
    """Create `run_dir/version_N` for a new run; `mkdir` fails for all but one claimant."""
    run_dir.mkdir(parents=True, exist_ok=True)
    numbers = [_version_number(path) for path in run_dir.glob(f"{VERSION_PREFIX}*")]
    number = max((n for n in numbers if n is not None), default=-1) + 1
    while True:
        folder = run_dir / f"{VERSION_PREFIX}{number}"
        try:
            folder.mkdir()
        except FileExistsError:  # another process started a run here at the same moment
            number += 1
            continue
        return folder


def home_of(path: Path, run_dir: Path) -> Path | None:
    """The run folder of `run_dir` whose `checkpoints/` holds `path`, or None."""
    folder = path.resolve().parent
    if folder.name != "checkpoints":
        return None
    home, root = folder.parent, run_dir.resolve()
    if home == root:
        return run_dir
    if home.parent == root and _version_number(home) is not None:
        return run_dir / home.name
    return None


def _version_number(path: Path) -> int | None:
    digits = path.name.removeprefix(VERSION_PREFIX)
    is_version = path.name.startswith(VERSION_PREFIX) and digits.isdigit() and path.is_dir()
    return int(digits) if is_version else None


# -------------------------------------------------------------------- finding "last", "best"
def find_in_run(ckpt_path: str, run_dir: Path) -> tuple[Path, Found] | None:
    """`"last"` or `"best"` of the newest run of `run_dir` with a valid checkpoint.

    Returns that run's folder and the loaded file; None when no run has a checkpoint yet.
    """
    problems: list[str] = []
    for home in run_homes(run_dir):
        found, skipped = newest_valid_checkpoint(home / "checkpoints")
        problems += [f"{home.name}/{problem}" for problem in skipped]
        if found is not None:
            if ckpt_path == "best":
                return home, best_checkpoint(found[1], home / "checkpoints")
            return home, found
    _raise_for_nothing_found(ckpt_path, run_dir, problems)
    return None


def find_checkpoint(ckpt_path: str | Path, folder: Path) -> Found | None:
    """Resolve `"last"`, `"best"` or a path to a loaded checkpoint; None if `"last"` finds none.

    `"last"` takes the most recently saved file in `folder` that loads, passes its checksum
    and holds a run's parts, telling on stderr which newer files it skipped and why.
    """
    if ckpt_path not in ("last", "best"):
        checkpoint = load_checkpoint(ckpt_path)
        check_run_checkpoint(checkpoint, ckpt_path)
        return Path(ckpt_path), checkpoint
    found, problems = newest_valid_checkpoint(folder)
    if found is not None:
        return found if ckpt_path == "last" else best_checkpoint(found[1], folder)
    _raise_for_nothing_found(str(ckpt_path), folder, problems)
    return None


def _raise_for_nothing_found(ckpt_path: str, where: Path, problems: list[str]) -> None:
    """No file of `where` could be used: an error when some were there, or for `"best"`."""
    if problems:
        raise NoValidCheckpointError(
            f"no valid checkpoint in {where}:\n  " + "\n  ".join(problems)
        )
    if ckpt_path == "best":
        raise NoCheckpointError(f"no checkpoint in {where}, so no best one either.")


def best_checkpoint(checkpoint: dict[str, Any], folder: Path) -> Found:
    """The best file that `checkpoint` records (its callbacks declared it), loaded."""
    best = checkpoint.get("best_checkpoint", _best_in_callback_states(checkpoint))
    if not best:
        raise NoBestCheckpointError(
            f"no best checkpoint recorded in {folder}; 'best' needs a "
            "ModelCheckpoint(monitor=...) in the run that saved it: train with one among "
            "the callbacks, or use 'last' for the run's newest state."
        )
    checkpoint = load_checkpoint(best)
    check_run_checkpoint(checkpoint, best)
    return Path(best), checkpoint


def _best_in_callback_states(checkpoint: dict[str, Any]) -> str:
    """Files saved before the best file had an entry of its own kept it in a callback's
    state, as `best_model_path`."""
    states = checkpoint.get("callbacks", {})
    recorded = [s.get("best_model_path") for s in states.values() if isinstance(s, dict)]
    return next((path for path in recorded if path), "")


def newest_valid_checkpoint(folder: Path) -> tuple[Found | None, list[str]]:
    """The most recently saved run checkpoint of `folder` that loads, and why newer ones don't.

    Each file skipped is named on stderr with its reason.
    """
    problems = []
    for path in newest_checkpoint_files(folder) if folder.is_dir() else []:
        try:
            checkpoint = load_checkpoint(path)
            check_run_checkpoint(checkpoint, path)
        except CheckpointError as error:
            problems.append(f"{path.name}: {error}")
            print(f"Skipping checkpoint {path}: {error}", file=sys.stderr)
            continue
        return (path, checkpoint), problems
    return None, problems


def newest_checkpoint_files(folder: Path, pattern: str = "*.ckpt") -> list[Path]:
    """The checkpoint files of `folder`, most recently saved first (none loaded).

    The order is the time each file records in its header when saved (the file's mtime for
    files that record none), never the step in its name: a run resumed from an older
    checkpoint saves lower steps than the branch it abandoned, and its files are newer.
    """
    files = [path for path in folder.glob(pattern) if not path.name.startswith(".")]
    return sorted(files, key=saved_at_ns, reverse=True)


_RUN_CHECKPOINT_PARTS = {
    "model": dict, "precision": dict, "state": dict, "data": dict, "callbacks": dict,
}  # fmt: skip
# Parts that changed shape, (newest, older): optimizers by name since format 4, a lone one
# apart before; each rank's own states in a list since format 3, rank 0's "rng" dict before.
_SHAPES_OF_PARTS = [
    ({"optimizers": dict, "schedulers": dict}, {"optimizer": dict, "scheduler": dict}),
    ({"ranks": list}, {"rng": dict}),
]
_STATE_PARTS = {"epoch": int, "global_step": int, "batches_in_epoch": int, "metrics": dict}


def check_run_checkpoint(checkpoint: Any, path: Path | str) -> None:
    """Raise `NotARunCheckpointError` naming `path` unless `checkpoint` has the parts a
    resume reads. The checksum proves a file is what was written, not that `fit` wrote it."""
    problems = _wrong_parts(checkpoint, _RUN_CHECKPOINT_PARTS, "")
    for newest, older in _SHAPES_OF_PARTS if isinstance(checkpoint, dict) else ():
        if _wrong_parts(checkpoint, older, ""):  # not the older shape, so the newest one
            problems += _wrong_parts(checkpoint, newest, "")
    if not problems:
        problems = _wrong_parts(checkpoint["state"], _STATE_PARTS, "state.")
    if problems:
        raise NotARunCheckpointError(
            f"checkpoint {path} is not a run checkpoint of this trainer: {'; '.join(problems)}."
        )


def _wrong_parts(value: Any, parts: dict[str, type], prefix: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{prefix or 'it'} is a {type(value).__name__}, not a dict"]
    missing = [f"{prefix}{key}" for key in parts if key not in value]
    problems = [f"missing {', '.join(missing)}"] if missing else []
    return problems + [
        f"{prefix}{key} is a {type(value[key]).__name__}, not a {kind.__name__}"
        for key, kind in parts.items()
        if key in value and not isinstance(value[key], kind)
    ]


# --------------------------------------------------------------------- rotation and sweep
def last_checkpoint_name(epoch: int, step: int) -> str:
    """File name of a last-state checkpoint: carries the epoch (from 0) and optimizer step."""
    return f"last-epoch={epoch}-step={step}.ckpt"


def rotate_last_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the `keep` most recently saved last-state checkpoints of `folder`."""
    for path in newest_checkpoint_files(folder, "last-*.ckpt")[keep:]:
        path.unlink(missing_ok=True)


def remove_stale_temporary_files(folder: Path) -> int:
    """Delete the temporary files of saves that died in `folder`; return how many.

    Live saves' files, those of other hosts and of trainers that name no writer stay.
    """
    removed = 0
    for path in folder.glob(".*.tmp") if folder.is_dir() else []:
        if is_stale_temporary(path):
            path.unlink(missing_ok=True)
            removed += 1
    if removed:
        print(
            f"trainer: removed {removed} temporary file(s) of interrupted saves from {folder}",
            file=sys.stderr,
        )
    return removed
