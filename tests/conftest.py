"""Shared fixtures: a tiny MLP, real digits loaders, a fresh run folder per test, quiet
trainers (one with scripted validation figures), seeded kill steps for the tests that kill
real runs, checkpoints rewritten as older formats held them, and the checks that an error is
trainer's own."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainer
from trainer import Trainer
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.data import DigitsData
from trainer.metrics import accuracy

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(trainer.__file__).resolve().parent
SEED_VARIABLE = "TRAINER_TEST_SEED"


def _session_seed() -> int:
    """The seed of this session's kill steps: `TRAINER_TEST_SEED` when set, else drawn once.

    Drawn afresh, the kill tests reach other steps in each session; set, a failure repeats.
    """
    chosen = os.environ.get(SEED_VARIABLE)
    return int(chosen) if chosen else random.SystemRandom().randrange(1_000_000)


SESSION_SEED = _session_seed()


def pytest_report_header() -> str:
    return f"kill steps: {SEED_VARIABLE}={SESSION_SEED} (set it to repeat them)"


class KillSteps:
    """Where a test kills a real run, drawn from a generator seeded for that test alone.

    The seed combines the session's with the test's id, so a failing test repeats on its
    own (`TRAINER_TEST_SEED=N pytest path::test`) whatever else runs; `context` puts the
    step and the seed into an assertion's message.
    """

    def __init__(self, seed: int, test_id: str) -> None:
        self.seed = seed
        self._draws = random.Random(f"{seed}/{test_id}")

    def between(self, low: int, high: int) -> int:
        """A step in `range(low, high)`."""
        return self._draws.randrange(low, high)

    def choice(self, steps: Sequence[int]) -> int:
        """One of `steps`."""
        return self._draws.choice(steps)

    def context(self, what: str) -> str:
        """`what`, and how to repeat it: for every assertion of a test that kills a run."""
        return f"{what} ({SEED_VARIABLE}={self.seed} repeats it)"


@pytest.fixture
def kill_steps(request: pytest.FixtureRequest) -> KillSteps:
    """This test's seeded kill steps."""
    return KillSteps(SESSION_SEED, request.node.nodeid)


@pytest.fixture(autouse=True, scope="session")
def _subprocesses_import_this_checkout() -> None:
    """Child processes (CLI runs, killed jobs) import the `trainer` under test, not another."""
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_reaches_the_tests_as_from_a_terminal() -> None:
    """A shell starts a background job (`make test &`) with SIGINT ignored, and its children
    inherit that, so the Ctrl-C tests would send signals that `fit` rightly ignores. Run as
    from a terminal: Python's handler here, the default disposition in every child."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _one_thread_and_quiet_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep tests off each other's cores and keep stray `runs/` folders out of the repo."""
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def digits() -> DigitsData:
    """The embedded digits split (loaded once per session)."""
    return DigitsData(batch_size=64)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


def make_mlp(seed: int = 0, dropout: float = 0.0, in_features: int = 64) -> nn.Module:
    """A small MLP with reproducible initial weights."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(in_features, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 10)
    )


def make_loader(
    n: int = 40, batch_size: int = 8, shuffle: bool = False, seed: int = 0, features: int = 64
) -> DataLoader:
    """Random classification data: `n` samples of `features` inputs and 10 classes."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, features, generator=generator)
    targets = torch.randint(0, 10, (n,), generator=generator)
    return DataLoader(TensorDataset(inputs, targets), batch_size=batch_size, shuffle=shuffle)


def make_trainer(
    run_dir: Path,
    model: nn.Module | None = None,
    trainer_class: type[Trainer] = Trainer,
    **overrides: Any,
) -> Trainer:
    """A quiet Trainer (or subclass) on random data; every keyword can be overridden."""
    model = model if model is not None else make_mlp()
    options: dict[str, Any] = {
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
        "loss_fn": nn.CrossEntropyLoss(),
        "train_loader": make_loader(),
        "val_loader": make_loader(n=20, seed=1),
        "metrics": {"acc": accuracy},
        "max_epochs": 2,
        "run_dir": run_dir,
        "progress_bar": False,
        "logger": False,
        "checkpoint": False,
        "device": "cpu",
    }
    options.update(overrides)
    return trainer_class(model, **options)


@pytest.fixture
def trainer_factory(run_dir: Path) -> Callable[..., Trainer]:
    """Build quiet trainers writing under this test's run folder."""
    return lambda model=None, **overrides: make_trainer(run_dir, model, **overrides)


def assert_same_final_state(expected_run: Path, actual_run: Path, context: str) -> None:
    """Weights, optimizer states and step of two runs' `final.ckpt` files are bit-identical."""
    expected = load_checkpoint(expected_run / "final.ckpt")
    actual = load_checkpoint(actual_run / "final.ckpt")
    assert expected["model"], "the final checkpoint holds no weights"
    for name, tensor in expected["model"].items():
        assert torch.equal(tensor, actual["model"][name]), f"{context}: weight {name} differs"
    names = set(expected["optimizers"]), set(actual["optimizers"])
    assert names[0] == names[1], f"{context}: optimizers {names[0]} and {names[1]}"
    for name, optimizer in expected["optimizers"].items():
        for index, state in optimizer["state"].items():
            for key, tensor in state.items():
                other = actual["optimizers"][name]["state"][index][key]
                assert torch.equal(tensor, other), f"{context}: optimizer {name} {index}/{key}"
    steps = expected["state"]["global_step"], actual["state"]["global_step"]
    assert steps[0] == steps[1], f"{context}: global steps {steps[0]} and {steps[1]}"


def assert_equal_states(left: Any, right: Any, where: str = "") -> None:
    """Nested dicts, lists and tensors are equal, tensors bit for bit."""
    if isinstance(left, torch.Tensor):
        assert isinstance(right, torch.Tensor), where
        assert torch.equal(left, right), where
    elif isinstance(left, dict):
        assert left.keys() == right.keys(), where
        for key in left:
            assert_equal_states(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, (list, tuple)):
        assert len(left) == len(right), where
        for index, (a, b) in enumerate(zip(left, right, strict=True)):
            assert_equal_states(a, b, f"{where}[{index}]")
    else:
        assert left == right, where


def save_as_format(checkpoint: dict[str, Any], path: Path, version: int) -> Path:
    """Save `checkpoint`, laid out as format `version` held it, with that version in its
    header: a file as that format's trainer wrote it (the checksum covers the contents)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    save_checkpoint(checkpoint, path)
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata() | {"format_version": str(version)}
        tensors = {key: file.get_tensor(key) for key in file.keys()}
    save_file(tensors, str(path), metadata=metadata)
    return path


def as_format_3(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """`checkpoint` laid out as format 3 held it: a lone optimizer and its scheduler apart, as
    "optimizer" and "scheduler", and "optimizers"/"schedulers" empty; several optimizers by
    name, with the first two empty."""
    older = {k: part for k, part in checkpoint.items() if k not in ("optimizers", "schedulers")}
    optimizers, schedulers = checkpoint["optimizers"], checkpoint["schedulers"]
    if len(optimizers) != 1:
        return older | {
            "optimizer": {}, "scheduler": {}, "optimizers": optimizers, "schedulers": schedulers,
        }  # fmt: skip
    [(name, optimizer)] = optimizers.items()
    lone = {"optimizer": optimizer, "scheduler": schedulers.get(name, {})}
    return older | lone | {"optimizers": {}, "schedulers": {}}


def as_format_2(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A one-rank, one-optimizer `checkpoint` laid out as format 2 held it: format 3's lone
    optimizer and scheduler with nothing by name, rank 0's random states at the top and the
    epoch's torch state among the data's; no best file, no subclass state."""
    older = as_format_3(checkpoint)
    for newer in ("optimizers", "schedulers", "best_checkpoint", "trainer"):
        del older[newer]
    [rank] = older.pop("ranks")
    older["rng"] = rank["rng"]
    older["data"] = older["data"] | {"epoch_start_rng": rank["data"]["epoch_start"]["torch"]}
    return older


class ScriptedValidation(Trainer):
    """Trains for real, but validation reports scripted figures: `script[name][epoch]`, so a
    test decides when a run improves (the callbacks that rank or stop on a monitored figure)."""

    def __init__(
        self, model: nn.Module, *, script: dict[str, Sequence[float]], **kwargs: Any
    ) -> None:
        super().__init__(model, **kwargs)
        self.script = script

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        return {name: torch.tensor(values[self.epoch]) for name, values in self.script.items()}


def scripted_trainer(
    run_dir: Path, script: dict[str, Sequence[float]], **overrides: Any
) -> ScriptedValidation:
    """A quiet run of as many epochs as the script has values."""
    model = overrides.pop("model", None)
    overrides.setdefault("max_epochs", len(next(iter(script.values()))))
    return make_trainer(
        run_dir, model, trainer_class=ScriptedValidation, script=script, **overrides
    )


def message_of(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    """The error's message, after checking it was raised by trainer's own code (a message of
    ours that names the fix, not a deep torch traceback)."""
    raised_in = Path(str(excinfo.traceback[-1].path)).resolve()
    assert PACKAGE_DIR in raised_in.parents, f"raised in {raised_in}, not by trainer itself"
    return str(excinfo.value)
