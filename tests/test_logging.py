"""What the trainer logs and what it costs: no host reads between log steps, throughput, the
gradient norm, hyperparameters, the default loggers, and who writes when distributed."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_loader, make_mlp, make_trainer
from torch import nn
from torch.overrides import TorchFunctionMode

from trainer import Trainer
from trainer.callbacks import Callback, CSVLogger, ProgressBar, TensorBoardLogger

# Every way a tensor's value reaches Python: on a GPU each one waits for the device.
HOST_READS = frozenset(
    {"item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__",
     "__format__", "__repr__"}
)  # fmt: skip


class HostReadCounter(TorchFunctionMode, Callback):
    """Counts host reads of tensor values, keyed by the optimizer step the batch leads to.

    Reads are charged to the step whose `on_train_batch_start` came last, so the reads of
    an epoch's end (epoch means, validation, checkpoints) fall to the epoch's last step.
    """

    def __init__(self) -> None:
        TorchFunctionMode.__init__(self)
        self.step = 0
        self.reads: Counter[int] = Counter()

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        if getattr(func, "__name__", "") in HOST_READS:
            self.reads[self.step] += 1
        return func(*args, **(kwargs or {}))

    def on_train_batch_start(self, trainer: Trainer, batch: Any, batch_idx: int) -> None:
        self.step = trainer.global_step + 1


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"gradient_clip_val": 1.0},
        {"log_grad_norm": True},
        {"accumulate_grad_batches": 2},
    ],
    ids=["default", "clipping", "grad-norm", "accumulation"],
)
def test_a_step_that_is_not_a_log_step_reads_nothing_from_the_device(
    run_dir: Path, options: dict[str, Any]
) -> None:
    """Loggers, a progress bar between redraws, checkpoints and `self.log` all on; 10 batches
    per epoch, a log every 2 optimizer steps."""

    class LogsAMean(Trainer):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            inputs, targets = batch
            outputs = self.model(inputs)
            self.log("train/confidence", outputs.softmax(-1).amax(-1).mean())
            return self.loss_fn(outputs, targets)

    counter = HostReadCounter()
    model = make_mlp()
    trainer = LogsAMean(
        model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=make_loader(n=80, shuffle=True),
        val_loader=make_loader(n=16, seed=1),
        max_epochs=2,
        log_every_n_steps=2,
        run_dir=run_dir,
        device="cpu",
        progress_bar=ProgressBar(force=True, refresh_rate=1e-6),
        callbacks=[counter],
        **options,
    )
    with counter:
        trainer.fit()

    steps_per_epoch = 10 // options.get("accumulate_grad_batches", 1)
    batches = 20
    # With accumulation, batch b leads to step ceil(b / 2): step s is "charged" twice.
    log_steps = {s for s in range(1, trainer.global_step + 1) if s % 2 == 0}
    epoch_ends = {steps_per_epoch, 2 * steps_per_epoch}
    quiet = set(range(1, trainer.global_step + 1)) - log_steps - epoch_ends
    assert trainer.global_step == batches // options.get("accumulate_grad_batches", 1)
    assert quiet, "the run must have steps that are neither log steps nor epoch ends"
    assert {step: counter.reads[step] for step in quiet} == dict.fromkeys(quiet, 0)
    assert all(counter.reads[step] > 0 for step in log_steps), "log steps must read the loss"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])  # "16-mixed" syncs by design
def test_on_cuda_a_step_that_is_not_a_log_step_never_synchronises(
    run_dir: Path, precision: str
) -> None:
    """CUDA's own sync detector raises on any synchronising call between log steps."""

    class NoSyncBetweenLogs(Callback):
        def on_train_batch_start(self, trainer: Trainer, batch: Any, batch_idx: int) -> None:
            is_log_step = (trainer.global_step + 1) % trainer.log_every_n_steps == 0
            is_last = batch_idx + 1 == trainer.num_train_batches
            torch.cuda.set_sync_debug_mode(0 if is_log_step or is_last else "error")

        def on_train_batch_end(
            self, trainer: Trainer, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            torch.cuda.set_sync_debug_mode(0)

    model = make_mlp()
    trainer = Trainer(
        model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=make_loader(n=80),
        val_loader=make_loader(n=16, seed=1),
        max_epochs=2,
        log_every_n_steps=3,
        gradient_clip_val=1.0,
        run_dir=run_dir,
        device="cuda",
        precision=precision,
        callbacks=[NoSyncBetweenLogs()],
    )
    try:
        trainer.fit()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert trainer.global_step == 20


class Logged(Callback):
    """Every figure handed to loggers, by step."""

    def __init__(self) -> None:
        self.by_step: dict[int, dict[str, float]] = {}

    def on_log(self, trainer: Trainer, metrics: dict[str, float], step: int) -> None:
        self.by_step.setdefault(step, {}).update(metrics)


def test_log_steps_carry_the_samples_per_second_since_the_last_log(
    trainer_factory: Callable,
) -> None:
    logged = Logged()
    trainer_factory(callbacks=[logged], log_every_n_steps=2, max_epochs=1).fit()
    rates = [figures.get("train/samples_per_sec") for step, figures in logged.by_step.items()]
    assert list(logged.by_step) == [2, 4, 5]
    assert all(rate is not None and rate > 0 for rate in rates[:2])
    assert rates[2] is None  # the epoch figures carry none


def test_grad_norm_is_logged_at_log_steps_when_asked_and_equals_the_true_norm(
    trainer_factory: Callable,
) -> None:
    class GradNorms(Callback):
        def __init__(self) -> None:
            self.by_step: dict[int, float] = {}

        def on_before_optimizer_step(self, trainer: Trainer, optimizer: Any) -> None:
            grads = [p.grad.flatten() for p in trainer.model.parameters()]
            self.by_step[trainer.global_step + 1] = float(torch.cat(grads).norm())

    norms, logged = GradNorms(), Logged()
    trainer_factory(
        callbacks=[norms, logged], log_every_n_steps=2, max_epochs=1, log_grad_norm=True
    ).fit()
    assert logged.by_step[2]["train/grad_norm"] == pytest.approx(norms.by_step[2], rel=1e-5)
    assert logged.by_step[4]["train/grad_norm"] == pytest.approx(norms.by_step[4], rel=1e-5)
    assert "train/grad_norm" not in logged.by_step[5]


def test_no_grad_norm_unless_clipping_or_asked(trainer_factory: Callable) -> None:
    logged = Logged()
    trainer_factory(callbacks=[logged], log_every_n_steps=1, max_epochs=1).fit()
    assert not any("train/grad_norm" in figures for figures in logged.by_step.values())


def test_default_hparams_are_the_plain_options_and_the_objects_names(
    trainer_factory: Callable,
) -> None:
    trainer = trainer_factory(max_epochs=3, gradient_clip_val=0.5, precision="bf16-mixed")
    assert trainer.hparams == {
        "model": "Sequential",
        "optimizer": "SGD",
        "loss_fn": "CrossEntropyLoss",
        "lr": 0.1,
        "batch_size": 8,
        "max_epochs": 3,
        "max_steps": None,
        "precision": "bf16-mixed",
        "accumulate_grad_batches": 1,
        "gradient_clip_val": 0.5,
        "gradient_clip_algorithm": "norm",
        "scheduler_interval": "epoch",
        "scheduler_monitor": "val/loss",
        "seed": None,
        "compile": False,
        "nan_policy": "raise",
        "log_grad_norm": False,
        "strategy": "auto",
        "val_check_interval": None,
        "check_val_every_n_epoch": 1,
        "num_sanity_val_steps": 2,
        "max_time": None,
        "limit_train_batches": None,
        "limit_val_batches": None,
        "overfit_batches": 0,
        "fast_dev_run": False,
    }


def test_given_hparams_replace_the_defaults(trainer_factory: Callable) -> None:
    trainer = trainer_factory(hparams={"optimizer": {"lr": 0.1}, "note": "baseline"})
    assert trainer.hparams == {"optimizer": {"lr": 0.1}, "note": "baseline"}


def test_logger_true_means_tensorboard_and_csv(trainer_factory: Callable, run_dir: Path) -> None:
    trainer_factory(logger=True, max_epochs=1).fit()
    assert list((run_dir / "version_0").glob("events.out.tfevents.*"))
    assert (run_dir / "version_0" / "metrics.csv").is_file()


@pytest.mark.parametrize(
    ("logger", "callbacks", "expected"),
    [
        (True, [], ["TensorBoardLogger", "CSVLogger"]),
        (False, [], []),
        (False, [CSVLogger()], ["CSVLogger"]),
        (True, [CSVLogger()], ["TensorBoardLogger", "CSVLogger"]),
        (TensorBoardLogger(), [], ["TensorBoardLogger", "CSVLogger"]),
        (CSVLogger(), [TensorBoardLogger()], ["CSVLogger", "TensorBoardLogger"]),
    ],
    ids=["true", "false", "false-own-csv", "own-csv", "own-tensorboard", "both-own"],
)
def test_an_own_logger_replaces_only_the_default_of_its_class(
    trainer_factory: Callable, logger: Any, callbacks: list[Callback], expected: list[str]
) -> None:
    trainer = trainer_factory(logger=logger, callbacks=callbacks)
    loggers = [c for c in trainer.callbacks if isinstance(c, (TensorBoardLogger, CSVLogger))]
    assert [type(logger).__name__ for logger in loggers] == expected
    for own in (*callbacks, logger):
        if isinstance(own, Callback):
            assert any(callback is own for callback in trainer.callbacks)


def test_a_single_process_is_global_zero(trainer_factory: Callable) -> None:
    assert trainer_factory().is_global_zero


def test_only_rank_zero_writes_logs_and_prints_progress(tmp_path: Path) -> None:
    """Two real processes in a gloo group train into one run folder."""
    job = Path(__file__).parent / "jobs" / "two_ranks_job.py"
    result = subprocess.run(
        [sys.executable, str(job), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Epoch 1/2") == 1, result.stdout
    assert "rank 0 is_global_zero=True" in result.stdout
    assert "rank 1 is_global_zero=False" in result.stdout
    assert len(list((tmp_path / "run" / "version_0").glob("events.out.tfevents.*"))) == 1
    rows = (tmp_path / "run" / "version_0" / "metrics.csv").read_text().splitlines()
    # each rank trains on its half: 20 samples, 3 batches of 8 per epoch
    assert [row.split(",")[0] for row in rows[1:]] == ["3", "6"]


def test_a_value_logged_once_is_written_once(run_dir: Path) -> None:
    """Step figures hold what was logged since the previous log step, nothing older."""

    class LogsOnce(Trainer):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if self.epoch == 0 and batch_idx == 0:
                self.log("train/once", torch.tensor(3.0))
            return super().training_step(batch, batch_idx)

    class Written(Callback):
        def __init__(self) -> None:
            self.steps: list[tuple[int, set[str]]] = []

        def on_log(self, trainer: Trainer, metrics: dict[str, float], step: int) -> None:
            self.steps.append((step, set(metrics)))

    written = Written()
    make_trainer(run_dir, trainer_class=LogsOnce, log_every_n_steps=1, callbacks=[written]).fit()
    with_once = [step for step, names in written.steps if "train/once" in names]
    assert with_once == [1]  # the first step's figures only
    assert [step for step, names in written.steps if "train/once_epoch" in names] == [5]


@pytest.mark.parametrize("stop", ["max_steps", "epochs"])
def test_the_bar_says_validating_only_while_it_validates_and_closes_where_training_stops(
    run_dir: Path, capsys: pytest.CaptureFixture[str], stop: str
) -> None:
    """Validations every 2 steps inside 10-batch epochs, then a stop inside an epoch
    (max_steps 13) or at the last epoch's end: the bar names each validation once, shows the
    step, and is closed before `fit` returns, so what is printed next starts a line."""
    bar = ProgressBar(force=True, refresh_rate=1e6, summary=False)
    until = {"max_steps": 13} if stop == "max_steps" else {"max_epochs": 2}
    trainer = make_trainer(
        run_dir, progress_bar=bar, val_check_interval=2, train_loader=make_loader(n=80),
        num_sanity_val_steps=0, **until,
    )  # fmt: skip
    trainer.fit()
    drawn = capsys.readouterr().err.replace("\r", "\n")
    assert "(validating)" in drawn and "(validating) (validating)" not in drawn
    assert ("step=12/13" in drawn) == (stop == "max_steps")
    assert "Epoch 2/?" not in drawn
    assert bar._bar is None and drawn.endswith("\n")
