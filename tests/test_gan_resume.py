"""The GAN example killed by SIGKILL at a random step resumes to the very same networks and
optimizers: a step that owns its update (two optimizers, manual steps) resumes exactly too."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import torch

from trainer.checkpoint import load_checkpoint

JOB = Path(__file__).parent / "jobs" / "gan_job.py"
TOTAL_STEPS = 3 * 20  # 3 epochs of 20 batches


def _start(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(JOB), str(run_dir), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _run(run_dir: Path, *extra: str) -> None:
    process = _start(run_dir, *extra)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr


def _kill_at(run_dir: Path, step: int) -> int:
    """Start the job and SIGKILL it once it reports `step`; return its exit code."""
    process = _start(run_dir, "--slow", "0.01")
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("STEP") and int(line.split()[1]) >= step:
            process.send_signal(signal.SIGKILL)
            break
    process.communicate(timeout=180)
    return process.returncode


def test_the_gan_killed_anywhere_resumes_to_identical_networks_and_optimizers(
    tmp_path: Path,
) -> None:
    step = random.Random().randrange(5, TOTAL_STEPS - 3)
    _run(tmp_path / "straight")
    assert _kill_at(tmp_path / "resumed", step) == -signal.SIGKILL
    _run(tmp_path / "resumed", "--resume")

    expected = load_checkpoint(tmp_path / "straight" / "final.ckpt")
    actual = load_checkpoint(tmp_path / "resumed" / "final.ckpt")
    context = f"SIGKILL at step {step}"
    assert actual["state"]["global_step"] == expected["state"]["global_step"] == TOTAL_STEPS
    assert {name.split(".")[0] for name in expected["model"]} == {"generator", "discriminator"}
    for name, tensor in expected["model"].items():
        assert torch.equal(tensor, actual["model"][name]), f"{context}: weight {name} differs"
    assert set(expected["optimizers"]) == {"g", "d"}
    for key, optimizer in expected["optimizers"].items():
        assert optimizer["state"], f"optimizer {key} holds no state"
        for index, state in optimizer["state"].items():
            for entry, tensor in state.items():
                other = actual["optimizers"][key]["state"][index][entry]
                assert torch.equal(tensor, other), f"{context}: optimizer {key} {index}/{entry}"
    # The resumed run continued in the killed run's folder: a sample grid for every epoch.
    samples = sorted(path.name for path in (tmp_path / "resumed" / "version_0").glob("*.png"))
    assert samples == [f"samples_epoch{epoch:03d}.png" for epoch in range(3)]
