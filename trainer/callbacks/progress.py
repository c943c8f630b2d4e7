"""`ProgressBar`: the console output of a run: a model summary when `fit` starts, then a
tqdm bar per epoch with batches, ETA, samples/s and the latest loss.

The bar reads the loss from the device only when it is about to redraw (at most
`refresh_rate` times a second), so it adds no per-step host sync. When output is not a
terminal it stays silent per step and prints one line per epoch instead, and the model
summary is one line rather than a table, so log files and CI output stay short. Validation
renames the bar instead of drawing its own, and only the global-zero process draws or prints.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from trainer.callbacks.base import Callback
from trainer.summary import summary_line, summary_table

if TYPE_CHECKING:
    from trainer.trainer import Trainer

__all__ = ["ProgressBar", "write_line"]


def write_line(text: str) -> None:
    """Print a line for the user above any open progress bar, which is redrawn below it.

    tqdm is asked only when something already imported it: a run without a bar stays free
    of it, and a plain `print` would tear an open bar in two.
    """
    if "tqdm" in sys.modules:
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stdout)
        sys.stdout.flush()
    else:
        print(text, flush=True)


class ProgressBar(Callback):
    """Show training progress; one bar per epoch.

    Args:
        refresh_rate: most redraws per second.
        leave: keep each finished epoch's bar on screen.
        force: draw bars even when output is not a terminal (notebooks are detected).
        summary: print the model's parameters and size when `fit` starts: a table on a
            terminal, one line otherwise.

    Example:
        >>> trainer = Trainer(model, ..., progress_bar=ProgressBar(refresh_rate=1, summary=False))
    """

    def __init__(
        self,
        refresh_rate: float = 4.0,
        leave: bool = True,
        force: bool = False,
        summary: bool = True,
    ) -> None:
        self.refresh_interval = 1.0 / refresh_rate
        self.leave = leave
        self.force = force
        self.summary = summary
        self._bar: Any = None
        self._last_draw = 0.0
        self._epoch_start = 0.0
        self._is_shown = False

    def _is_interactive(self) -> bool:
        return self.force or sys.stderr.isatty() or _in_notebook()

    def uses_hook(self, hook: str) -> bool:
        """Without a terminal only the epoch lines are printed: the bar's hooks stay silent."""
        if hook in _BAR_HOOKS and self._hook_is_from(ProgressBar, hook):
            return self._is_interactive()
        if hook == "on_fit_start" and self._hook_is_from(ProgressBar, hook):
            return self.summary
        return super().uses_hook(hook)

    def on_fit_start(self, trainer: Trainer) -> None:
        """Print the model summary: a table on a terminal, one line otherwise."""
        if not trainer.is_global_zero:
            return
        if self._is_interactive():
            print(summary_table(trainer.model), flush=True)
        else:
            print(summary_line(trainer.model), flush=True)

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        """Open this epoch's bar."""
        self._epoch_start = self._last_draw = time.monotonic()
        self._is_shown = trainer.is_global_zero
        if not self._is_shown or not self._is_interactive():
            return
        from tqdm.auto import tqdm

        total = trainer.num_train_batches
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs is not None else ""
        self._bar = tqdm(
            total=total,
            initial=trainer.state.batches_in_epoch,
            desc=f"Epoch {trainer.epoch + 1}{epochs}",
            leave=self.leave,
            dynamic_ncols=True,
            unit="batch",
            mininterval=self.refresh_interval,
            # batches/s gives way to samples/s in the postfix, leaving room for the figures
            bar_format=_BAR_FORMAT if total is not None else None,
        )

    def on_train_batch_end(
        self, trainer: Trainer, outputs: dict[str, Any], batch: Any, batch_idx: int
    ) -> None:
        """Advance the bar; read the loss only when a redraw is due."""
        if self._bar is None:
            return
        self._bar.update(1)
        now = time.monotonic()
        if now - self._last_draw >= self.refresh_interval:
            self._last_draw = now
            rate = trainer.samples_in_epoch / max(now - self._epoch_start, 1e-9)
            postfix = {"loss": f"{float(outputs['loss']):.4f}", "samples/s": f"{rate:.0f}"}
            if trainer.max_steps is not None:  # a run by steps: how far it is
                postfix["step"] = f"{trainer.global_step}/{trainer.max_steps}"
            self._bar.set_postfix(postfix, refresh=False)

    def on_validation_start(self, trainer: Trainer) -> None:
        """Say the epoch is validating, so a long validation does not look like a hang."""
        if self._bar is not None:
            self._bar.set_description_str(f"{self._bar.desc}{_VALIDATING}", refresh=False)
            self._bar.set_postfix_str("", refresh=True)

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """A validation inside the epoch (`val_check_interval`) is done: training goes on."""
        if self._bar is not None:
            self._bar.set_description_str(self._bar.desc.removesuffix(_VALIDATING), refresh=False)

    def on_train_end(self, trainer: Trainer) -> None:
        """A run that stops inside an epoch (`max_steps`, `max_time`) closes its bar there,
        before the end-of-run lines are printed."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        """Close the bar with the epoch's figures, or print them as one line."""
        if not self._is_shown:
            return
        figures = _format_figures(trainer.metrics)
        if self._bar is not None:
            self._bar.set_postfix_str(figures, refresh=False)
            self._bar.close()
            self._bar = None
        else:
            seconds = time.monotonic() - self._epoch_start
            epochs = f"/{trainer.max_epochs}" if trainer.max_epochs is not None else ""
            print(f"Epoch {trainer.epoch + 1}{epochs}: {figures} ({seconds:.2f}s)", flush=True)

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        """Close the bar so the traceback is not drawn over it."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


_BAR_HOOKS = (
    "on_train_batch_end", "on_validation_start", "on_validation_end", "on_train_end",
    "on_exception",
)  # fmt: skip
_VALIDATING = " (validating)"
_BAR_FORMAT = (
    "{desc}: {percentage:3.0f}%|{bar}| "
    "{n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"
)


def _format_figures(metrics: dict[str, float]) -> str:
    shown = [name for name in metrics if name.endswith("loss") or name.startswith("val/")]
    return " ".join(f"{name}={metrics[name]:.4f}" for name in dict.fromkeys(shown))


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ipython = shell.get_ipython()
    return ipython is not None and type(ipython).__name__ == "ZMQInteractiveShell"
