"""The GAN example killed by SIGKILL at a seeded random step resumes to the very same networks
and optimizers: a step that owns its update (two optimizers, manual steps) resumes exactly too.

The uninterrupted run and the run to be killed share nothing, so they run side by side; the
resumed run follows the kill.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from conftest import KillSteps, assert_same_final_state

from trainer.checkpoint import load_checkpoint

JOB = Path(__file__).parent / "jobs" / "gan_job.py"
TOTAL_STEPS = 3 * 20  # 3 epochs of 20 batches


def _start(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(JOB), str(run_dir), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _finish(process: subprocess.Popen, context: str) -> None:
    """Wait for a job that must end well."""
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, f"{context}: {process.args}\n{stderr}"


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
    tmp_path: Path, kill_steps: KillSteps
) -> None:
    step = kill_steps.between(5, TOTAL_STEPS - 3)
    context = kill_steps.context(f"SIGKILL at step {step}")
    straight = _start(tmp_path / "straight")
    assert _kill_at(tmp_path / "resumed", step) == -signal.SIGKILL, context
    _finish(straight, context)
    _finish(_start(tmp_path / "resumed", "--resume"), context)

    assert_same_final_state(tmp_path / "straight", tmp_path / "resumed", context)
    expected = load_checkpoint(tmp_path / "straight" / "final.ckpt")
    assert expected["state"]["global_step"] == TOTAL_STEPS, context
    networks = {name.split(".")[0] for name in expected["model"]}
    assert networks == {"generator", "discriminator"}, f"{context}: {networks}"
    assert set(expected["optimizers"]) == {"g", "d"}, f"{context}: {set(expected['optimizers'])}"
    for name, optimizer in expected["optimizers"].items():
        assert optimizer["state"], f"{context}: optimizer {name} holds no state"
    # The resumed run continued in the killed run's folder: a sample grid for every epoch.
    samples = sorted(path.name for path in (tmp_path / "resumed" / "version_0").glob("*.png"))
    assert samples == [f"samples_epoch{epoch:03d}.png" for epoch in range(3)], context
