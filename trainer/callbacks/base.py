"""`Callback`, the hook vocabulary, what a callback declares to the loop, and `CallbackList`,
which dispatches the hooks.

A callback declares what the loop, the defaults, the stop path and the report must know of
it, so none of them asks for its type: whether it writes checkpoints (`writes_checkpoints`)
or other files (`writes_files`), the folder it keeps last-state files in and how many
(`checkpoint_folder`), the best epoch it has judged and the file holding it (`best_so_far`),
why it stopped training (`stop_reason`) and an address that shows the run
(`dashboard_url`). The base class declares nothing. `CallbackList` works out once per run
which callbacks use which hook, so a hook that nobody uses costs one dictionary lookup and a
callback that uses nothing costs nothing at all. A callback uses the hooks it overrides,
minus those its `uses_hook` declines for its settings (a checkpoint callback without step
saves has nothing to do after each batch).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from trainer.trainer import Trainer

__all__ = ["HOOKS", "BestEpoch", "Callback", "CallbackList", "CheckpointFolder"]


@dataclass(frozen=True)
class CheckpointFolder:
    """Where a callback keeps last-state checkpoints, and how many of them it keeps."""

    folder: Path
    keep_last: int


@dataclass(frozen=True)
class BestEpoch:
    """The best epoch a callback has judged: by which metric, its value then, the epoch
    (from 0), and the checkpoint holding its weights ("" when none is kept)."""

    monitor: str
    value: float
    epoch: int
    path: str = ""


class Callback:
    """Base class of everything that reacts to the training loop.

    Override only the hooks you need; each receives the trainer first. A callback with
    state also implements `state_dict` / `load_state_dict`, and that state travels in
    checkpoints.

    Example:
        >>> class PrintLoss(Callback):
        ...     def on_train_epoch_end(self, trainer):
        ...         print(trainer.epoch, trainer.metrics.get("train/loss"))
    """

    writes_checkpoints: ClassVar[bool] = False
    """Whether this callback saves checkpoints. Such callbacks run on every rank (a save
    gathers every rank's state) and after all others, so a file holds their states too."""

    writes_files: ClassVar[bool] = False
    """Whether this callback writes other files (logs, configs, traces); a run that writes
    no files (`fast_dev_run`) leaves such callbacks, and those that write checkpoints, out."""

    def checkpoint_folder(self, trainer: Trainer) -> CheckpointFolder | None:
        """The folder this callback keeps last-state checkpoints in, and how many; None when
        it keeps none. A save on a signal keeps as many as the callbacks of its folder ask."""
        return None

    def best_so_far(self) -> BestEpoch | None:
        """The best epoch this callback has judged so far, for `"best"` and the end-of-run
        report; None when it judges none."""
        return None

    def stop_reason(self) -> str | None:
        """A few words saying why this callback stopped training (`"early stopping"`), for
        the end-of-run report; None when it did not stop it."""
        return None

    def dashboard_url(self, trainer: Trainer) -> str | None:
        """An address that opens this callback's view of the run, for the end-of-run report;
        None when it has none."""
        return None

    def on_fit_start(self, trainer: Trainer) -> None:
        """When `fit` begins, after a checkpoint (if any) has been loaded."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """When `fit` finishes without an exception."""

    def on_train_end(self, trainer: Trainer) -> None:
        """When training stops without an exception (epochs done, `max_steps`, `should_stop`),
        before the figures of an epoch cut short are validated and before `on_fit_end`."""

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        """Before the first training batch of an epoch."""

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        """After a finished epoch's training and validation, with its figures in
        `trainer.metrics`; an epoch cut short ends in the run that resumes it."""

    def on_train_batch_start(self, trainer: Trainer, batch: Any, batch_idx: int) -> None:
        """Before `training_step`, with the batch already on the device."""

    def on_train_batch_end(
        self, trainer: Trainer, outputs: dict[str, Any], batch: Any, batch_idx: int
    ) -> None:
        """After a batch's backward pass and, on an accumulation boundary, its optimizer step."""

    def on_before_optimizer_step(
        self, trainer: Trainer, optimizer: torch.optim.Optimizer
    ) -> None:
        """Before the optimizer steps, with gradients unscaled and clipped."""

    def on_validation_start(self, trainer: Trainer) -> None:
        """Before the first validation batch."""

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After the last validation batch, with the validation averages."""

    def on_test_start(self, trainer: Trainer) -> None:
        """When `test` begins, after `ckpt_path` (if given) is loaded, before the first batch."""

    def on_test_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After the last test batch, with the test averages."""

    def on_log(self, trainer: Trainer, metrics: dict[str, float], step: int) -> None:
        """When figures are due for loggers: every `log_every_n_steps` and at each epoch end."""

    def on_save_checkpoint(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None:
        """Before a checkpoint is written; entries added to `checkpoint` are saved with it."""

    def on_load_checkpoint(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None:
        """After a checkpoint's states have been restored."""

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        """When `fit` is ending because of an exception, before it propagates."""

    def uses_hook(self, hook: str) -> bool:
        """Whether `hook` should be called: by default, whether this class overrides it.

        Asked once, when the trainer is built. Override it to decline a hook that this
        instance's settings leave with nothing to do, so the loop never calls it per step.
        """
        return not self._hook_is_from(Callback, hook)

    def _hook_is_from(self, owner: type[Callback], hook: str) -> bool:
        """Whether this instance's `hook` is still `owner`'s own (no subclass replaced it).

        A callback that declines one of its hooks for its settings asks this first, so a
        subclass that overrides that hook to do something else is still called.
        """
        return getattr(type(self), hook) is getattr(owner, hook)

    def state_dict(self) -> dict[str, Any]:
        """Plain data to save in checkpoints; stateless callbacks return {}."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()` output."""


HOOKS: tuple[str, ...] = tuple(name for name in vars(Callback) if name.startswith("on_"))


class CallbackList:
    """The run's callbacks in call order, with the callbacks using each hook precomputed."""

    def __init__(self, callbacks: list[Callback]) -> None:
        for callback in callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(
                    f"callbacks must be trainer.callbacks.Callback instances, got "
                    f"{type(callback).__name__}; subclass Callback and override its hooks."
                )
        self.callbacks = list(callbacks)
        self._by_hook: dict[str, tuple[Callback, ...]] = {
            hook: tuple(cb for cb in callbacks if cb.uses_hook(hook)) for hook in HOOKS
        }

    def call(self, hook: str, trainer: Trainer, *args: Any) -> None:
        """Call `hook` on every callback that uses it, naming the culprit on error."""
        for callback in self._by_hook[hook]:
            try:
                getattr(callback, hook)(trainer, *args)
            except Exception as error:
                if hasattr(error, "add_note"):
                    error.add_note(f"raised in callback {type(callback).__name__}.{hook}")
                raise

    def state_dicts(self) -> dict[str, dict[str, Any]]:
        """Every stateful callback's state, keyed by a unique name derived from its class."""
        states = {}
        for key, callback in self._keyed():
            state = callback.state_dict()
            if state:
                states[key] = state
        return states

    def load_state_dicts(self, states: dict[str, dict[str, Any]]) -> None:
        """Hand each callback the state saved under its key; unknown keys are ignored."""
        for key, callback in self._keyed():
            if key in states:
                callback.load_state_dict(states[key])

    def _keyed(self) -> list[tuple[str, Callback]]:
        seen: dict[str, int] = {}
        keyed = []
        for callback in self.callbacks:
            name = type(callback).__name__
            seen[name] = seen.get(name, 0) + 1
            keyed.append((name if seen[name] == 1 else f"{name}_{seen[name]}", callback))
        return keyed

    def best_so_far(self) -> BestEpoch | None:
        """The best epoch the callbacks declare: the first whose weights a file keeps, else
        the first one judged at all."""
        declared = [best for callback in self.callbacks if (best := callback.best_so_far())]
        return next((best for best in declared if best.path), declared[0] if declared else None)

    def __iter__(self) -> Iterator[Callback]:
        return iter(self.callbacks)
