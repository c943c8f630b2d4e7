"""Exact resume: a real training process killed anywhere continues to the very same weights."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainer.checkpoint import load_checkpoint

JOB = Path(__file__).parent / "jobs" / "resumable_job.py"
STEPS_PER_EPOCH = 6  # 11 batches in windows of 2
TOTAL_STEPS = 5 * STEPS_PER_EPOCH


def _start(run_dir: Path, workers: int, *extra: str) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.Popen(
        [sys.executable, str(JOB), str(run_dir), str(workers), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


def _run(run_dir: Path, workers: int, *extra: str) -> subprocess.CompletedProcess:
    process = _start(run_dir, workers, *extra)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _interrupt_at(run_dir: Path, workers: int, step: int, signum: int) -> subprocess.Popen:
    """Start the job and send `signum` once it reports optimizer step `step`."""
    process = _start(run_dir, workers, "--slow", "0.015")
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("STEP") and int(line.split()[1]) >= step:
            process.send_signal(signum)
            break
    process.communicate(timeout=120)
    return process


def _final_state(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "final.ckpt")


def _assert_identical(expected: dict, actual: dict, context: str) -> None:
    for name, tensor in expected["model"].items():
        assert torch.equal(tensor, actual["model"][name]), f"{context}: weight {name} differs"
    for index, state in expected["optimizer"]["state"].items():
        for key, tensor in state.items():
            other = actual["optimizer"]["state"][index][key]
            assert torch.equal(tensor, other), f"{context}: optimizer {index}/{key} differs"
    assert expected["state"]["global_step"] == actual["state"]["global_step"]


def _scalar_steps(run_dir: Path, tag: str) -> list[int]:
    """The steps of `tag` as TensorBoard shows them: all event files, purges applied."""
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars(tag)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The reference runs, one per number of loader workers."""
    runs = {}
    for workers in (0, 2):
        run_dir = tmp_path_factory.mktemp(f"straight{workers}")
        _run(run_dir, workers)
        runs[workers] = run_dir
    return runs


@pytest.mark.parametrize(
    ("workers", "where"),
    [(0, "mid-epoch"), (2, "mid-epoch"), (0, "epoch edge"), (2, "epoch edge")],
)
def test_sigkill_anywhere_then_resume_gives_identical_weights(
    tmp_path: Path, uninterrupted: dict[int, Path], workers: int, where: str
) -> None:
    rng = random.Random()
    if where == "mid-epoch":
        step = rng.choice([s for s in range(4, TOTAL_STEPS - 4) if s % STEPS_PER_EPOCH])
    else:
        step = rng.choice([STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH])
    killed = _interrupt_at(tmp_path, workers, step, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    _run(tmp_path, workers, "--resume")
    context = f"SIGKILL at step {step}, {workers} workers"
    _assert_identical(_final_state(uninterrupted[workers]), _final_state(tmp_path), context)
    expected_steps = _scalar_steps(uninterrupted[workers], "train/loss")
    assert _scalar_steps(tmp_path, "train/loss") == expected_steps, context
    assert _scalar_steps(tmp_path, "val/loss") == _scalar_steps(uninterrupted[workers], "val/loss")


def test_sigterm_saves_at_the_next_step_and_exits_143(
    tmp_path: Path, uninterrupted: dict[int, Path]
) -> None:
    step = random.Random().randrange(3, TOTAL_STEPS - 6)
    stopped = _interrupt_at(tmp_path, 0, step, signal.SIGTERM)
    assert stopped.returncode == 143
    saved = sorted((tmp_path / "checkpoints").glob("last-*.ckpt"))
    assert saved, "SIGTERM must leave a checkpoint behind"
    _run(tmp_path, 0, "--resume")
    _assert_identical(
        _final_state(uninterrupted[0]), _final_state(tmp_path), f"SIGTERM at step {step}"
    )
