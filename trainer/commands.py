"""What each `trainer` command does once its config is built: fit, validate, test, predict,
lr-find and plot, and the short report each prints.

`cli.py` parses the command line, builds the job from the configs and turns our errors into
one `error: ...` line; a command here raises `ConfigError` for what the user can fix.
Under torchrun every rank runs the command and rank 0 reports.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from trainer.callbacks.base import Callback
from trainer.config import ConfigError, Job, config_to_yaml
from trainer.report import executable, fit_summary, format_figures

__all__ = ["RUNNERS", "fit", "lr_find", "plot", "predict", "test", "validate"]


class SaveConfig(Callback):
    """Write the resolved config into the run's folder (`log_dir`) once `fit` has chosen it.

    The run folder then records exactly what produced it, overrides included.
    """

    writes_files = True

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.text = config_to_yaml(config)

    def on_fit_start(self, trainer: Any) -> None:
        """Write `config.yaml` (rank 0 writes for all ranks)."""
        if trainer.is_global_zero:
            (trainer.log_dir / "config.yaml").write_text(self.text)


def fit(job: Job, ckpt_path: str | None) -> None:
    """Train (or resume from `ckpt_path`), save the config with the run, print a summary."""
    loaders = {"train_loader": _loader(job, "train_loader", "fit")}
    if callable(getattr(job.data, "val_loader", None)):
        loaders["val_loader"] = job.data.val_loader()
    # The resolved config is the run's hyperparameters, unless the config sets its own.
    hparams = {} if "hparams" in job.trainer_kwargs else {"hparams": dict(job.config)}
    callbacks = [*(job.trainer_kwargs.get("callbacks") or []), SaveConfig(job.config)]
    job = dataclasses.replace(job, trainer_kwargs=job.trainer_kwargs | {"callbacks": callbacks})
    trainer = job.make_trainer(**loaders, **hparams)
    history = trainer.fit(ckpt_path=ckpt_path)
    if not trainer.is_global_zero:  # under torchrun, rank 0 reports for all ranks
        return
    if trainer.limits.is_dev_run:  # no folder to show: one line says what ran
        print(_dev_run_line(trainer))
    else:
        print("\n".join(fit_summary(trainer, history)))


def validate(job: Job, ckpt_path: str | None) -> None:
    """Print the validation figures of `data.val_loader()`."""
    trainer = job.make_trainer(val_loader=_loader(job, "val_loader", "validate"))
    figures = trainer.validate(ckpt_path=ckpt_path)
    if trainer.is_global_zero:
        print(format_figures(figures, "\n"))


def test(job: Job, ckpt_path: str | None) -> None:
    """Print the test figures of `data.test_loader()`."""
    loader = _loader(job, "test_loader", "test")
    trainer = job.make_trainer()
    figures = trainer.test(loader, ckpt_path=ckpt_path)
    if trainer.is_global_zero:
        print(format_figures(figures, "\n"))


def predict(job: Job, ckpt_path: str | None) -> None:
    """Save the predictions on `data.predict_loader()` to `<run_dir>/predictions.pt`."""
    import torch

    from trainer.device import move_to_device

    loader = _loader(job, "predict_loader", "predict")
    trainer = job.make_trainer()
    # On the CPU, the file opens on any machine, with or without the GPU it was made on.
    predictions = move_to_device(trainer.predict(loader, ckpt_path=ckpt_path), torch.device("cpu"))
    if not trainer.is_global_zero:  # every rank predicts the whole loader; one saves it
        return
    if trainer.limits.is_dev_run:
        print(f"fast_dev_run: predicted {len(predictions)} batches; a dev run writes no "
              "files, so no predictions.pt")
        return
    path = Path(trainer.run_dir).resolve() / "predictions.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(predictions, path)
    print(f"predictions of {len(predictions)} batches saved to {path}")


RUNNERS: dict[str, Callable[[Job, str | None], None]] = {
    "fit": fit,
    "validate": validate,
    "test": test,
    "predict": predict,
}


def plot(run_dir: str, output: str | None) -> None:
    """Draw a finished run from its `metrics.csv` into a PNG."""
    from trainer.plot import PlotError, plot_run

    try:
        path = plot_run(run_dir, output)
    except PlotError as error:
        raise ConfigError(str(error)) from error
    print(f"plot saved to {path}")


def lr_find(
    job: Job,
    ckpt_path: str | None,
    config_paths: Sequence[str],
    *,
    min_lr: float,
    max_lr: float,
    num_steps: int,
) -> None:
    """Sweep the learning rate, save the curve as CSV (and PNG), print the suggestion."""
    from trainer.lr_finder import find_lr

    trainer = job.make_trainer(train_loader=_loader(job, "train_loader", "lr-find"))
    trainer.load_weights(ckpt_path)  # a checkpoint's weights, to fine-tune from
    try:
        result = find_lr(trainer, min_lr=min_lr, max_lr=max_lr, num_steps=num_steps)
    except ValueError as error:
        raise ConfigError(f"lr-find: {error}") from error
    if not trainer.is_global_zero:  # every rank swept together; one writes and reports
        return
    run_dir = Path(trainer.run_dir).resolve()
    files = [str(result.to_csv(run_dir / "lr_find.csv"))]
    try:
        files.insert(0, str(result.plot(run_dir / "lr_find.png")))
    except ImportError as error:
        print(f"note: no plot; {error}", file=sys.stderr)
    ended = "the loss blew up" if len(result.lrs) < num_steps else "all steps done"
    print(f"swept:         {len(result.lrs)} learning rates from {result.lrs[0]:.3g} to "
          f"{result.lrs[-1]:.3g} ({ended}); model and optimizer restored afterwards")
    print(f"loss vs lr:    {', '.join(files)}")
    if result.suggestion is None:
        print("suggested lr:  none, the loss never clearly fell; widen --min_lr/--max_lr "
              "or raise --num_steps")
        return
    print(f"suggested lr:  {result.suggestion:.3g} (where the loss falls fastest)")
    if job.config.get("optimizer"):
        configs = " ".join(f"--config {shlex.quote(path)}" for path in config_paths)
        command = f"{executable('trainer')} fit {configs}"
        print(f"use it:        {command} --optimizer.lr {result.suggestion:.3g}")


def _dev_run_line(trainer: Any) -> str:
    """What a `fast_dev_run` fit ran, in one line."""
    from trainer.data_position import length_or_none

    limits = trainer.limits
    train_batches = trainer.num_train_batches or limits.fast_dev_run
    val_loader = trainer.val_loader
    val_batches = (
        limits.eval_batches("validate", length_or_none(val_loader)) if val_loader else None
    )
    return limits.dev_run_summary(train_batches, trainer.global_step, val_batches)


def _loader(job: Job, method: str, command: str) -> Any:
    """Call `data.<method>()`, or say plainly that the data object cannot serve `command`."""
    make_loader = getattr(job.data, method, None)
    if not callable(make_loader):
        raise ConfigError(
            f"data: {type(job.data).__name__} has no {method}() method, which `trainer "
            f"{command}` needs; add one or choose a data class that has it."
        )
    return make_loader()
