"""The `trainer` command line, run as a real subprocess the way users run it."""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "digits_mlp.yaml"
TEST_SET_SIZE = 270  # 15% of scikit-learn's 1,797 digits, DigitsData's default split


SCRIPTS = Path(sysconfig.get_path("scripts"))
# A plain shell, as a newcomer's after `make train`: the environment's bin/ is not on PATH.
PLAIN_ENV = os.environ | {
    "PATH": os.pathsep.join(
        folder for folder in os.environ.get("PATH", "").split(os.pathsep)
        if folder and Path(folder).resolve() != SCRIPTS.resolve()
    )
}  # fmt: skip


def run_cli(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainer", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=PLAIN_ENV,
    )


def printed(stdout: str, label: str) -> str:
    """What the summary line `label:` says, such as the command after `view them:`."""
    prefix = f"{label}:".ljust(15)
    return next(line[len(prefix):] for line in stdout.splitlines() if line.startswith(prefix))


def job_args(run_dir: Path, *extra: str) -> list[str | Path]:
    return [
        "--config", DEFAULT_CONFIG,
        "--trainer.run_dir", run_dir,
        "--trainer.progress_bar", "false",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def fitted_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess]:
    """One short `trainer fit`, shared by the tests that read its output or its checkpoint."""
    run_dir = tmp_path_factory.mktemp("run")
    result = run_cli("fit", *job_args(run_dir, "--trainer.max_epochs", "2"))
    return run_dir, result


def test_fit_prints_a_summary_and_writes_events(fitted_run: tuple) -> None:
    run_dir, result = fitted_run
    assert result.returncode == 0, result.stderr
    assert "trained:       2 epochs, 40 optimizer steps\n" in result.stdout
    assert "final metrics: train/loss" in result.stdout and "val/acc" in result.stdout
    run = run_dir.resolve() / "version_0"
    assert f"run files:     {run} (config.yaml" in result.stdout
    assert printed(result.stdout, "view them").endswith(f" --logdir {run_dir.resolve()}")
    assert printed(result.stdout, "plot them").endswith(f" plot {run}")
    assert list(run.glob("events.out.tfevents.*"))
    assert len(list((run / "checkpoints").glob("last-epoch=1-step=*.ckpt"))) == 1
    saved = (run / "config.yaml").read_text()
    assert "max_epochs: 2" in saved and "T_max: 2" in saved


def test_fit_names_the_best_epoch_its_figures_and_its_checkpoint(fitted_run: tuple) -> None:
    run_dir, result = fitted_run
    history = list(csv.DictReader((run_dir / "version_0" / "metrics.csv").open()))
    accuracies = [float(row["val/acc"]) for row in history if row.get("val/acc")]
    best = accuracies.index(max(accuracies))  # epoch from 0; the first of equals
    line = printed(result.stdout, "best epoch")
    assert line.startswith(f"{best + 1} by val/acc: train/loss ")
    assert f"val/acc {accuracies[best]:.4g} (final {accuracies[-1]:.4g})" in line
    weights = run_dir / "version_0" / "checkpoints" / f"epoch={best}-step={20 * (best + 1)}.ckpt"
    assert printed(result.stdout, "best weights") == f"{weights} (--ckpt_path best)"
    assert weights.is_file()


def test_validate_ckpt_path_best_loads_the_best_epoch(fitted_run: tuple) -> None:
    run_dir, fit = fitted_run
    result = run_cli("validate", *job_args(run_dir, "--ckpt_path", "best"))
    assert result.returncode == 0, result.stderr
    best_acc = printed(fit.stdout, "best epoch").split("val/acc ")[1].split(" ")[0]
    assert f"val/acc {best_acc}\n" in result.stdout


def test_printed_commands_work_pasted_into_a_shell_without_the_environment_on_path(
    fitted_run: tuple, tmp_path: Path
) -> None:
    """`view them` starts TensorBoard on the run_dir (each run listed by its folder) and
    `plot them` writes the PNG, from the CLI's own folder, with PATH as a plain shell has it."""
    run_dir, result = fitted_run
    view, plot = printed(result.stdout, "view them"), printed(result.stdout, "plot them")
    if (SCRIPTS / "tensorboard").is_file():  # else installed elsewhere, found by name
        assert not view.startswith("tensorboard "), "not on PATH, so named by its path"
    shell = {"cwd": REPO, "env": PLAIN_ENV, "timeout": 120}
    plotted = subprocess.run(["bash", "-c", plot], capture_output=True, text=True, **shell)
    assert plotted.returncode == 0, plotted.stderr
    assert (run_dir / "version_0" / "metrics.png").stat().st_size > 0

    with socket.socket() as probe:  # a free port; TensorBoard binds it a moment later
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path / "tensorboard.log").open("w")
    server = subprocess.Popen(
        ["bash", "-c", f"exec {view} --host 127.0.0.1 --port {port}"],
        cwd=REPO, env=PLAIN_ENV, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        runs = wait_for_tensorboard_runs(port, server, deadline=time.monotonic() + 120)
        served_tags = get_json(port, "/data/plugin/scalars/tags").get("version_0", {})
        page = urllib.parse.urlsplit(printed(result.stdout, "then open"))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/?{page.query}") as response:
            assert response.status == 200 and b"<html" in response.read(2000).lower()
    finally:
        server.terminate()  # by its PID: `exec` made the shell's process TensorBoard itself
        server.wait(timeout=30)
        log.close()
    assert "version_0" in runs, (tmp_path / "tensorboard.log").read_text()
    # The address opens Time Series with the monitored metric and the losses pinned on top.
    assert (page.netloc, page.fragment) == ("localhost:6006", "timeseries")
    (cards,) = urllib.parse.parse_qs(page.query)["pinnedCards"]
    pinned = [card["tag"] for card in json.loads(cards) if card["plugin"] == "scalars"]
    assert pinned == ["val/acc", "val/loss", "train/loss"]
    assert set(pinned) <= set(served_tags), served_tags


def get_json(port: int, path: str, timeout: float = 10) -> Any:
    """What the local TensorBoard serves at `path`, decoded."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as page:
        return json.load(page)


def wait_for_tensorboard_runs(port: int, server: subprocess.Popen, deadline: float) -> list:
    """The runs TensorBoard lists once it has read the log folder (it starts empty)."""
    runs: list = []
    while time.monotonic() < deadline and server.poll() is None:
        try:
            runs = get_json(port, "/data/runs", timeout=5)
        except OSError:  # not listening yet
            pass
        if runs:
            return runs
        time.sleep(0.5)
    return runs


def test_validate_reports_metrics_of_the_last_checkpoint(fitted_run: tuple) -> None:
    run_dir, _ = fitted_run
    result = run_cli("validate", *job_args(run_dir, "--ckpt_path", "last"))
    assert result.returncode == 0, result.stderr
    assert "val/loss" in result.stdout and "val/acc" in result.stdout


def test_test_reruns_a_run_from_its_saved_config(fitted_run: tuple) -> None:
    run_dir, _ = fitted_run
    saved = run_dir / "version_0" / "config.yaml"
    result = run_cli("test", "-c", saved, "--trainer.progress_bar=false", "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr
    assert "test/loss" in result.stdout and "test/acc" in result.stdout


def test_predict_saves_one_output_row_per_sample(fitted_run: tuple) -> None:
    run_dir, _ = fitted_run
    result = run_cli("predict", *job_args(run_dir, "--ckpt_path", "last"))
    assert result.returncode == 0, result.stderr
    path = run_dir.resolve() / "predictions.pt"
    assert str(path) in result.stdout
    predictions = torch.load(path, weights_only=True)
    assert sum(len(batch) for batch in predictions) == TEST_SET_SIZE
    assert predictions[0].shape[1] == 10


def test_unknown_key_exits_2_with_the_nearest_key_and_no_traceback(tmp_path: Path) -> None:
    result = run_cli("fit", *job_args(tmp_path, "--trainer.max_epoch", "3"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown key 'trainer.max_epoch'")
    assert "did you mean 'trainer.max_epochs'" in result.stderr.lower()
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())  # failed before anything was written


def test_misspelt_class_path_exits_2_with_close_names(tmp_path: Path) -> None:
    result = run_cli("fit", *job_args(tmp_path, "model.class_path=trainer.models.MPL"))
    assert result.returncode == 2
    assert "model.class_path" in result.stderr and "'trainer.models.MLP'" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_trainer_argument_and_missing_checkpoint_exit_2(tmp_path: Path) -> None:
    result = run_cli("fit", *job_args(tmp_path, "--trainer.precision", "16"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: trainer: ") and "precision" in result.stderr
    result = run_cli("test", *job_args(tmp_path, "--ckpt_path", tmp_path / "absent.ckpt"))
    assert result.returncode == 2 and "--ckpt_path" in result.stderr


def test_print_config_shows_overrides_and_resolved_interpolation(tmp_path: Path) -> None:
    result = run_cli(
        "fit", *job_args(tmp_path, "--trainer.max_epochs=4", "--print_config", "optimizer.lr=1e-3")
    )
    assert result.returncode == 0, result.stderr
    assert "max_epochs: 4" in result.stdout and "T_max: 4" in result.stdout
    assert "lr: 0.001" in result.stdout
    assert not list(tmp_path.iterdir())


def test_help_lists_commands_and_override_syntax() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert all(command in result.stdout for command in ("fit", "validate", "test", "predict"))
    result = run_cli("fit", "--help")
    assert result.returncode == 0
    assert "--config" in result.stdout and "--trainer.max_epochs 3" in result.stdout


def test_trainer_alone_lists_the_commands_and_ends_with_one_error_line() -> None:
    result = run_cli()
    assert result.returncode == 2
    for command in ("fit", "validate", "test", "predict", "lr-find", "plot"):
        assert f"\n    {command} " in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: no command; choose one of fit, validate, test, predict, lr-find, plot, "
        "e.g. trainer fit --config configs/digits_mlp.yaml"
    )


def test_a_trainer_option_without_its_section_is_one_error_line_with_the_fix(
    tmp_path: Path,
) -> None:
    result = run_cli("fit", *job_args(tmp_path, "--epochs", "3"))
    assert result.returncode == 2
    assert result.stderr.startswith(
        "error: unknown key 'epochs' (did you mean 'trainer.max_epochs'?); "
        "write --trainer.max_epochs 3."
    )
    assert result.stderr.count("\n") == 1 and not list(tmp_path.iterdir())


def test_a_word_for_the_learning_rate_names_optimizer_lr(tmp_path: Path) -> None:
    result = run_cli("fit", *job_args(tmp_path, "--optimizer.lr", "abc"))
    assert result.returncode == 2
    assert result.stderr == (
        "error: optimizer.lr: expected a number, got 'abc'; write it as a number, "
        "e.g. --optimizer.lr 0.001.\n"
    )


def test_ckpt_path_of_a_run_dir_without_checkpoints_is_one_error_line(tmp_path: Path) -> None:
    for choice in ("best", "last"):
        result = run_cli("validate", *job_args(tmp_path, "--ckpt_path", choice))
        assert result.returncode == 2
        error = result.stderr.splitlines()[-1]
        assert error.startswith(f"error: --ckpt_path {choice}: no checkpoint in {tmp_path}")
        assert error.endswith("Train first with `trainer fit` and the same config and run_dir, "
                              "or pass the path of a .ckpt file.")
        assert "Traceback" not in result.stderr


def test_missing_config_is_a_clear_error() -> None:
    result = run_cli("fit")
    assert result.returncode == 2
    assert "error: no config given; pass --config FILE" in result.stderr


def test_user_data_class_without_a_test_loader_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "train_only.py").write_text(
        "from trainer.data import DigitsData\n\n\n"
        "class TrainOnly:\n"
        "    def train_loader(self):\n"
        "        return DigitsData().train_loader()\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        "model: {class_path: trainer.models.MLP}\ndata: {class_path: train_only.TrainOnly}\n"
    )
    result = run_cli("test", "-c", config, cwd=tmp_path)  # the folder is on sys.path for -m
    assert result.returncode == 2
    assert "data: TrainOnly has no test_loader() method" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_diverging_run_ends_with_one_error_line_naming_the_step(tmp_path: Path) -> None:
    result = run_cli(
        "fit",
        *job_args(tmp_path, "--optimizer.lr", "1e6", "--trainer.max_epochs", "2",
                  "--trainer.log_every_n_steps", "1"),
    )  # fmt: skip
    assert result.returncode == 1
    assert "error: the training loss is nan at optimizer step" in result.stderr
    assert "Traceback" not in result.stderr


def test_fitting_twice_into_one_run_dir_keeps_both_runs_in_numbered_folders(
    tmp_path: Path,
) -> None:
    for _ in range(2):
        result = run_cli("fit", *job_args(tmp_path, "--trainer.max_epochs", "1"))
        assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["version_0", "version_1"]
    for run in ("version_0", "version_1"):
        assert (tmp_path / run / "config.yaml").is_file()
        assert (tmp_path / run / "metrics.csv").is_file()
        assert len(list((tmp_path / run / "checkpoints").glob("last-epoch=0-*.ckpt"))) == 1
    assert f"run files:     {tmp_path.resolve() / 'version_1'}" in result.stdout


def test_ctrl_c_ends_fit_with_130_and_the_command_that_resumes_exactly_this_run(
    tmp_path: Path,
) -> None:
    overrides = ["--trainer.max_epochs", "1000", "--callbacks.0.patience", "1000"]
    command = [sys.executable, "-m", "trainer", "fit", *map(str, job_args(tmp_path, *overrides))]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    folder = tmp_path / "version_0" / "checkpoints"
    deadline = time.monotonic() + 120
    while not list(folder.glob("last-*.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr.decode()
    printed = stderr.decode().split("interrupted; resume this run with:\n")[1].strip()
    resume = shlex.split(printed)
    saved = Path(resume[resume.index("--ckpt_path") + 1])
    assert saved.parent == folder.resolve() and saved.is_file()
    assert Path(resume[0]).name == "trainer" and resume[1] == "fit"
    assert resume[2:-2] == command[4:]
    # Pasted (with an end in sight), it continues this run in its folder.
    stop_at = load_checkpoint(saved)["state"]["epoch"] + 1
    again = run_cli(*resume[1:], "--trainer.max_epochs", str(stop_at))
    assert again.returncode == 0, again.stderr
    assert f"trained:       {stop_at} epochs" in again.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == ["version_0"]
