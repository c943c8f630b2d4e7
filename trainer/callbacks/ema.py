"""`EMA`: an exponential moving average of the weights, for evaluation and the end of `fit`.

The average is updated on the device with foreach kernels and a Python-number weight, so it
adds no host sync. It needs no hook of its own: `on_train_batch_end` sees that an optimizer
step happened because `trainer.global_step` (a Python int) moved. Validation and test copy
the average into the model and the training weights back afterwards; checkpoints hold the
training weights as the model and the average as this callback's state, so a resumed run
continues the very same average.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainer.callbacks.base import Callback

if TYPE_CHECKING:
    from trainer.trainer import Trainer

__all__ = ["EMA"]


class EMA(Callback):
    """Keep `average = decay * average + (1 - decay) * weights`, updated after optimizer steps.

    Averaged weights usually evaluate better and more smoothly than the latest ones.
    Validation and test run with the average, and when `fit` ends the model holds it (a
    later `fit` on the same trainer continues training from it; `fit(ckpt_path=...)`
    continues from the training weights the checkpoint holds). Buffers, such as batch-norm
    statistics, are not averaged: the average takes them as they are at each update.

    Args:
        decay: the weight of the past average at each update, in [0, 1].
        every_n_steps: update every N optimizer steps; `decay` applies per update.
        start_step: warm-up: an update at or before this optimizer step copies the weights
            instead of averaging them.
        use_for_validation: validate and test with the average; with False, only the end of
            `fit` puts it into the model.

    Example:
        >>> trainer = Trainer(model, ..., callbacks=[EMA(decay=0.999)])
    """

    def __init__(
        self,
        decay: float = 0.999,
        every_n_steps: int = 1,
        start_step: int = 0,
        use_for_validation: bool = True,
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}; 0.999 is a common choice.")
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}.")
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}.")
        self.decay = decay
        self.every_n_steps = every_n_steps
        self.start_step = start_step
        self.use_for_validation = use_for_validation
        self.updates = 0
        self._model: nn.Module | None = None
        # By kind ("parameters", "buffers"): the model's tensors, and the average of each.
        self._weights: dict[str, dict[str, torch.Tensor]] = {kind: {} for kind in _KINDS}
        self._average: dict[str, dict[str, torch.Tensor]] = {kind: {} for kind in _KINDS}
        self._training_weights: dict[str, list[torch.Tensor]] | None = None
        self._loaded: dict[str, Any] | None = None
        self._seen_step = 0

    @property
    def average(self) -> dict[str, torch.Tensor]:
        """The averaged parameters and buffers by `state_dict` name (empty before `fit`)."""
        return self._average["parameters"] | self._average["buffers"]

    def uses_hook(self, hook: str) -> bool:
        """With `use_for_validation=False`, validation and test leave the weights alone."""
        if hook in _EVALUATION_HOOKS and self._hook_is_from(EMA, hook):
            return self.use_for_validation
        return super().uses_hook(hook)

    def on_fit_start(self, trainer: Trainer) -> None:
        """Start the average from the weights, or from the checkpoint the run resumes."""
        self._swap_out()  # an evaluation that failed may have left the average in
        if self._loaded is not None or self._model is not trainer.model:
            self._bind(trainer.model)
        self._seen_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, outputs: dict[str, Any], batch: Any, batch_idx: int
    ) -> None:
        """Update the average when an optimizer step happened since the last batch."""
        step = trainer.global_step
        if step == self._seen_step:  # inside an accumulation window: no step yet
            return
        self._seen_step = step
        if step % self.every_n_steps == 0:
            self._update(is_warm_up=step <= self.start_step)

    def on_validation_start(self, trainer: Trainer) -> None:
        """Validate with the average."""
        self._swap_in()

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """Put the training weights back."""
        self._swap_out()

    def on_test_start(self, trainer: Trainer) -> None:
        """Test with the average."""
        self._swap_in()

    def on_test_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """Put the weights the model had before the test back."""
        self._swap_out()

    def on_fit_end(self, trainer: Trainer) -> None:
        """Leave the average in the model."""
        if self._model is not None:
            _copy(self._weights, self._average)

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        """Put the training weights back if the error came during validation."""
        self._swap_out()

    def state_dict(self) -> dict[str, Any]:
        """The averaged parameters and buffers (on their device) and the number of updates."""
        if self._model is None:
            return self._loaded or {}
        return {**self._average, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Keep `state` until `fit` starts, which moves it to the model's device."""
        self._loaded = state
        self.updates = int(state["updates"])

    # ---------------------------------------------------------------------------- internals
    def _bind(self, model: nn.Module) -> None:
        """Track `model`'s tensors; the average starts as the loaded one or as a copy."""
        self._weights = {
            "parameters": dict(model.named_parameters()),
            "buffers": dict(model.named_buffers()),
        }
        saved = self._loaded
        if saved is not None:
            _check_same_names(saved, self._weights)
        self._average = {
            kind: {
                name: _start_of_average(tensor, None if saved is None else saved[kind][name])
                for name, tensor in tensors.items()
            }
            for kind, tensors in self._weights.items()
        }
        self._model, self._loaded = model, None
        if saved is None:
            self.updates = 0

    @torch.no_grad()
    def _update(self, is_warm_up: bool) -> None:
        """One update: parameters move towards the weights, buffers are copied as they are."""
        average = list(self._average["parameters"].values())
        weights = list(self._weights["parameters"].values())
        if average and is_warm_up:
            torch._foreach_copy_(average, weights)
        elif average:  # a Python float weight: nothing is read back from the device
            torch._foreach_lerp_(average, weights, 1.0 - self.decay)
        if self._average["buffers"]:
            buffers = list(self._weights["buffers"].values())
            torch._foreach_copy_(list(self._average["buffers"].values()), buffers)
        self.updates += 1

    def _swap_in(self) -> None:
        """Copy the average into the model, keeping the weights it had (once)."""
        if self._model is None or self._training_weights is not None:
            return
        self._training_weights = {
            kind: [tensor.detach().clone() for tensor in tensors.values()]
            for kind, tensors in self._weights.items()
        }
        _copy(self._weights, self._average)

    def _swap_out(self) -> None:
        """Give the model back the weights `_swap_in` kept."""
        if self._training_weights is not None:
            _copy(self._weights, self._training_weights)
            self._training_weights = None


_KINDS = ("parameters", "buffers")
_EVALUATION_HOOKS = ("on_validation_start", "on_validation_end", "on_test_start", "on_test_end")


def _start_of_average(tensor: torch.Tensor, saved: torch.Tensor | None) -> torch.Tensor:
    """A tensor of its own, on `tensor`'s device and dtype: `saved`, or `tensor` copied."""
    source = tensor if saved is None else saved
    return source.detach().to(device=tensor.device, dtype=tensor.dtype, copy=True)


@torch.no_grad()
def _copy(targets: dict[str, dict[str, torch.Tensor]], sources: dict[str, Any]) -> None:
    """Copy each kind's `sources` (tensors, or a dict of them by name) into `targets`."""
    for kind, tensors in targets.items():
        source = sources[kind]
        if tensors:
            values = source.values() if isinstance(source, dict) else source
            torch._foreach_copy_(list(tensors.values()), list(values))


def _check_same_names(saved: dict[str, Any], named: dict[str, dict[str, torch.Tensor]]) -> None:
    for kind, tensors in named.items():
        missing = sorted(set(tensors) - set(saved[kind]))
        unexpected = sorted(set(saved[kind]) - set(tensors))
        if missing or unexpected:
            raise ValueError(
                f"the checkpoint's EMA {kind} do not match the model's: missing {missing}, "
                f"unexpected {unexpected}. Resume with the model the run was saved with."
            )
