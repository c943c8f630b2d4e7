"""Exact resume: a real training process killed anywhere continues to the very same weights,
and so does a file of an older format."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import (
    KillSteps,
    as_format_2,
    as_format_3,
    assert_equal_states,
    assert_same_final_state,
    make_loader,
    make_mlp,
    make_trainer,
    save_as_format,
    scripted_trainer,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainer import Trainer
from trainer.callbacks import Callback, EarlyStopping, ModelCheckpoint
from trainer.checkpoint import load_checkpoint
from trainer.trainer import NonFiniteLossError

JOB = Path(__file__).parent / "jobs" / "resumable_job.py"
STEPS_PER_EPOCH = 6  # 11 batches in windows of 2
TOTAL_STEPS = 5 * STEPS_PER_EPOCH


def _start(run_dir: Path, workers: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(JOB), str(run_dir), str(workers), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(
    run_dir: Path, workers: int, *extra: str, context: str = ""
) -> subprocess.CompletedProcess:
    process = _start(run_dir, workers, *extra)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, f"{context}\n{stderr}"
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _interrupt_at(
    run_dir: Path, workers: int, step: int, signum: int, *extra: str
) -> subprocess.Popen:
    """Start the job and send `signum` once it reports optimizer step `step`."""
    process = _start(run_dir, workers, "--slow", "0.015", *extra)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("STEP") and int(line.split()[1]) >= step:
            process.send_signal(signum)
            break
    # Not communicate(): the loader workers of a killed job keep its pipes open until they
    # notice their parent is gone (up to 5 s); the job itself has ended once wait() returns.
    process.wait(timeout=120)
    process.stdout.close()
    assert process.stderr is not None
    process.stderr.close()
    return process


def _scalar_steps(run_dir: Path, tag: str) -> list[int]:
    """The steps of `tag` as TensorBoard shows them: all event files, purges applied."""
    accumulator = EventAccumulator(str(run_dir / "version_0"))
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars(tag)]


def _csv_steps(run_dir: Path) -> list[str]:
    """The step column of the run's CSV log, in file order."""
    rows = (run_dir / "version_0" / "metrics.csv").read_text().splitlines()
    return [line.split(",")[0] for line in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The reference runs, one per number of loader workers, side by side."""
    runs = {workers: tmp_path_factory.mktemp(f"straight{workers}") for workers in (0, 2)}
    started = [_start(run_dir, workers) for workers, run_dir in runs.items()]
    for process in started:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
    return runs


@pytest.mark.parametrize(
    ("workers", "where"),
    [(0, "mid-epoch"), (2, "mid-epoch"), (0, "epoch edge"), (2, "epoch edge")],
)
def test_sigkill_anywhere_then_resume_gives_identical_weights(
    tmp_path: Path, uninterrupted: dict[int, Path], kill_steps: KillSteps, workers: int, where: str
) -> None:
    if where == "mid-epoch":
        step = kill_steps.choice([s for s in range(4, TOTAL_STEPS - 4) if s % STEPS_PER_EPOCH])
    else:
        step = kill_steps.choice([STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH])
    context = kill_steps.context(f"SIGKILL at step {step}, {workers} workers")
    killed = _interrupt_at(tmp_path, workers, step, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, context
    _run(tmp_path, workers, "--resume", context=context)
    assert_same_final_state(uninterrupted[workers], tmp_path, context)
    expected_steps = _scalar_steps(uninterrupted[workers], "train/loss")
    assert _scalar_steps(tmp_path, "train/loss") == expected_steps, context
    expected_steps = _scalar_steps(uninterrupted[workers], "val/loss")
    assert _scalar_steps(tmp_path, "val/loss") == expected_steps, context
    assert _csv_steps(tmp_path) == _csv_steps(uninterrupted[workers]), context


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["32", "16-mixed"])
def test_sigkill_on_cuda_then_resume_gives_identical_weights(
    tmp_path: Path, kill_steps: KillSteps, precision: str
) -> None:
    """Dropout on CUDA draws from the CUDA generator: its state must come back on resume."""
    on_cuda = ("--device", "cuda", "--precision", precision)
    straight = _run(tmp_path / "straight", 0, *on_cuda)
    assert "DEVICE cuda" in straight.stdout
    step = kill_steps.between(3, TOTAL_STEPS - 3)
    context = kill_steps.context(f"CUDA, {precision}, SIGKILL at step {step}")
    killed = _interrupt_at(tmp_path / "resumed", 0, step, signal.SIGKILL, *on_cuda)
    assert killed.returncode == -signal.SIGKILL, context
    _run(tmp_path / "resumed", 0, "--resume", *on_cuda, context=context)
    # Had the CUDA generator restarted from the seed, the masks after the kill would differ.
    assert_same_final_state(tmp_path / "straight", tmp_path / "resumed", context)


def test_sigterm_saves_at_the_next_step_and_exits_143(
    tmp_path: Path, uninterrupted: dict[int, Path], kill_steps: KillSteps
) -> None:
    step = kill_steps.between(3, TOTAL_STEPS - 6)
    context = kill_steps.context(f"SIGTERM at step {step}")
    stopped = _interrupt_at(tmp_path, 0, step, signal.SIGTERM)
    assert stopped.returncode == 143, context
    saved = sorted((tmp_path / "version_0" / "checkpoints").glob("last-*.ckpt"))
    assert saved, f"{context}: SIGTERM must leave a checkpoint behind"
    _run(tmp_path, 0, "--resume", context=context)
    assert_same_final_state(uninterrupted[0], tmp_path, context)


# Validation loss falls for three epochs, then rises: early stopping has a known answer.
_SCRIPTED_LOSSES = [5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 3.8, 3.9, 4.0, 4.1]


def _scripted_trainer(run_dir: Path, max_epochs: int) -> tuple[Trainer, EarlyStopping]:
    stopper = EarlyStopping(monitor="val/loss", patience=2, restore_best_weights=True)
    trainer = scripted_trainer(
        run_dir, {"loss": _SCRIPTED_LOSSES}, model=make_mlp(dropout=0.2),
        train_loader=make_loader(shuffle=True), val_loader=make_loader(n=8), metrics=None,
        max_epochs=max_epochs, seed=0, callbacks=[stopper], checkpoint=True,
    )  # fmt: skip
    return trainer, stopper


def test_early_stopping_stops_at_the_same_step_after_a_resume(tmp_path: Path) -> None:
    straight, straight_stopper = _scripted_trainer(tmp_path / "straight", max_epochs=10)
    straight.fit()
    assert straight_stopper.stopped_epoch == 4 and straight.global_step == 25

    first, _ = _scripted_trainer(tmp_path / "split", max_epochs=3)
    first.fit()
    second, stopper = _scripted_trainer(tmp_path / "split", max_epochs=10)
    second.fit(ckpt_path="last")
    assert (stopper.stopped_epoch, second.global_step) == (4, 25)
    assert stopper.best_epoch == 2
    for a, b in zip(straight.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b), "restore_best_weights must survive the resume"


def _lone_optimizer_trainer(run_dir: Path, is_named: bool, **options: Any) -> Trainer:
    """One AdamW with a per-step scheduler, a list of one or (`is_named`) a dict of one."""
    model = make_mlp(seed=1, dropout=0.2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return make_trainer(
        run_dir, model, optimizer={"main": optimizer} if is_named else optimizer,
        scheduler=lambda each: torch.optim.lr_scheduler.StepLR(each, step_size=2, gamma=0.5),
        scheduler_interval="step", train_loader=make_loader(shuffle=True), seed=7, **options,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("version", "as_older", "is_named"),
    [(3, as_format_3, False), (3, as_format_3, True), (2, as_format_2, False)],
    ids=["format-3", "format-3-dict-of-one", "format-2"],
)
def test_a_file_of_an_older_format_with_the_optimizer_apart_resumes_exactly(
    tmp_path: Path, version: int, as_older: Callable[[dict], dict], is_named: bool
) -> None:
    """Before format 4 a lone optimizer and its scheduler were kept apart, without a name."""
    straight = _lone_optimizer_trainer(tmp_path / "straight", is_named)
    straight.fit()
    saver = ModelCheckpoint(every_n_steps=3, keep_last=10, dirpath=tmp_path / "saved")
    _lone_optimizer_trainer(tmp_path / "saving", is_named, callbacks=[saver]).fit()
    # Mid-epoch: 3 of the first epoch's 5 batches, the scheduler stepped and its rate halved.
    saved = load_checkpoint(saver.dirpath / "last-epoch=0-step=3.ckpt")
    assert set(saved["optimizers"]) == {"main" if is_named else "0"}
    older = save_as_format(as_older(saved), tmp_path / "older.ckpt", version)
    assert not load_checkpoint(older).get("optimizers"), "the older file keeps none by name"

    resumed = _lone_optimizer_trainer(tmp_path / "resumed", is_named)
    resumed.fit(ckpt_path=older)
    assert resumed.global_step == straight.global_step == 10
    assert_equal_states(resumed.model.state_dict(), straight.model.state_dict(), "model")
    assert_equal_states(
        resumed.optimizer.state_dict(), straight.optimizer.state_dict(), "optimizer"
    )
    assert_equal_states(
        resumed.scheduler.state_dict(), straight.scheduler.state_dict(), "scheduler"
    )


def test_signal_handlers_are_restored_when_fit_returns(run_dir: Path) -> None:
    def mine(signum: int, frame: Any) -> None:
        """A user's own handler."""

    previous = signal.signal(signal.SIGTERM, mine)
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        make_trainer(run_dir).fit()
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_sigint)


def test_an_ignored_signal_stays_ignored_while_fitting(run_dir: Path) -> None:
    """A job started with `&` ignores the terminal's Ctrl-C; its training must too."""
    seen = []

    class Look(Callback):
        def on_train_epoch_end(self, trainer: Trainer) -> None:
            seen.append((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))

    previous_sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        make_trainer(run_dir, callbacks=[Look()]).fit()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous_sigint)
    sigint, sigterm = seen[0]
    assert sigint is signal.SIG_IGN
    assert sigterm not in (signal.SIG_IGN, signal.SIG_DFL), "SIGTERM is still watched"


def test_sigint_saves_and_exits_130(tmp_path: Path) -> None:
    stopped = _interrupt_at(tmp_path, 0, 5, signal.SIGINT)
    assert stopped.returncode == 130
    assert list((tmp_path / "version_0" / "checkpoints").glob("last-*.ckpt"))


class _PoisonedStep(Trainer):
    """Returns a NaN loss on batch 2 of each epoch."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if batch_idx == 2 else loss


def _poisoned(run_dir: Path, **options: Any) -> Trainer:
    return make_trainer(
        run_dir, trainer_class=_PoisonedStep, val_loader=None, metrics=None, checkpoint=True,
        **options,
    )  # fmt: skip


def test_a_nan_loss_raises_naming_the_step_before_any_checkpoint_holds_it(run_dir: Path) -> None:
    trainer = _poisoned(run_dir, log_every_n_steps=1)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    message = str(info.value)
    assert "at optimizer step 3 (epoch 0)" in message and "finite up to step 2" in message
    assert "learning rate" in message and "nan_policy='skip'" in message
    assert not list((run_dir / "version_0" / "checkpoints").glob("*.ckpt"))


def test_nan_policy_skip_leaves_the_bad_batch_out_and_counts_it(run_dir: Path) -> None:
    trainer = _poisoned(run_dir, nan_policy="skip")
    with pytest.warns(UserWarning, match="skipping a batch with a non-finite loss"):
        history = trainer.fit()
    assert trainer.state.skipped_batches == 2
    assert all(math.isfinite(p.sum().item()) for p in trainer.model.parameters())
    assert all(math.isfinite(record["train/loss"]) for record in history)


def test_sigkill_right_after_a_checkpoint_keeps_every_event_up_to_it(tmp_path: Path) -> None:
    """The logger flushes before each checkpoint: killed once one is on disk, nothing up to
    its step is missing from TensorBoard."""
    process = _start(tmp_path, 0, "--slow", "0.05")
    checkpoints = tmp_path / "version_0" / "checkpoints"
    deadline = time.monotonic() + 60
    while not (saved := sorted(checkpoints.glob("last-*step=6.ckpt"))):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, saved
    steps = _scalar_steps(tmp_path, "train/loss")
    assert [step for step in steps if step <= 6] == [2, 4, 6]
