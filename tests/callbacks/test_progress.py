"""`ProgressBar`: one line per epoch when output is not a terminal, a tqdm bar when forced."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import torch
from conftest import make_loader, make_mlp
from torch import nn

from trainer.callbacks import ProgressBar
from trainer.summary import module_sizes, summary_line


def test_not_a_terminal_prints_one_line_per_epoch(
    trainer_factory: Callable, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not sys.stderr.isatty()
    trainer_factory(
        progress_bar=True,
        max_epochs=3,
        train_loader=make_loader(n=200, batch_size=4),
    ).fit()
    captured = capsys.readouterr()
    summary, *lines = captured.out.splitlines()
    assert summary.startswith("model: Sequential, ")
    assert len(lines) == 3
    for number, line in enumerate(lines, start=1):
        assert line.lower().startswith(f"epoch {number}")
    assert all("train/loss=" in line and "val/loss=" in line for line in lines)
    assert captured.err == ""


def test_not_a_terminal_line_shows_the_epoch_figures(
    trainer_factory: Callable, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = trainer_factory(progress_bar=True, max_epochs=1)
    trainer.fit()
    line = capsys.readouterr().out.strip()
    assert f"val/loss={trainer.metrics['val/loss']:.4f}" in line
    assert f"val/acc={trainer.metrics['val/acc']:.4f}" in line
    assert line.endswith("s)")


def test_forced_bar_draws_tqdm_on_stderr_with_the_batch_count(
    trainer_factory: Callable, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer_factory(progress_bar=ProgressBar(force=True), max_epochs=2).fit()
    captured = capsys.readouterr()
    assert "Epoch 1/2" in captured.err
    assert "Epoch 2/2" in captured.err
    assert "5/5" in captured.err
    assert "100%|" in captured.err
    assert "val/loss=" in captured.err
    assert captured.out.startswith("model: Sequential\n")  # the summary, as a table
    assert "Epoch" not in captured.out


def test_forced_bar_in_callbacks_replaces_the_default(
    trainer_factory: Callable, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = trainer_factory(progress_bar=True, callbacks=[ProgressBar(force=True)])
    assert sum(isinstance(callback, ProgressBar) for callback in trainer.callbacks) == 1
    trainer.fit()
    captured = capsys.readouterr()
    assert captured.out.count("model: Sequential") == 1
    assert "Epoch" not in captured.out
    assert "5/5" in captured.err


def test_progress_bar_false_prints_nothing(
    trainer_factory: Callable, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer_factory(progress_bar=False, max_epochs=2).fit()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""


def test_forced_bar_says_when_it_is_validating_without_a_bar_of_its_own(
    trainer_factory: Callable, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer_factory(progress_bar=ProgressBar(force=True), max_epochs=2).fit()
    err = capsys.readouterr().err
    assert "Epoch 1/2 (validating)" in err
    assert "Epoch 2/2 (validating)" in err
    assert "val/loss=" in err
    # One bar per epoch: every redraw starts with the training bar's description.
    redraws = [part for part in err.replace("\n", "\r").split("\r") if part.strip()]
    assert all(part.startswith("Epoch ") for part in redraws)


def test_redraws_show_the_latest_loss_and_samples_per_second(
    trainer_factory: Callable, capsys: pytest.CaptureFixture[str]
) -> None:
    bar = ProgressBar(force=True, refresh_rate=1e9)  # every batch is due for a redraw
    trainer_factory(progress_bar=bar, max_epochs=1, train_loader=make_loader(n=40)).fit()
    err = capsys.readouterr().err
    assert "loss=" in err
    assert "samples/s=" in err


def test_not_a_terminal_summary_is_one_line_with_counts_and_size(
    trainer_factory: Callable, capsys: pytest.CaptureFixture[str]
) -> None:
    model = make_mlp()  # 64*32+32 + 32*10+10 = 2,410 float32 parameters
    model[0].requires_grad_(False)  # 64*32+32 = 2,080 of them frozen
    trainer_factory(model=model, progress_bar=True, max_epochs=1).fit()
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "model: Sequential, 2.4k parameters (330 trainable), 9.6 kB"


def test_summary_counts_in_thousands_and_millions_and_megabytes() -> None:
    model = nn.Sequential(nn.Linear(1000, 1000), nn.BatchNorm1d(1000))
    assert summary_line(model) == "model: Sequential, 1.0M parameters (1.0M trainable), 4.0 MB"
    shared = nn.Linear(10, 10)
    twice = nn.Sequential(shared, nn.ReLU(), shared)
    assert [(row.name, row.parameters) for row in module_sizes(twice)] == [
        ("0", 110), ("1", 0), ("total", 110)  # a module used twice is listed and counted once
    ]


def test_terminal_summary_is_a_table_of_top_level_modules(
    trainer_factory: Callable, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    trainer_factory(model=model, progress_bar=ProgressBar(force=True), max_epochs=1).fit()
    table = capsys.readouterr().out.splitlines()
    assert table == [
        "model: Sequential",
        "module  type        parameters  trainable    size",
        "-------------------------------------------------",
        "0       Linear            2.1k       2.1k  8.3 kB",
        "1       ReLU                 0          0     0 B",
        "2       Linear             330        330  1.3 kB",
        "-------------------------------------------------",
        "total   Sequential        2.4k       2.4k  9.6 kB",
    ]


def test_summary_false_leaves_only_the_epoch_lines(
    trainer_factory: Callable, capsys: pytest.CaptureFixture[str]
) -> None:
    bar = ProgressBar(summary=False)
    assert not bar.uses_hook("on_fit_start")
    trainer_factory(progress_bar=bar, max_epochs=1).fit()
    assert capsys.readouterr().out.startswith("Epoch 1/1: ")
