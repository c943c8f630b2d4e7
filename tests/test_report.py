"""`trainer.report`: commands printed for pasting name programs the shell will find, and
what the report says of callbacks comes from what they declare, whatever their type."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import make_trainer

from trainer import Trainer
from trainer.callbacks import BestEpoch, Callback, EarlyStopping
from trainer.report import executable, fit_summary, shell_path

SCRIPTS = Path(sysconfig.get_path("scripts"))


def test_shell_path_is_relative_when_shorter_else_absolute(tmp_path: Path) -> None:
    # conftest makes tmp_path the working directory
    assert shell_path(tmp_path / "runs" / "job") == "runs/job"
    assert shell_path("/") == "/"
    assert shell_path(tmp_path / "my runs") == "'my runs'"  # quoted for the shell


def test_a_command_in_the_working_directory_keeps_a_slash(tmp_path: Path) -> None:
    assert shell_path(tmp_path / "tool", is_command=True) == os.path.join(".", "tool")


@pytest.mark.skipif(not (SCRIPTS / "trainer").is_file(), reason="no trainer script here")
def test_a_program_on_path_is_named_bare_and_one_off_path_by_its_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", f"{SCRIPTS}{os.pathsep}/usr/bin:/bin")
    assert executable("trainer") == "trainer"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert executable("trainer") == shell_path(SCRIPTS / "trainer")


def test_a_program_without_a_script_runs_as_a_module_of_this_interpreter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "")
    assert executable("no-such-program") == f"{shell_path(sys.executable)} -m no-such-program"


def test_summary_without_a_ranked_checkpoint_takes_the_best_epoch_from_early_stopping(
    run_dir: Path,
) -> None:
    stopper = EarlyStopping(monitor="val/loss", patience=5)
    trainer = make_trainer(run_dir, callbacks=[stopper], checkpoint=True, max_epochs=3)
    history = trainer.fit()
    lines = {
        label: text.strip()
        for label, text in (line.split(":", 1) for line in fit_summary(trainer, history))
    }
    best = history[stopper.best_epoch]
    assert lines["best epoch"].startswith(f"{stopper.best_epoch + 1} by val/loss: ")
    assert f"val/loss {best['val/loss']:.4g} (final {history[-1]['val/loss']:.4g})" in (
        lines["best epoch"]
    )
    assert lines["best weights"].startswith("not kept; a ModelCheckpoint(monitor=...)")
    assert lines["trained"] == "3 epochs, 15 optimizer steps"


class JudgesEpochOne(Callback):
    """A callback of one's own that declares a stop, a best file and a dashboard."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def stop_reason(self) -> str | None:
        return "a budget ran out"

    def best_so_far(self) -> BestEpoch | None:
        return BestEpoch("val/loss", 0.25, 1, str(self.path))

    def dashboard_url(self, trainer: Trainer) -> str | None:
        return "http://localhost:1234/run"


def test_summary_reports_what_any_callback_declares(run_dir: Path, tmp_path: Path) -> None:
    # EarlyStopping's best keeps no file, so the declared file of the other one wins.
    stopper = EarlyStopping(monitor="val/loss", patience=5)
    judge = JudgesEpochOne(tmp_path / "best.ckpt")
    trainer = make_trainer(run_dir, callbacks=[stopper, judge], max_epochs=2)
    history = trainer.fit()
    lines = {
        label: text.strip()
        for label, text in (line.split(":", 1) for line in fit_summary(trainer, history))
    }
    assert lines["trained"] == "2 epochs, 10 optimizer steps (a budget ran out; max_epochs 2)"
    assert lines["best epoch"].startswith("2 by val/loss: ")
    assert "val/loss 0.25 (final" in lines["best epoch"]
    assert lines["best weights"] == "best.ckpt (--ckpt_path best)"
    assert lines["then open"] == "http://localhost:1234/run"
