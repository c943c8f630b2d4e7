"""`trainer plot RUN_DIR`: one PNG of a finished run, drawn from its `metrics.csv`.

For people who would rather look than read: training against validation loss (overfitting
shows as the curves parting), each validation metric beside its training counterpart when
there is one, and the learning rate, all against the optimizer step. matplotlib is an
optional extra (`pip install 'steadytrain[plot]'`), imported only here.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from trainer.run_files import VERSION_PREFIX, run_homes

__all__ = ["PlotError", "plot_run", "read_metrics"]

Series = dict[str, tuple[list[int], list[float]]]


class PlotError(ValueError):
    """The run cannot be plotted: no CSV, an empty one, or matplotlib missing."""


def read_metrics(path: str | Path) -> Series:
    """Every column of a CSVLogger file as (steps, values), skipping empty cells."""
    series: Series = {}
    with Path(path).open(newline="") as file:
        for row in csv.DictReader(file):
            step = int(row.pop("step"))
            for name, value in row.items():
                if value not in ("", None):
                    steps, values = series.setdefault(name, ([], []))
                    steps.append(step)
                    values.append(float(value))
    return series


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Draw a run's `metrics.csv` into a PNG (`metrics.png` beside it by default).

    `run_dir` is a run's folder (`trainer.log_dir`), its CSV file, or a `run_dir` holding
    `version_N` folders: then the newest run with a CSV is drawn.
    """
    run_dir = Path(run_dir)
    csv_path = run_dir / "metrics.csv" if run_dir.is_dir() else run_dir
    if run_dir.is_dir() and not csv_path.is_file():
        runs = [home / "metrics.csv" for home in run_homes(run_dir)]
        csv_path = next((path for path in runs if path.is_file()), csv_path)
    if not csv_path.is_file():
        raise PlotError(
            f"no metrics.csv in {run_dir}; pass the run_dir of a run trained with the CSV "
            "logger, which is on by default (logger=True)."
        )
    series = read_metrics(csv_path)
    if not series:
        raise PlotError(f"{csv_path} holds no figures yet; plot it after an epoch has ended.")
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise PlotError(
            "trainer plot needs matplotlib: pip install 'steadytrain[plot]' (or matplotlib)."
        ) from error
    panels = _panels(series)
    columns = 2 if len(panels) > 1 else 1
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(6 * columns, 3.6 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, (title, lines) in zip(axes, panels, strict=False):
        _draw(axis, title, lines, series)
    for axis in axes[len(panels) :]:
        axis.set_visible(False)
    figure.suptitle(f"{_run_name(csv_path)}: {max(max(s) for s, _ in series.values())} steps")
    path = Path(output) if output is not None else csv_path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def _panels(series: Series) -> list[tuple[str, list[str]]]:
    """(title, column names) for each chart, in reading order: loss, metrics, then the rest."""
    panels = [("loss", [n for n in ("train/loss", "train/loss_epoch", "val/loss") if n in series])]
    for name in series:
        if name.startswith("val/") and name != "val/loss":
            metric = name.removeprefix("val/")
            panels.append((metric, [n for n in (f"train/{metric}_epoch", name) if n in series]))
    learning_rates = [name for name in series if name == "lr" or name.startswith("lr/")]
    if learning_rates:
        panels.append(("learning rate", learning_rates))
    for name, title in (("train/grad_norm", "gradient norm"),
                        ("train/samples_per_sec", "throughput (samples/s)")):  # fmt: skip
        if name in series:
            panels.append((title, [name]))
    return [(title, lines) for title, lines in panels if lines]


def _draw(axis: Any, title: str, lines: list[str], series: Series) -> None:
    for name in lines:
        steps, values = series[name]
        if name == "train/loss":  # every log step: many noisy points, drawn faintly behind
            axis.plot(steps, values, label=name, color="tab:blue", alpha=0.3, linewidth=1)
        elif name.startswith("val/"):
            axis.plot(steps, values, "o-", label=name, color="tab:orange", markersize=3)
        elif name.endswith("_epoch"):
            axis.plot(steps, values, "o-", label=name, color="tab:blue", markersize=3)
        elif title == "learning rate":  # a logged rate held since the previous point
            axis.plot(steps, values, label=name, drawstyle="steps-pre")
        else:
            axis.plot(steps, values, label=name)
    axis.set_title(title)
    axis.set_xlabel("optimizer step")
    axis.grid(alpha=0.3)
    if title == "loss" and all(min(series[name][1]) > 0 for name in lines):
        axis.set_yscale("log")  # a falling train loss and a rising val loss stay both visible
    axis.legend(fontsize="small")


def _run_name(csv_path: Path) -> str:
    """`digits/version_1` for a versioned run, the folder's name otherwise."""
    folder = csv_path.resolve().parent
    is_version = folder.name.startswith(VERSION_PREFIX)
    return f"{folder.parent.name}/{folder.name}" if is_version else folder.name
