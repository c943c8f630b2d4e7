"""`trainer plot RUN_DIR`: a PNG of a real run's CSV, through the function and the command."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import make_mlp

from trainer.cli import main
from trainer.plot import PlotError, plot_run, read_metrics

matplotlib_image = pytest.importorskip("matplotlib.image")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def trained(trainer_factory: Callable, run_dir: Path) -> Path:
    """A 3-epoch run with the default loggers, logging every 2 steps."""
    trainer = trainer_factory(logger=True, max_epochs=3, log_every_n_steps=2)
    trainer.fit()
    return trainer.log_dir


def test_read_metrics_returns_each_column_without_empty_cells(trained: Path) -> None:
    series = read_metrics(trained / "metrics.csv")
    assert series["val/loss"][0] == [5, 10, 15]
    assert series["train/loss"][0] == [2, 4, 6, 8, 10, 12, 14]
    assert series["lr"][0] == [2, 4, 5, 6, 8, 10, 12, 14, 15]  # log steps and epoch ends


def test_plot_writes_a_png_of_the_run_beside_its_csv(trained: Path) -> None:
    path = plot_run(trained)
    assert path == trained / "metrics.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib_image.imread(path)
    height, width, _ = pixels.shape
    assert (width, height) == (1320, 792)  # 2 x 2 panels: loss, acc, lr, throughput
    assert pixels.std() > 0.05  # drawn, not blank


def test_plot_of_several_param_groups_and_an_own_output_path(
    trainer_factory: Callable, run_dir: Path, tmp_path: Path
) -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(
        [{"params": model[0].parameters()}, {"params": model[3].parameters(), "lr": 0.01}],
        lr=0.1,
    )
    trainer_factory(model, optimizer=optimizer, logger=True, max_epochs=2).fit()
    assert {"lr/group0", "lr/group1"} <= set(read_metrics(run_dir / "version_0" / "metrics.csv"))
    path = plot_run(run_dir, tmp_path / "figures" / "run.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_the_command_prints_where_the_plot_is(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plot", str(trained), "--output", str(trained / "out.png")]) == 0
    assert capsys.readouterr().out.strip() == f"plot saved to {trained / 'out.png'}"
    assert (trained / "out.png").read_bytes()[:8] == PNG_SIGNATURE


def test_a_folder_without_a_csv_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no metrics.csv in {tmp_path}")
    assert "on by default (logger=True)" in err


def test_a_csv_without_figures_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text("step\n")
    with pytest.raises(PlotError, match="holds no figures yet; plot it after an epoch"):
        plot_run(tmp_path)


def test_the_command_refuses_config_overrides(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plot", str(trained), "--trainer.max_epochs", "3"]) == 2
    assert "trainer plot takes RUN_DIR and --output only" in capsys.readouterr().err
