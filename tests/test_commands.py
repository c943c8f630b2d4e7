"""`commands`: what `trainer fit/validate/test/predict/plot` do once a config is built, called
in this process through the public functions the command line calls (test_cli.py runs the
same commands as real subprocesses, the way users do)."""

from __future__ import annotations

import contextlib
import csv
import io
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer import commands
from trainer.config import ConfigError, Job, build_job, load_config

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "configs" / "digits_mlp.yaml"
LINEAR = REPO / "configs" / "linear_random_data.yaml"


def job_of(config: Path, run_dir: Path, *overrides: str) -> Job:
    """The job a config describes, quiet and short, writing under `run_dir`."""
    quiet = ["trainer.max_epochs=2", f"trainer.run_dir={run_dir}", "trainer.device=cpu",
             "trainer.progress_bar=false", "trainer.logger=false"]  # fmt: skip
    return build_job(load_config([config], [*quiet, *overrides]))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A digits run fitted by `commands.fit`, and what it printed."""
    run_dir = tmp_path_factory.mktemp("digits")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        commands.fit(job_of(DIGITS, run_dir), ckpt_path=None)
    return run_dir, printed.getvalue()


def test_fit_prints_the_summary_and_saves_the_resolved_config_with_the_run(
    fitted: tuple[Path, str],
) -> None:
    run_dir, printed = fitted
    assert printed.startswith("trained:       2 epochs, ")
    assert "final metrics: " in printed and "val/acc" in printed
    saved = (run_dir / "version_0" / "config.yaml").read_text()
    assert "max_epochs: 2" in saved, "the overrides are part of the saved config"
    assert "class_path: trainer.models.MLP" in saved


def test_validate_of_the_last_checkpoint_prints_the_runs_final_figures(
    fitted: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, printed = fitted
    commands.validate(job_of(DIGITS, run_dir), ckpt_path="last")
    figures = dict(line.split() for line in capsys.readouterr().out.splitlines())
    assert set(figures) == {"val/loss", "val/acc"}
    final = next(line for line in printed.splitlines() if line.startswith("final metrics:"))
    for name, value in figures.items():
        assert f"{name} {value}" in final, "the last checkpoint validates as the run ended"


def test_test_prints_the_test_figures(
    fitted: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _ = fitted
    commands.test(job_of(DIGITS, run_dir), ckpt_path="last")
    printed = capsys.readouterr().out
    assert "test/loss" in printed and "test/acc" in printed
    assert "val/" not in printed


def test_predict_saves_the_outputs_on_the_cpu_in_the_run_dir(
    fitted: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _ = fitted
    commands.predict(job_of(DIGITS, run_dir), ckpt_path="last")
    path = run_dir / "predictions.pt"
    predictions: list[Any] = torch.load(path, weights_only=True)
    assert capsys.readouterr().out.strip() == (
        f"predictions of {len(predictions)} batches saved to {path.resolve()}"
    )
    assert all(batch.device.type == "cpu" and batch.shape[-1] == 10 for batch in predictions)


def test_a_data_class_without_the_loader_a_command_needs_names_the_method(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        commands.test(job_of(LINEAR, tmp_path), ckpt_path=None)
    message = str(excinfo.value)
    assert "data: RandomLinearData has no test_loader() method" in message
    assert "which `trainer test` needs" in message


def test_plot_of_a_folder_without_a_log_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        commands.plot(str(tmp_path), None)
    assert f"no metrics.csv in {tmp_path}" in str(excinfo.value)


def test_every_runner_is_one_of_the_commands() -> None:
    assert set(commands.RUNNERS) == {"fit", "validate", "test", "predict"}


# ---- fit keeps its config; lr-find starts from a checkpoint (through Trainer.load_weights)
CONFIG = """
seed: 0
model:
  class_path: trainer.models.MLP
  hidden: [16]
data:
  class_path: trainer.data.DigitsData
  batch_size: 64
loss_fn:
  class_path: torch.nn.CrossEntropyLoss
optimizer:
  class_path: torch.optim.AdamW
  lr: 0.01
trainer:
  max_epochs: 2
  run_dir: {run_dir}
  progress_bar: false
  logger: false
  device: cpu
"""


def _job(run_dir: Path) -> Job:
    path = run_dir.parent / "config.yaml"
    path.write_text(textwrap.dedent(CONFIG.format(run_dir=run_dir)))
    return build_job(load_config([path]))


def _first_loss_of_a_sweep(run_dir: Path, ckpt_path: str | None) -> float:
    commands.lr_find(_job(run_dir), ckpt_path, [], min_lr=1e-7, max_lr=1e-6, num_steps=3)
    with (run_dir / "lr_find.csv").open(newline="") as file:
        return float(next(csv.DictReader(file))["raw_loss"])


def test_fit_keeps_the_resolved_config_in_the_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    commands.fit(_job(run_dir), None)
    saved = (run_dir / "version_0" / "config.yaml").read_text()
    assert "hidden:\n  - 16" in saved or "hidden: [16]" in saved
    assert "run files:" in capsys.readouterr().out


def test_lr_find_from_a_checkpoint_starts_from_its_trained_weights(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    commands.fit(_job(run_dir), None)
    untrained = _first_loss_of_a_sweep(run_dir, None)
    trained = _first_loss_of_a_sweep(run_dir, "last")
    assert trained < 0.75 * untrained  # two epochs of digits (1.3), initial weights (2.4)


def test_a_config_whose_data_gives_several_val_loaders_fits_and_validates_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = REPO / "configs" / "digits_noisy_val.yaml"
    commands.fit(job_of(config, tmp_path), ckpt_path=None)
    printed = capsys.readouterr().out
    assert "best epoch:" in printed and "by val/noisy/acc" in printed
    commands.validate(job_of(config, tmp_path), ckpt_path="best")
    figures = dict(line.split() for line in capsys.readouterr().out.splitlines())
    assert set(figures) == {"val/clean/loss", "val/clean/acc", "val/noisy/loss", "val/noisy/acc"}
    assert float(figures["val/noisy/acc"]) < float(figures["val/clean/acc"])
