"""Run folders: every training run from scratch gets its own `run_dir/version_N/`.

Two runs sharing a `run_dir` must never overwrite, rotate away or resume each other's files.
So `run_dir` names a family of runs, as in Lightning: each run from scratch claims the next
`version_N` (N one more than the highest there, created with `mkdir`, which only one process
can win), and keeps its TensorBoard events, `metrics.csv`, `config.yaml` and `checkpoints/`
there. `"last"` continues the newest version that has a valid checkpoint, in that same
folder. The folder is chosen when `fit` starts, on rank 0, and shared with every rank; a
`Trainer` keeps it for its later calls. A `run_dir/checkpoints/` of a trainer older than
versions still counts, as the oldest run, continued in `run_dir` itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.checkpoint import (
    CheckpointError,
    best_checkpoint,
    find_checkpoint,
    newest_valid_checkpoint,
)

if TYPE_CHECKING:
    from trainer.distributed import Distributed

__all__ = [
    "VERSION_PREFIX",
    "RunFolder",
    "claim_new_version",
    "find_in_run",
    "home_of",
    "run_homes",
]

VERSION_PREFIX = "version_"
Found = tuple[Path, dict[str, Any]]


class RunFolder:
    """A `run_dir` and the version folder (`log_dir`) this trainer writes in once chosen."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.log_dir: Path | None = None
        self._found: Found | None = None  # rank 0's loaded checkpoint, not sent to others

    def start(self, ckpt_path: str | Path | None, distributed: Distributed) -> Found | None:
        """Choose the folder as `fit` starts; return the checkpoint to resume from, if any.

        Rank 0 chooses (and claims a new version); every rank gets the same folder and file.
        """
        log_dir, path = distributed.from_zero(
            "choose the run's folder", self._choose, ckpt_path
        )
        self.log_dir = Path(log_dir)
        found, self._found = self._found, None
        if path is None or found is not None:
            return found
        return find_checkpoint(path, self.log_dir / "checkpoints")

    def find(self, ckpt_path: str | Path) -> Found | None:
        """`"last"`, `"best"` or a path, for validate/test/predict; creates no folder."""
        if ckpt_path not in ("last", "best") or self.log_dir is not None:
            return find_checkpoint(ckpt_path, (self.log_dir or self.run_dir) / "checkpoints")
        found = find_in_run(ckpt_path, self.run_dir)
        return found[1] if found is not None else None

    def _choose(self, ckpt_path: str | Path | None) -> tuple[str, str | None]:
        """The run's folder and the checkpoint file to resume, as text for other ranks."""
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
        home = home or claim_new_version(self.run_dir)
        return str(home), str(found[0]) if found is not None else None


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
    if problems:
        raise CheckpointError(f"no valid checkpoint in {run_dir}:\n  " + "\n  ".join(problems))
    if ckpt_path == "best":
        raise CheckpointError(f"no checkpoint in {run_dir}, so no best one either.")
    return None


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
