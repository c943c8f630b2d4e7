"""Quick debug runs and per-epoch limits: `limit_train_batches`, `limit_val_batches`,
`overfit_batches` and `fast_dev_run`, on real loaders whose batches are recorded by content.

Each sample carries its index as its target, so a test reads which samples every training
and validation step saw, and compares them with the batches the same loader gives a run
without limits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from trainer import Trainer
from trainer.callbacks import CSVLogger, ModelCheckpoint, TensorBoardLogger
from trainer.config import build_job, load_config
from trainer.limits import RunLimits, resolve_limit

REPO = Path(__file__).resolve().parents[1]
SAMPLES, BATCH, EPOCHS = 40, 4, 3  # 10 batches an epoch


def _inputs() -> torch.Tensor:
    return torch.randn(SAMPLES, 8, generator=torch.Generator().manual_seed(0))


def _dataset() -> TensorDataset:
    return TensorDataset(_inputs(), torch.arange(SAMPLES))


class _Stream(IterableDataset):
    """An IterableDataset that shuffles itself from torch's generator each epoch (or not)."""

    def __init__(self, shuffle: bool = True) -> None:
        self.inputs, self.shuffle = _inputs(), shuffle

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(SAMPLES) if self.shuffle else torch.arange(SAMPLES)
        for index in order.tolist():
            yield self.inputs[index], torch.tensor(index)


LOADERS: dict[str, Callable[[], Any]] = {
    "shuffled DataLoader": lambda: DataLoader(_dataset(), batch_size=BATCH, shuffle=True),
    "2 workers": lambda: DataLoader(_dataset(), batch_size=BATCH, shuffle=True, num_workers=2),
    "IterableDataset": lambda: DataLoader(_Stream(), batch_size=BATCH),
}


class _Recorder(Trainer):
    """Records the sample indices of every training and validation batch, per epoch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trained: dict[int, list[list[int]]] = {}
        self.validated: list[list[list[int]]] = []
        self.tested: list[list[int]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, indices = batch
        self.trained.setdefault(self.epoch, []).append(indices.tolist())
        return self.model(inputs).pow(2).mean()

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, indices = batch
        if batch_idx == 0:
            self.validated.append([])
        self.validated[-1].append(indices.tolist())
        return self.model(inputs).pow(2).mean()

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, indices = batch
        self.tested.append(indices.tolist())
        return self.model(inputs).pow(2).mean()


def _recorder(loader: str | Any, window: int = 1, **options: Any) -> _Recorder:
    torch.manual_seed(5)
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    settings: dict[str, Any] = dict(
        max_epochs=EPOCHS, accumulate_grad_batches=window, progress_bar=False, logger=False,
        checkpoint=False, device="cpu", run_dir="runs", num_sanity_val_steps=0,
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5),
        val_loader=DataLoader(_dataset(), batch_size=BATCH),
    )  # fmt: skip
    settings |= options
    train_loader = LOADERS[loader]() if isinstance(loader, str) else loader
    return _Recorder(model, optimizer=optimizer, train_loader=train_loader, **settings)


def _batches_of_a_run_without_limits(loader: str) -> dict[int, list[list[int]]]:
    run = _recorder(loader)
    run.fit()
    return run.trained


# A fraction of a loader without a length is refused (tested below): the stream takes a count.
LIMITED = [(loader, 5) for loader in LOADERS] + [
    (loader, 0.5) for loader in LOADERS if loader != "IterableDataset"
]


@pytest.mark.parametrize("window", [1, 3], ids=["no accumulation", "accumulate 3"])
@pytest.mark.parametrize(("loader", "limit"), LIMITED, ids=[f"{a}, {b}" for a, b in LIMITED])
def test_a_limited_epoch_is_the_first_batches_of_each_epochs_order_and_a_whole_epoch(
    loader: str, window: int, limit: int | float
) -> None:
    unlimited = _batches_of_a_run_without_limits(loader)
    run = _recorder(loader, window, limit_train_batches=limit)
    history = run.fit()
    assert {epoch: batches for epoch, batches in run.trained.items()} == {
        epoch: batches[:5] for epoch, batches in unlimited.items()
    }
    steps_per_epoch = -(-5 // window)  # the epoch's last batch closes a short window
    assert run.global_step == EPOCHS * steps_per_epoch
    assert [record["epoch"] for record in history] == [0.0, 1.0, 2.0]
    assert len(run.validated) == EPOCHS  # each limited epoch ended, and validated
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**EPOCHS)
    if loader != "IterableDataset":
        assert run.num_train_batches == 5


@pytest.mark.parametrize("limit", [2, 0.25, 0], ids=["2 batches", "a quarter", "off"])
def test_limit_val_batches_validates_on_the_first_batches(limit: int | float) -> None:
    run = _recorder("shuffled DataLoader", limit_val_batches=limit)
    history = run.fit()
    if limit == 0:
        assert run.validated == [] and "val/loss" not in history[-1]
        return
    first_two = [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert run.validated == [first_two] * EPOCHS
    assert "val/loss" in history[-1]
    run.validate()
    assert run.validated[-1] == first_two  # validate() keeps the limit
    run.test(DataLoader(_dataset(), batch_size=BATCH))
    assert len(run.tested) == 10  # and test() has none


OVERFIT = [
    ("shuffled DataLoader", 2), ("shuffled DataLoader", 0.2), ("2 workers", 2),
    ("2 workers", 0.2), ("IterableDataset in order", 2),
]  # fmt: skip


@pytest.mark.parametrize("window", [1, 3], ids=["no accumulation", "accumulate 3"])
@pytest.mark.parametrize(("loader", "count"), OVERFIT, ids=[f"{a}, {b}" for a, b in OVERFIT])
def test_overfit_batches_trains_on_the_same_first_batches_every_epoch(
    loader: str, window: int, count: int | float
) -> None:
    if loader == "IterableDataset in order":
        made = DataLoader(_Stream(shuffle=False), batch_size=BATCH)
    else:
        made = LOADERS[loader]()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = _recorder(made, window, overfit_batches=count)
    said = [str(each.message) for each in caught if "overfit_batches" in str(each.message)]
    assert len(said) == (0 if loader.startswith("IterableDataset") else 1), said
    run.fit()
    first_two = [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert run.trained == {epoch: first_two for epoch in range(EPOCHS)}
    assert run.validated == [first_two] * EPOCHS
    assert run.global_step == EPOCHS * -(-2 // window)


def test_overfit_batches_without_a_val_loader_trains_and_does_not_validate() -> None:
    run = _recorder("shuffled DataLoader", overfit_batches=1, val_loader=None)
    history = run.fit()
    assert run.trained == {epoch: [[0, 1, 2, 3]] for epoch in range(EPOCHS)}
    assert run.validated == [] and "val/loss" not in history[-1]


def _every_file(*folders: Path) -> list[Path]:
    return sorted(path for folder in folders for path in folder.rglob("*"))


@pytest.mark.parametrize("fast_dev_run", [True, 3], ids=["True", "3 batches"])
@pytest.mark.parametrize("loader", list(LOADERS))
def test_fast_dev_run_runs_n_batches_of_everything_once_and_writes_no_files(
    tmp_path: Path, loader: str, fast_dev_run: bool | int
) -> None:
    count = int(fast_dev_run)
    # cwd is tmp_path (conftest): the default run_dir, runs/<time>, would land there.
    saver = ModelCheckpoint(dirpath=tmp_path / "mine", every_n_steps=1)
    run = _recorder(
        loader, fast_dev_run=fast_dev_run, max_epochs=10, max_steps=100, run_dir=None,
        progress_bar=True, logger=True, checkpoint=True,
        callbacks=[saver, CSVLogger(tmp_path / "mine.csv"), TensorBoardLogger(tmp_path / "tb")],
    )  # fmt: skip
    history = run.fit()
    assert len(history) == 1 and run.epoch == 1 and run.global_step == count
    assert [len(batches) for batches in run.trained.values()] == [count]
    assert run.validated == [[[*range(i * BATCH, (i + 1) * BATCH)] for i in range(count)]]
    figures = run.test(DataLoader(_dataset(), batch_size=BATCH))
    assert "test/loss" in figures and len(run.tested) == count
    assert len(run.predict(DataLoader(_dataset(), batch_size=BATCH))) == count
    assert run.log_dir is None
    assert _every_file(tmp_path, Path.cwd()) == []
    assert [type(callback).__name__ for callback in run.callbacks] == ["ProgressBar"]


def test_fast_dev_run_skips_the_settings_a_dev_run_fixes() -> None:
    limits = RunLimits.of(fast_dev_run=2)
    assert limits.setting("num_sanity_val_steps", 5) == 0
    assert limits.setting("val_check_interval", 100) is None
    assert limits.setting("max_epochs", 20) == 1
    assert limits.setting("max_steps", None) == 2
    assert limits.setting("gradient_clip_val", 1.0) == 1.0
    assert RunLimits.of().setting("num_sanity_val_steps", 5) == 5
    assert not limits.writes_files and RunLimits.of(limit_train_batches=2).writes_files


def test_the_cli_dev_run_of_the_default_job_leaves_the_file_system_untouched(
    tmp_path: Path,
) -> None:
    before = _every_file(REPO / "configs")
    completed = subprocess.run(
        [sys.executable, "-m", "trainer", "fit", "--config", str(REPO / "configs/digits_mlp.yaml"),
         "--trainer.fast_dev_run", "true"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=os.environ,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert _every_file(tmp_path) == []
    assert _every_file(REPO / "configs") == before
    last = completed.stdout.strip().splitlines()[-1]
    assert last.startswith("fast_dev_run: trained 1 batch (1 optimizer step), validated 1 batch")
    assert "no files" in last


def test_the_limits_come_from_a_config_and_its_command_line_overrides() -> None:
    overrides = [
        "trainer.limit_train_batches=0.1", "trainer.limit_val_batches=3",
        "trainer.overfit_batches=0", "trainer.fast_dev_run=true",
    ]  # fmt: skip
    job = build_job(load_config([REPO / "configs/digits_mlp.yaml"], overrides))
    assert job.trainer_kwargs["limit_train_batches"] == 0.1
    assert job.trainer_kwargs["limit_val_batches"] == 3
    assert job.trainer_kwargs["fast_dev_run"] is True
    job = build_job(load_config([REPO / "configs/digits_mlp.yaml"], ["trainer.overfit_batches=2",
                                                                     "trainer.fast_dev_run=2"]))
    assert job.trainer_kwargs["overfit_batches"] == 2 and job.trainer_kwargs["fast_dev_run"] == 2
    trainer = job.make_trainer(train_loader=job.data.train_loader())
    assert trainer.limits.fast_dev_run == 2


BAD = [
    (dict(limit_train_batches=0), ValueError, ["limit_train_batches=0", "int >= 1"]),
    (dict(limit_train_batches=-2), ValueError, ["limit_train_batches=-2", "int >= 1"]),
    (dict(limit_train_batches=1.5), ValueError, ["limit_train_batches=1.5", "(0, 1]"]),
    (dict(limit_train_batches=3.0), ValueError, ["limit_train_batches=3.0", "=3 for 3 batches"]),
    (dict(limit_train_batches="3"), TypeError, ["limit_train_batches", "'3'", "an int"]),
    (dict(limit_train_batches=True), TypeError, ["limit_train_batches", "True"]),
    (dict(limit_val_batches=-1), ValueError, ["limit_val_batches=-1", "int >= 0"]),
    (dict(limit_val_batches=2.0), ValueError, ["limit_val_batches=2.0", "(0, 1]"]),
    (dict(overfit_batches=-1), ValueError, ["overfit_batches=-1", "int >= 0"]),
    (dict(overfit_batches=None), TypeError, ["overfit_batches", "None"]),
    (dict(overfit_batches=2, limit_train_batches=3), ValueError,
     ["overfit_batches=2", "limit_train_batches=3", "only one"]),
    (dict(fast_dev_run=-1), ValueError, ["fast_dev_run", "-1", "fast_dev_run=True"]),
    (dict(fast_dev_run="yes"), TypeError, ["fast_dev_run", "'yes'"]),
    (dict(limit_train_batches=0.01), ValueError,
     ["limit_train_batches=0.01 of 10 batches", "less than one batch", "at least"]),
]  # fmt: skip


@pytest.mark.parametrize(("options", "error", "words"), BAD, ids=[str(b[0]) for b in BAD])
def test_bad_limits_fail_in_the_constructor_naming_the_argument_value_and_fix(
    options: dict[str, Any], error: type[Exception], words: list[str]
) -> None:
    with pytest.raises(error) as raised:
        _recorder("shuffled DataLoader", **options)
    for word in words:
        assert word in str(raised.value), str(raised.value)


@pytest.mark.parametrize("keyword", ["limit_train_batches", "overfit_batches"])
def test_a_fraction_of_a_loader_without_a_length_is_refused_naming_the_fix(keyword: str) -> None:
    with pytest.raises(ValueError, match=rf"{keyword}=0.5 is a fraction .* no length"):
        _recorder("IterableDataset", **{keyword: 0.5})


def test_a_fraction_of_a_val_loader_without_a_length_is_refused() -> None:
    with pytest.raises(ValueError, match=r"limit_val_batches=0\.5 is a fraction"):
        _recorder(
            "shuffled DataLoader", limit_val_batches=0.5,
            val_loader=DataLoader(_Stream(), batch_size=BATCH),
        )  # fmt: skip


def test_a_count_limit_of_a_loader_without_a_length_runs_at_most_that_many() -> None:
    assert resolve_limit(3, None, "limit_val_batches") == 3
    assert resolve_limit(30, 10, "limit_val_batches") == 10
    assert resolve_limit(0.35, 10, "limit_val_batches") == 3
    assert resolve_limit(1.0, 10, "limit_val_batches") == 10
    run = _recorder("IterableDataset", limit_train_batches=30)  # longer than the stream
    run.fit()
    assert [len(batches) for batches in run.trained.values()] == [10] * EPOCHS
