"""`ModelCheckpoint`: save the run's state at epoch ends, every N steps or every so much
training time, keep the last one and the best `save_top_k` by a monitored metric."""

from __future__ import annotations

import math
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.callbacks.base import BestEpoch, Callback, CheckpointFolder
from trainer.callbacks.monitor import Monitor
from trainer.loop_schedule import parse_duration
from trainer.run_files import KEEP_LAST, last_checkpoint_name, remove_stale_temporary_files

if TYPE_CHECKING:
    from trainer.trainer import Trainer

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(Callback):
    """Save checkpoints under `dirpath` (the run's `checkpoints/` folder by default).

    Args:
        monitor: metric that ranks checkpoints, such as `"val/loss"`; None keeps no ranking.
            Every validation `fit` runs is ranked: at epoch ends, and right after each
            `val_check_interval` validation inside an epoch (a run without a `val_loader`
            ranks its epoch ends).
        mode: `"min"` or `"max"` for `monitor`.
        save_top_k: how many ranked checkpoints to keep (-1 keeps all).
        save_last: also save the newest state as `last-epoch=E-step=S.ckpt`, for
            `fit(ckpt_path="last")`; the `keep_last` most recently saved such files are
            kept (by save time, not step), so a damaged newest file still leaves one to
            resume from.
        every_n_epochs: save at the end of every N-th epoch (0 disables epoch saves).
        every_n_steps: also save every N optimizer steps, mid-epoch.
        train_time_interval: also save once this much wall-clock time (a `timedelta` or
            seconds) has passed in `fit` since the last save, at the next step boundary
            (under several ranks, at a step where they agree on it: a log step).
        dirpath: folder for the files, used as given; None asks the trainer for its run's
            `checkpoint_dir` (`run_dir/version_N/checkpoints`) at each save.
        keep_last: how many last-state files to keep (at least 1).

    Ranked files are named `epoch=E-step=S.ckpt`, with the epoch counted from 0.
    """

    writes_checkpoints = True

    def __init__(
        self,
        monitor: str | None = None,
        mode: str = "min",
        save_top_k: int = 1,
        save_last: bool = True,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        dirpath: str | Path | None = None,
        keep_last: int = KEEP_LAST,
        train_time_interval: timedelta | float | None = None,
    ) -> None:
        if save_top_k < -1:
            raise ValueError(f"save_top_k must be -1 (keep all) or >= 0, got {save_top_k}.")
        timed = every_n_steps or train_time_interval
        if not save_last and (monitor is None or timed):
            raise ValueError(
                "ModelCheckpoint(save_last=False) would save nothing"
                + (" every_n_steps or train_time_interval" if timed else "")
                + ": step saves and unranked saves write last-state files. Set save_last=True"
                + ("" if timed else ", or monitor=... to keep the best checkpoints")
                + "."
            )
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}.")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or None, got {every_n_steps}.")
        self.monitor = Monitor(monitor, mode) if monitor else None
        self.save_top_k = save_top_k
        self.save_last = save_last
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.train_time_interval = parse_duration(train_time_interval, "train_time_interval")
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.keep_last = keep_last
        self.best_k: dict[str, float] = {}
        self.best_model_path = ""
        self.last_model_path = ""
        self._saved_step = 0
        self._saved_at = time.monotonic()  # when the last save (or fit's start) was
        self._ranked_step = -1

    @property
    def best_model_score(self) -> float | None:
        """The monitored value of `best_model_path`, None before a ranked save."""
        return self.best_k.get(self.best_model_path)

    @property
    def best_model_epoch(self) -> int | None:
        """The epoch (from 0) of `best_model_path`, read from its name; None before one."""
        match = re.fullmatch(r"epoch=(\d+)-step=\d+\.ckpt", Path(self.best_model_path).name)
        return int(match.group(1)) if match else None

    def folder(self, trainer: Trainer) -> Path | None:
        """Where the files go: `dirpath`, else the trainer's `checkpoint_dir`."""
        return self.dirpath or trainer.checkpoint_dir

    def checkpoint_folder(self, trainer: Trainer) -> CheckpointFolder | None:
        """Its folder and `keep_last`, which a save on a signal honours too."""
        folder = self.folder(trainer)
        return CheckpointFolder(folder, self.keep_last) if folder is not None else None

    def best_so_far(self) -> BestEpoch | None:
        """The best ranked checkpoint's epoch, value and file; None before a ranked save."""
        epoch, score = self.best_model_epoch, self.best_model_score
        if self.monitor is None or epoch is None or score is None:
            return None
        return BestEpoch(self.monitor.name, score, epoch, self.best_model_path)

    def uses_hook(self, hook: str) -> bool:
        """Skip the per-batch hook when no step, time or ranked saves are asked for (the
        usual case)."""
        is_busy = self.every_n_steps or self.train_time_interval or self.monitor is not None
        is_idle = hook == "on_train_batch_end" and not is_busy
        if is_idle and self._hook_is_from(ModelCheckpoint, hook):
            return False
        return super().uses_hook(hook)

    def on_fit_start(self, trainer: Trainer) -> None:
        """Sweep the files of saves that died in the folder. A resumed state is saved already."""
        self._saved_step = trainer.global_step
        self._saved_at = time.monotonic()  # a resumed run counts its own training time
        folder = self.folder(trainer)
        if trainer.is_global_zero and folder is not None:
            remove_stale_temporary_files(folder)

    def on_train_end(self, trainer: Trainer) -> None:
        """Save the state training stopped in, unless a save already holds it."""
        if trainer.global_step != self._saved_step:
            self._save_last(trainer)

    def on_train_batch_end(
        self, trainer: Trainer, outputs: dict[str, Any], batch: Any, batch_idx: int
    ) -> None:
        """Rank a validation just run inside the epoch; save the last state every
        `every_n_steps` optimizer steps or `train_time_interval` of training time."""
        step, state = trainer.global_step, trainer.state
        if not state.is_window_end(trainer.num_train_batches):
            return  # inside an accumulation window: no step was taken
        is_ranked = self.monitor is not None and self.save_top_k != 0
        if is_ranked and state.is_validated and state.is_mid_epoch and step != self._ranked_step:
            self._save_ranked(trainer)
        if step == self._saved_step:
            return
        if self.every_n_steps and step % self.every_n_steps == 0:
            self._save_last(trainer)
        elif self.train_time_interval is not None and self._is_time_due(trainer):
            self._save_last(trainer)

    def _is_time_due(self, trainer: Trainer) -> bool:
        """`train_time_interval` has passed since the last save; several ranks decide it
        together at the steps where they agree on stopping, as their clocks differ."""
        assert self.train_time_interval is not None
        is_due = time.monotonic() - self._saved_at >= self.train_time_interval
        every = trainer.distributed.agree_every_n_steps or trainer.log_every_n_steps
        is_agreed_step = trainer.global_step % every == 0
        return trainer.distributed.agree(is_due, 0, is_due=is_agreed_step)[0]

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        """Save ranked and last checkpoints at the end of every `every_n_epochs`-th epoch;
        the ranking only when the epoch end validated (or the run has no validation)."""
        if not self.every_n_epochs or (trainer.epoch + 1) % self.every_n_epochs:
            return
        is_judged = trainer.val_loader is None or trainer.state.is_validated
        is_new = trainer.global_step != self._ranked_step  # a stream's last step may be ranked
        if self.monitor is not None and self.save_top_k != 0 and is_judged and is_new:
            self._save_ranked(trainer)
        self._save_last(trainer)

    def _save_last(self, trainer: Trainer) -> None:
        if not self.save_last:
            return
        folder = self.folder(trainer)
        assert folder is not None  # chosen when fit started
        self._saved_step = trainer.global_step
        self._saved_at = time.monotonic()
        path = folder / last_checkpoint_name(trainer.epoch, trainer.global_step)
        self.last_model_path = str(path)  # before saving, so the file records its own path
        # The fsync and rename finish in the background; old files go only after them.
        trainer.save_checkpoint(path, wait=False)
        if trainer.is_global_zero:  # one process manages the files
            trainer.run_files.rotate_last_checkpoints(folder, self.keep_last)

    def _save_ranked(self, trainer: Trainer) -> None:
        folder = self.folder(trainer)
        assert self.monitor is not None and folder is not None
        score = self.monitor.read(trainer.metrics, "ModelCheckpoint")
        self._ranked_step = trainer.global_step
        if math.isnan(score):  # NaN compares false both ways and would corrupt the ranking
            score = self.monitor.worst()
        if self.save_top_k != -1 and len(self.best_k) >= self.save_top_k:
            worst = self._worst_path()
            if not self.monitor.is_improvement(score, self.best_k[worst]):
                return
        path = folder / f"epoch={trainer.epoch}-step={trainer.global_step}.ckpt"
        self.best_k[str(path)] = score
        best_score = self.best_k.get(self.best_model_path, self.monitor.worst())
        if self.monitor.is_improvement(score, best_score):
            self.best_model_path = str(path)
        trainer.save_checkpoint(path, wait=False)
        while self.save_top_k != -1 and len(self.best_k) > self.save_top_k:
            self._remove(self._worst_path(), trainer)

    def _worst_path(self) -> str:
        pick = max if self.monitor is not None and self.monitor.mode == "min" else min
        return pick(self.best_k, key=self.best_k.__getitem__)

    def _remove(self, path: str, trainer: Trainer) -> None:
        del self.best_k[path]
        file = Path(path)
        is_ours = file.parent == self.folder(trainer)
        if is_ours and trainer.is_global_zero and path != self.best_model_path:
            trainer.run_files.remove(file)

    def state_dict(self) -> dict[str, Any]:
        """The ranking and paths, so a resumed run keeps rotating the same files."""
        return {
            "best_k": dict(self.best_k),
            "best_model_path": self.best_model_path,
            "last_model_path": self.last_model_path,
            "ranked_step": self._ranked_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the ranking saved by `state_dict`."""
        self.best_k = {str(path): float(score) for path, score in state["best_k"].items()}
        self.best_model_path = str(state["best_model_path"])
        self.last_model_path = str(state["last_model_path"])
        self._ranked_step = int(state.get("ranked_step", -1))
