"""`OverfittingMonitor`: warn when training loss keeps falling while validation loss rises.

This is the rule every tutorial teaches for reading the two loss curves: once the model gets
better on the data it trains on and worse on data it has not seen, for several evaluations
in a row, it is memorising. The callback says so with the epoch numbers, and can stop the run.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from trainer.callbacks.base import Callback
from trainer.callbacks.monitor import Monitor

if TYPE_CHECKING:
    from trainer.trainer import Trainer

__all__ = ["OverfittingMonitor", "OverfittingWarning"]


class OverfittingWarning(UserWarning):
    """Training loss fell while validation loss rose for `patience` evaluations in a row."""


class OverfittingMonitor(Callback):
    """Warn (and optionally stop) when `train` falls while `val` rises `patience` times in a row.

    Args:
        patience: how many consecutive epochs must show the pattern.
        train: the epoch figure of the training loss.
        val: the validation loss.
        min_delta: a change smaller than this counts as neither a fall nor a rise.
        stop: also end training once the warning is given.

    Epochs are numbered from 1 in the message, as the progress bar numbers them.

    Example:
        >>> Trainer(model, ..., callbacks=[OverfittingMonitor(patience=3, stop=True)])
    """

    def __init__(
        self,
        patience: int = 3,
        train: str = "train/loss",
        val: str = "val/loss",
        min_delta: float = 0.0,
        stop: bool = False,
    ) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive integer, got {patience!r}.")
        self.patience = patience
        self.train = Monitor(train, "min", min_delta)
        self.val = Monitor(val, "min", min_delta)
        self.stop = stop
        self.streak: list[tuple[int, float, float]] = []  # (epoch, train, val), oldest first
        self.warned_at: list[int] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        """Refuse a run without validation, where there is nothing to compare."""
        if trainer.val_loader is None:
            raise ValueError(
                "OverfittingMonitor compares training and validation loss, but this Trainer "
                "has no val_loader; pass val_loader=... or remove the callback."
            )

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        """Extend or break the streak with this epoch's two losses; warn when it is long."""
        train = self.train.read(trainer.metrics, "OverfittingMonitor")
        val = self.val.read(trainer.metrics, "OverfittingMonitor")
        if self.streak:
            _, last_train, last_val = self.streak[-1]
            is_diverging = self.train.is_improvement(train, last_train) and (
                self.val.is_improvement(last_val, val)  # val rose: the old value beats it
            )
            if not is_diverging:
                self.streak = []
        self.streak.append((trainer.epoch + 1, train, val))
        if len(self.streak) == self.patience + 1:  # patience rises after a starting epoch
            self._warn(trainer)

    def _warn(self, trainer: Trainer) -> None:
        (first, train_from, val_from), (last, train_to, val_to) = self.streak[0], self.streak[-1]
        self.warned_at.append(last)
        action = "stopping training" if self.stop else "pass stop=True to stop at this point"
        warnings.warn(
            f"the model is overfitting: from epoch {first} to epoch {last}, "
            f"{self.train.name} fell ({train_from:.4g} -> {train_to:.4g}) while "
            f"{self.val.name} rose ({val_from:.4g} -> {val_to:.4g}) for {self.patience} "
            f"epochs in a row; {action}. The weights of epoch {first} generalised best of "
            "these: EarlyStopping(restore_best_weights=True), more data, augmentation, "
            "dropout or weight decay are the usual remedies.",
            OverfittingWarning,
            stacklevel=2,
        )
        if self.stop:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        """The current streak, so a resumed run warns at the same epoch."""
        return {"streak": [list(entry) for entry in self.streak], "warned_at": self.warned_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the streak saved by `state_dict`."""
        self.streak = [(int(e), float(t), float(v)) for e, t, v in state["streak"]]
        self.warned_at = [int(epoch) for epoch in state["warned_at"]]
