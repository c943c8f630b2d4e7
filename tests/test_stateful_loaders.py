"""Loaders that keep their own state: which object the trainer asks, that the states of the
real packages (torchdata's `StatefulDataLoader`, Hugging Face `datasets`) survive our
checkpoint files, that a state they cannot hold fails naming its loader, and what a resume
that replays says (and when it says nothing). The resume matrix's own section checks that
every kind resumes mid-epoch `torch.equal` to the straight run."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import assert_equal_states, make_mlp, make_trainer
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from trainer.callbacks import ModelCheckpoint
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.data_position import REPLAY_BAR_DELAY, DataPosition, stateful_source

stateful_dataloader = pytest.importorskip("torchdata.stateful_dataloader")
datasets = pytest.importorskip("datasets")
StatefulDataLoader = stateful_dataloader.StatefulDataLoader

SAMPLES, BATCH = 24, 4


def _samples() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(SAMPLES, 64, generator=generator)
    return TensorDataset(inputs, torch.randint(0, 10, (SAMPLES,), generator=generator))


class _Stream(IterableDataset):
    """The samples in order, optionally slowly (a long replay)."""

    def __init__(self, seconds_per_sample: float = 0.0, length: int = SAMPLES) -> None:
        self.seconds_per_sample = seconds_per_sample
        self.length = length
        self.data = _samples()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index in range(self.length):
            time.sleep(self.seconds_per_sample)
            yield self.data[index % SAMPLES]


class _StreamWithState(_Stream):
    """A stream that resumes after the samples it yielded."""

    def __init__(self) -> None:
        super().__init__()
        self.position = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start, self.position = self.position, 0
        for index in range(start, SAMPLES):
            self.position = index + 1
            yield self.data[index]
        self.position = 0

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = state["position"]


class _SamplerWithState(torch.utils.data.Sampler[int]):
    def __init__(self) -> None:
        self.start = 0

    def __len__(self) -> int:
        return SAMPLES

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, SAMPLES))

    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start = state["start"]


class _UnstorableLoader:
    """A loader of its own whose state holds an object no checkpoint can store."""

    def __init__(self) -> None:
        self.data = _samples()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, SAMPLES, BATCH):
            yield self.data[start : start + BATCH]

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": {"at": 3, "opened": object()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _hugging_face_rows() -> Any:
    inputs, targets = _samples().tensors
    rows = datasets.Dataset.from_dict({"x": inputs.numpy(), "y": targets.numpy()})
    return rows.to_iterable_dataset(num_shards=3).with_format("torch")


def _as_pairs(rows: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([row["x"] for row in rows]).float(), torch.stack([r["y"] for r in rows])


# ------------------------------------------------------------------ which object is asked
def test_the_trainer_asks_the_loader_or_else_a_single_process_loaders_data_set_or_sampler(
) -> None:
    stateful = StatefulDataLoader(_samples(), batch_size=BATCH, num_workers=2)
    assert stateful_source(stateful) is stateful
    stream = _StreamWithState()
    assert stateful_source(DataLoader(stream, batch_size=BATCH)) is stream
    sampler = _SamplerWithState()
    assert stateful_source(DataLoader(_samples(), BATCH, sampler=sampler)) is sampler
    rows = _hugging_face_rows()
    assert stateful_source(DataLoader(rows, batch_size=BATCH)) is rows


@pytest.mark.parametrize(
    "make",
    [
        lambda: DataLoader(_StreamWithState(), batch_size=BATCH, num_workers=2),
        lambda: DataLoader(_Stream(), batch_size=BATCH),
        lambda: DataLoader(_samples(), batch_size=BATCH, shuffle=True),
    ],
    ids=["state inside workers", "no state", "plain shuffle"],
)
def test_a_loader_whose_state_the_trainer_cannot_reach_has_no_source(
    make: Callable[[], Any],
) -> None:
    assert stateful_source(make()) is None


# ----------------------------------------------------------- the real packages' states
@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_stateful_data_loaders_state_round_trips_through_a_checkpoint_file(
    tmp_path: Path, num_workers: int
) -> None:
    def loader() -> Any:
        return StatefulDataLoader(
            _samples(), batch_size=BATCH, shuffle=True, num_workers=num_workers,
            generator=torch.Generator().manual_seed(1),
        )  # fmt: skip

    first = loader()
    batches = iter(first)
    for _ in range(2):
        next(batches)
    state = first.state_dict()
    rest = [targets for _, targets in batches]
    # What it holds: the sampler's position and generator, per worker where there are some.
    main = state["_snapshot"]["_main_snapshot"] if num_workers else state
    assert main["_sampler_iter_state"]["samples_yielded"] == 2 * BATCH
    assert main["_sampler_iter_state"]["sampler_iter_state"]["generator"].dtype == torch.uint8
    if num_workers:
        assert sorted(state["_snapshot"]["_worker_snapshots"]) == ["worker_0", "worker_1"]
    save_checkpoint({"loader": state}, tmp_path / "state.ckpt")
    loaded = load_checkpoint(tmp_path / "state.ckpt")["loader"]
    assert_equal_states(state, loaded, "the state read back")
    second = loader()
    second.load_state_dict(loaded)
    assert_equal_states(rest, [targets for _, targets in second], "the batches after it")


def test_a_hugging_face_iterable_datasets_state_round_trips_through_a_checkpoint_file(
    tmp_path: Path,
) -> None:
    rows = _hugging_face_rows()
    batches = iter(DataLoader(rows, batch_size=BATCH, collate_fn=_as_pairs))
    for _ in range(3):
        next(batches)
    state = rows.state_dict()
    rest = [targets for _, targets in batches]
    save_checkpoint({"loader": state}, tmp_path / "state.ckpt")
    resumed = _hugging_face_rows()
    resumed.load_state_dict(load_checkpoint(tmp_path / "state.ckpt")["loader"])
    again = [targets for _, targets in DataLoader(resumed, BATCH, collate_fn=_as_pairs)]
    assert_equal_states(rest, again, "the batches after it")


def test_a_loader_state_the_checkpoint_cannot_hold_fails_naming_the_loader_and_the_key(
    run_dir: Path,
) -> None:
    saver = ModelCheckpoint(every_n_steps=2, every_n_epochs=0, dirpath=run_dir / "saved")
    trainer = make_trainer(run_dir, train_loader=_UnstorableLoader(), callbacks=[saver])
    with pytest.raises(TypeError) as raised:
        trainer.fit()
    message = str(raised.value)
    assert "_UnstorableLoader" in message and "cursor/opened" in message, message
    assert "object" in message and "state_dict()" in message, message
    assert not list((run_dir / "saved").glob("*.ckpt"))


# ------------------------------------------------------------- what a resume says
def _stopped_mid_epoch(loader: Any, batches: int) -> tuple[DataPosition, dict[str, Any]]:
    """A position `batches` into epoch 0 of `loader`, and what a checkpoint keeps of it."""
    position = DataPosition(loader, None)
    epoch = position.batches(0, 0)
    for _ in range(batches):
        next(epoch)
    return position, {
        "position": position.position(True),
        "random_states": position.random_states(),
        "source_state": position.source_state(True),
    }


@pytest.mark.parametrize("is_global_zero", [True, False])
def test_a_replayed_resume_says_how_many_batches_it_skips_on_rank_zero_only(
    capsys: pytest.CaptureFixture[str], is_global_zero: bool
) -> None:
    _, checkpoint = _stopped_mid_epoch(DataLoader(_Stream(), batch_size=BATCH), 4)
    resumed = DataPosition(DataLoader(_Stream(), batch_size=BATCH), None, is_global_zero)
    resumed.resume(checkpoint["position"], checkpoint["random_states"], 4)
    capsys.readouterr()
    rest = list(resumed.batches(0, 4))
    said = capsys.readouterr().err
    assert len(rest) == SAMPLES // BATCH - 4
    assert torch.equal(rest[0][0], _samples().tensors[0][4 * BATCH : 5 * BATCH])
    if is_global_zero:
        assert said.count("\n") == 1 and "replaying 4 batches" in said, said
        assert "keeps no state_dict()" in said, said
    else:
        assert said == "", said


@pytest.mark.parametrize(
    "make",
    [
        lambda: DataLoader(_StreamWithState(), batch_size=BATCH),
        lambda: StatefulDataLoader(
            _samples(), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(1)
        ),
        lambda: DataLoader(_hugging_face_rows(), batch_size=BATCH, collate_fn=_as_pairs),
    ],
    ids=["IterableDataset with state", "StatefulDataLoader", "Hugging Face"],
)
def test_a_resume_through_the_loaders_state_replays_nothing_and_says_nothing(
    capsys: pytest.CaptureFixture[str], make: Callable[[], Any]
) -> None:
    straight = [targets for _, targets in make()][2:]
    _, checkpoint = _stopped_mid_epoch(make(), 2)
    resumed = DataPosition(make(), None)
    resumed.resume(
        checkpoint["position"], checkpoint["random_states"], 2, checkpoint["source_state"]
    )
    capsys.readouterr()
    rest = [targets for _, targets in resumed.batches(0, 2)]
    assert capsys.readouterr().err == ""
    assert_equal_states(straight, rest, "the batches after the resume point")


def test_a_replay_longer_than_the_bar_delay_shows_a_progress_bar(
    capsys: pytest.CaptureFixture[str],
) -> None:
    skipped = 30
    length = (skipped + 1) * BATCH
    per_sample = (REPLAY_BAR_DELAY + 0.5) / (skipped * BATCH)
    _, checkpoint = _stopped_mid_epoch(
        DataLoader(_Stream(length=length), batch_size=BATCH), skipped
    )
    slow = DataLoader(_Stream(per_sample, length), batch_size=BATCH)  # the same samples
    resumed = DataPosition(slow, None)
    resumed.resume(checkpoint["position"], checkpoint["random_states"], skipped)
    capsys.readouterr()
    assert len(list(resumed.batches(0, skipped))) == 1
    said = capsys.readouterr().err
    assert f"replaying {skipped} batches" in said
    assert "replaying:" in said and f"/{skipped}" in said, said  # tqdm's bar


def test_a_run_that_replays_nothing_prints_nothing(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fresh run, and a resume from an epoch's end, of a loader that would replay."""
    saver = ModelCheckpoint(every_n_epochs=1, dirpath=run_dir / "saved")
    make_trainer(run_dir, train_loader=DataLoader(_Stream(), BATCH), callbacks=[saver]).fit()
    epoch_end = sorted((run_dir / "saved").glob("*.ckpt"))[0]
    assert load_checkpoint(epoch_end)["state"]["batches_in_epoch"] in (0, SAMPLES // BATCH)
    resumed = make_trainer(run_dir / "again", train_loader=DataLoader(_Stream(), BATCH))
    resumed.fit(ckpt_path=epoch_end)
    assert "replaying" not in capsys.readouterr().err


# ------------------------------------------------------------ across epochs
class _EpochRecorder(_StreamWithState):
    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def test_a_data_set_with_set_epoch_is_told_each_epoch_as_hugging_faces_expects(
    run_dir: Path,
) -> None:
    stream = _EpochRecorder()
    make_trainer(run_dir, train_loader=DataLoader(stream, BATCH), max_epochs=3).fit()
    assert stream.epochs == [0, 1, 2]


@pytest.mark.parametrize(
    "make",
    [
        lambda: StatefulDataLoader(
            _samples(), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(2)
        ),
        lambda: DataLoader(_StreamWithState(), batch_size=BATCH),
        lambda: DataLoader(_hugging_face_rows(), batch_size=BATCH, collate_fn=_as_pairs),
    ],
    ids=["StatefulDataLoader", "IterableDataset with state", "Hugging Face"],
)
@pytest.mark.parametrize("stop", [2, 5, 6 + 4])
def test_without_accumulation_a_stateful_loader_stopped_anywhere_resumes_identically(
    tmp_path: Path, make: Callable[[], Any], stop: int
) -> None:
    """Six batches an epoch, three epochs: stops inside the first and the second epoch."""

    def run(folder: str, **options: Any) -> Any:
        return make_trainer(
            tmp_path / folder, train_loader=make(), max_epochs=3, seed=3, checkpoint=True,
            model=make_mlp(seed=0, dropout=0.3),
            **options,
        )  # fmt: skip

    straight = run("straight")
    straight.fit()
    run("stopped", max_steps=stop).fit()
    resumed = run("stopped")
    resumed.fit(ckpt_path="last")
    assert_equal_states(straight.model.state_dict(), resumed.model.state_dict(), f"at {stop}")
    assert resumed.global_step == straight.global_step == 18
