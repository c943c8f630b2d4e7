"""What `trainer fit` prints when a run ends: how far it went, its final figures, its best
epoch and the checkpoint that holds it, and commands that open and plot the run.

What it says of the callbacks, they declare (`stop_reason`, `best_so_far`, `dashboard_url`):
the report asks none of them for its type.

The printed commands must work when pasted into the same shell. A project installed into a
virtual environment that nobody activated has its `tensorboard` and `trainer` only in the
environment's `bin/`, so a command is named by that path (relative to the working directory
when that is shorter) unless the shell would find the very same program by name.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.trainer import Trainer

__all__ = ["executable", "fit_summary", "format_figures", "shell_path"]

# How to start each program when the environment has no script for it.
_MODULES = {"trainer": "trainer", "tensorboard": "tensorboard.main"}


def fit_summary(trainer: Trainer, history: Sequence[Mapping[str, float]]) -> list[str]:
    """The lines `trainer fit` ends with; epochs count from 1, as the progress bar's do."""
    records = {int(record["epoch"]): record for record in history}
    final = _figures(history[-1] if history else trainer.metrics)
    lines = [
        f"trained:       {_how_far(trainer)}",
        f"final metrics: {format_figures(final, ', ')}",
        *_best_lines(trainer, records, final),
        f"run files:     {Path(trainer.log_dir).resolve()} "
        "(config.yaml, checkpoints/, metrics.csv, TensorBoard events)",
        # TensorBoard lists each run of run_dir by its folder: version_0, version_1, ...
        f"view them:     {executable('tensorboard')} --logdir {shell_path(trainer.run_dir)}",
        *_dashboard_line(trainer),
        f"plot them:     {executable('trainer')} plot {shell_path(trainer.log_dir)}",
    ]
    return lines


def _how_far(trainer: Trainer) -> str:
    """Epochs done, the batches of one cut short, optimizer steps, and what stopped them."""
    state = trainer.state
    cut_short = f" and {state.batches_in_epoch} batches of epoch {trainer.epoch + 1}"
    reason = next((why for callback in trainer.callbacks if (why := callback.stop_reason())), "")
    if reason:
        bound = f"; max_epochs {trainer.max_epochs}" if trainer.max_epochs is not None else ""
        stopped = f" ({reason}{bound})"
    elif trainer.max_steps is not None and trainer.global_step >= trainer.max_steps:
        stopped = f" (max_steps {trainer.max_steps} reached)"
    else:
        stopped = ""
    return (
        f"{trainer.epoch} epochs{cut_short if state.is_mid_epoch else ''}, "
        f"{trainer.global_step} optimizer steps{stopped}"
    )


def _dashboard_line(trainer: Trainer) -> list[str]:
    """The address that opens TensorBoard (on its default port) with the figures that judge
    the run pinned on top, where by name `lr` and `train` would come first."""
    urls = (callback.dashboard_url(trainer) for callback in trainer.callbacks)
    url = next((url for url in urls if url), None)
    return [f"then open:     {url}"] if url else []


def _best_lines(
    trainer: Trainer, records: Mapping[int, Mapping[str, float]], final: Mapping[str, float]
) -> list[str]:
    """The best epoch the callbacks declare (one whose file is kept first, such as the
    checkpoint ranking's, else early stopping's watch), its figures beside the final value,
    and where its weights are."""
    best = trainer.callbacks.best_so_far()
    if best is None:
        return []
    name, epoch, value = best.monitor, best.epoch, best.value
    if best.path:
        weights = f"{shell_path(best.path)} (--ckpt_path best)"
    else:
        weights = "not kept; a ModelCheckpoint(monitor=...) among the callbacks keeps them"
    figures = dict(_figures(records.get(epoch, {}))) or {name: value}
    figures[name] = f"{value:.4g} (final {final[name]:.4g})" if name in final else value
    return [
        f"best epoch:    {epoch + 1} by {name}: {format_figures(figures, ', ')}",
        f"best weights:  {weights}",
    ]


def _figures(record: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in record.items() if name != "epoch"}


def format_figures(metrics: Mapping[str, Any], separator: str) -> str:
    """`name value` pairs, numbers to four significant digits."""
    return separator.join(
        f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"
        for name, value in metrics.items()
    )


def executable(name: str) -> str:
    """How to start the running environment's program `name` from this shell.

    The bare name when the shell finds this environment's program by it; else the path of
    the environment's script; else `python -m` of its module with this interpreter.
    """
    script = Path(sysconfig.get_path("scripts")) / name
    found = shutil.which(name)
    if script.is_file():
        if found is not None and os.path.samefile(found, script):
            return name
        return shell_path(script, is_command=True)
    if found is not None:  # installed elsewhere (a user's scripts folder on PATH)
        return name
    return f"{shell_path(sys.executable, is_command=True)} -m {_MODULES.get(name, name)}"


def shell_path(path: str | Path, is_command: bool = False) -> str:
    """`path` for pasting into a shell at this working directory: relative when it lies
    inside that directory, else absolute, quoted when it needs to be. A command keeps a `/`
    in it, so the shell runs that file instead of looking the name up on `PATH`."""
    absolute = os.path.abspath(path)
    try:
        relative = os.path.relpath(absolute)
    except ValueError:  # on another drive (Windows): only the absolute path reaches it
        relative = absolute
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        relative = absolute  # a `../` path reads as a puzzle; outside, say where it is
    if is_command and os.sep not in relative:
        relative = os.path.join(os.curdir, relative)
    return shlex.quote(min(relative, absolute, key=len))
