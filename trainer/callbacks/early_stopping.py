"""`EarlyStopping`: end training when a monitored metric stops improving."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch

from trainer.callbacks.base import BestEpoch, Callback
from trainer.callbacks.monitor import Monitor
from trainer.callbacks.progress import write_line

if TYPE_CHECKING:
    from trainer.trainer import Trainer

__all__ = ["EarlyStopping"]


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by `min_delta` for `patience` validations.

    The check runs after every validation `fit` runs: at epoch ends by default, and every
    `val_check_interval` steps when that is set, so `patience` counts validations (epochs,
    when each epoch validates once at its end). A run without a `val_loader` checks at each
    epoch end. `trainer.validate()` and the sanity pass are not counted. With
    `restore_best_weights`, the model gets the weights of its best validation back when
    training ends.

    Example:
        >>> stop = EarlyStopping(monitor="val/acc", mode="max", patience=5)
    """

    def __init__(
        self,
        monitor: str = "val/loss",
        mode: str = "min",
        patience: int = 3,
        min_delta: float = 0.0,
        restore_best_weights: bool = False,
    ) -> None:
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}.")
        self.monitor = Monitor(monitor, mode, min_delta)
        self.patience = patience
        self.restore_best_weights = restore_best_weights
        self.best = self.monitor.worst()
        self.best_epoch: int | None = None
        self.best_step: int | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.stopped_step: int | None = None
        self.judged_step = -1
        self._counts = "epochs"  # what `wait` counts, for the message: epochs or validations
        self._best_weights: dict[str, torch.Tensor] | None = None
        self._is_loaded = False  # state came from a checkpoint, for this fit() to act on

    def on_fit_start(self, trainer: Trainer) -> None:
        """Resumed from the checkpoint of the step at which it stopped the run, the run
        stays stopped, as the straight run did; a larger `patience` trains on. (A second
        `fit()` in the same process trains on: it asks for more.)"""
        is_resumed_where_stopped = (
            self._is_loaded
            and self.stopped_step == trainer.global_step
            and self.wait >= self.patience
        )
        self._is_loaded = False
        if is_resumed_where_stopped:
            assert self.stopped_epoch is not None
            trainer.should_stop = True
            if trainer.is_global_zero:
                write_line(
                    f"EarlyStopping ended this run at step {self.stopped_step} (epoch "
                    f"{self.stopped_epoch + 1}), where its checkpoint was saved: nothing more "
                    f"to train. A larger patience than {self.patience} trains on."
                )

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After a `val_check_interval` validation inside an epoch: judge it."""
        if trainer.schedule.is_validating and trainer.state.is_mid_epoch:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        """At an epoch end that validated (or in a run without validation): judge it."""
        if trainer.val_loader is None or trainer.state.is_validated:
            self._check(trainer)

    def _check(self, trainer: Trainer) -> None:
        """Compare the latest value with the best so far; ask the trainer to stop if stale.
        A step is judged once (a stream's last step validates before its epoch ends)."""
        if trainer.global_step == self.judged_step:
            return
        self.judged_step = trainer.global_step
        value = self.monitor.read(trainer.metrics, "EarlyStopping")
        self._counts = "validations" if trainer.schedule.validates_mid_epoch else "epochs"
        if self.monitor.is_improvement(value, self.best):
            self.best, self.best_epoch, self.wait = value, trainer.epoch, 0
            self.best_step = trainer.global_step
            if self.restore_best_weights:
                self._best_weights = copy.deepcopy(trainer.model.state_dict())
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch, self.stopped_step = trainer.epoch, trainer.global_step
            trainer.should_stop = True
            if trainer.is_global_zero:
                write_line(self.reason(value))

    def best_so_far(self) -> BestEpoch | None:
        """The epoch with the best value so far; its weights are in no file."""
        if self.best_epoch is None:
            return None
        return BestEpoch(self.monitor.name, self.best, self.best_epoch)

    def stop_reason(self) -> str | None:
        """`"early stopping"` once it has stopped a run."""
        return "early stopping" if self.stopped_epoch is not None else None

    def reason(self, value: float) -> str:
        """One line saying when and why training stopped; epochs count from 1, as the
        progress bar counts them."""
        assert self.stopped_epoch is not None
        name, delta = self.monitor.name, self.monitor.min_delta
        by = f" by more than {delta:g}" if delta else ""
        unit = self._counts
        if self.best_epoch is None:  # NaN from the start: nothing ever counted as a best
            best = f"no {unit[:-1]} gave a value to compare"
        elif unit == "epochs":
            best = f"best {self.best:.4g} at epoch {self.best_epoch + 1}"
        else:
            best = f"best {self.best:.4g} at step {self.best_step} (epoch {self.best_epoch + 1})"
        where = f"after epoch {self.stopped_epoch + 1}"
        if unit != "epochs":
            where = f"at step {self.stopped_step} (epoch {self.stopped_epoch + 1})"
        waited = f"{self.wait} {unit if self.wait != 1 else unit[:-1]}"
        return (
            f"Early stopping {where}: {name} is {value:.4g} and "
            f"has not improved{by} for {waited} (patience {self.patience}); {best}."
        )

    def on_fit_end(self, trainer: Trainer) -> None:
        """Put the best epoch's weights back when asked to."""
        if self.restore_best_weights and self._best_weights is not None:
            trainer.model.load_state_dict(self._best_weights)

    def state_dict(self) -> dict[str, Any]:
        """Counters, the best value (and weights), so a resumed run stops at the same
        validation."""
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "stopped_step": self.stopped_step,
            "judged_step": self.judged_step,
            "best_weights": self._best_weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters saved by `state_dict`."""
        self.best = float(state["best"])
        self.best_epoch = state["best_epoch"]
        self.wait = int(state["wait"])
        self.stopped_epoch = state["stopped_epoch"]
        self.best_step = state.get("best_step")
        self.stopped_step = state.get("stopped_step")
        self.judged_step = int(state.get("judged_step", -1))
        self._best_weights = state.get("best_weights")
        self._is_loaded = True
