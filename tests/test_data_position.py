"""Where the training data stands: a resumed epoch continues the saved run's batches, the
next epoch draws as if never stopped, and a checkpoint keeps each fact of it once."""

from __future__ import annotations

import gc
import multiprocessing
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import assert_equal_states, make_loader, make_trainer
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from trainer import Trainer
from trainer.callbacks import Callback, ModelCheckpoint
from trainer.checkpoint import (
    capture_rng_states,
    load_checkpoint,
    restore_rng_states,
    save_checkpoint,
)
from trainer.data_position import DataPosition, data_generators
from trainer.sampling import ResumableSampler, make_resumable


class _Stream(IterableDataset):
    """20 indices in an order drawn from torch's global generator as each pass starts."""

    def __iter__(self) -> Iterator[int]:
        yield from torch.randperm(20).tolist()


def _shuffled() -> DataPosition:
    return DataPosition(*make_resumable(DataLoader(TensorDataset(torch.arange(20)), 3, True)))


def _shuffled_by_its_generator() -> DataPosition:
    generator = torch.Generator().manual_seed(5)
    loader = DataLoader(TensorDataset(torch.arange(20)), 3, shuffle=True, generator=generator)
    return DataPosition(*make_resumable(loader))


def _stream() -> DataPosition:
    return DataPosition(DataLoader(_Stream(), batch_size=4), None)


def _value(batch: list[torch.Tensor] | torch.Tensor) -> list[int]:
    """A batch's indices, whether the loader gives `[tensor]` or a tensor."""
    return (batch[0] if isinstance(batch, list) else batch).tolist()


def _values(batches: Iterator) -> list[list[int]]:
    return [_value(batch) for batch in batches]


@pytest.mark.parametrize(
    "make",
    [_shuffled, _shuffled_by_its_generator, _stream],
    ids=["shuffle", "generator=", "IterableDataset"],
)
@pytest.mark.filterwarnings("ignore:this checkpoint is saved mid-epoch")
def test_a_mid_epoch_resume_gives_the_straight_runs_remaining_batches(
    make: Callable[[], DataPosition],
) -> None:
    torch.manual_seed(0)
    straight = make()
    expected = [_values(straight.batches(epoch, 0)) for epoch in range(3)]

    torch.manual_seed(0)
    saved = make()
    assert _values(saved.batches(0, 0)) == expected[0]
    epoch = saved.batches(1, 0)
    consumed = [_value(next(epoch)) for _ in range(2)]
    position, own, global_states = saved.position(True), saved.random_states(), capture_rng_states()

    torch.manual_seed(123)  # a new process: every generator elsewhere
    resumed = make()
    restore_rng_states(global_states)
    resumed.resume(position, own, batches_done=2)
    assert consumed + _values(resumed.batches(1, 2)) == expected[1]
    assert _values(resumed.batches(2, 0)) == expected[2]
    assert resumed.length == straight.length


def test_a_loader_without_a_length_is_measured_as_its_last_batch_is_handed_out() -> None:
    position = _stream()
    assert position.length is None
    seen = []
    for _ in position.batches(0, 0):
        seen.append(position.length)
    assert seen == [None] * 4 + [5]


def test_every_generator_the_loader_draws_from_is_found_once() -> None:
    own = torch.Generator()
    loader = DataLoader(TensorDataset(torch.arange(8)), 2, shuffle=True, generator=own)
    assert data_generators(loader) == [own]
    assert data_generators(DataLoader(TensorDataset(torch.arange(8)), 2)) == []


def test_a_checkpoint_keeps_torch_global_state_once(run_dir: Path, tmp_path: Path) -> None:
    """The RNG capture holds torch's state; the data keeps only its own generators now."""
    trainer = make_trainer(run_dir, max_steps=3)
    trainer.fit()
    checkpoint = load_checkpoint(trainer.save_checkpoint(tmp_path / "mid.ckpt"))
    rank = checkpoint["ranks"][0]
    assert "torch" not in rank["data"]["now"]
    assert "torch" in rank["data"]["epoch_start"]  # the epoch's order is drawn from it
    assert set(rank["rng"]) >= {"python", "numpy", "torch"}


def test_an_older_checkpoint_with_a_second_torch_state_resumes_the_same(
    run_dir: Path, tmp_path: Path
) -> None:
    """Files written before this change hold torch's state twice per rank: the copy among
    the data's states is not read, so they resume exactly as a new file does."""
    stopped = make_trainer(run_dir, max_steps=3, train_loader=make_loader(shuffle=True))
    stopped.fit()
    path = stopped.save_checkpoint(tmp_path / "new.ckpt")
    older = load_checkpoint(path)
    older["ranks"][0]["data"]["now"]["torch"] = torch.get_rng_state()  # as 073db10 wrote it
    older_path = save_checkpoint(older, tmp_path / "older.ckpt")
    finals = []
    for source in (path, older_path):
        resumed = make_trainer(run_dir, train_loader=make_loader(shuffle=True))
        resumed.fit(ckpt_path=source)
        finals.append(resumed.model.state_dict())
    assert_equal_states(finals[0], finals[1], "model")


def test_the_loader_is_made_resumable_once_when_the_trainer_is_built(run_dir: Path) -> None:
    trainer = make_trainer(run_dir, train_loader=make_loader(shuffle=True), max_epochs=1)
    loader = trainer.train_loader
    assert isinstance(getattr(loader, "sampler", None), ResumableSampler)
    assert trainer.num_train_batches == 5
    trainer.fit()
    assert trainer.train_loader is loader


def test_resuming_mid_epoch_with_other_batches_is_refused(run_dir: Path) -> None:
    make_trainer(run_dir, max_steps=3, callbacks=[ModelCheckpoint(every_n_steps=3)]).fit()
    changed = make_trainer(run_dir, train_loader=make_loader(batch_size=4))
    with pytest.raises(ValueError, match=r"stopped mid-epoch.*batch_size 8 -> 4"):
        changed.fit(ckpt_path="last")


def test_worker_side_transforms_warn_once_at_a_mid_epoch_save(run_dir: Path) -> None:
    """Random transforms in worker processes cannot repeat after a mid-epoch resume: said once."""

    class Transformed(torch.utils.data.Dataset):
        transform = staticmethod(lambda x: x + torch.randn_like(x))

        def __len__(self) -> int:
            return 16

        def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
            return self.transform(torch.zeros(64)), torch.tensor(index % 10)

    loader = torch.utils.data.DataLoader(Transformed(), batch_size=4, num_workers=2)
    trainer = make_trainer(run_dir, train_loader=loader, max_epochs=1,
                           checkpoint=ModelCheckpoint(every_n_steps=1))  # fmt: skip
    with pytest.warns(UserWarning, match="workers apply the data set's transform") as caught:
        trainer.fit()
    assert sum("transform" in str(w.message) for w in caught) == 1


class _FailsAtBatch3(Trainer):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if batch_idx == 3:
            raise RuntimeError("a step failed")
        return super().training_step(batch, batch_idx)


class _SeesWorkers(Callback):
    """Records the processes started while the trainer runs: its loaders' workers."""

    def __init__(self) -> None:
        self.before = set(multiprocessing.active_children())
        self.workers: set[multiprocessing.process.BaseProcess] = set()

    def on_train_batch_end(self, trainer: Trainer, outputs: Any, batch: Any, idx: int) -> None:
        self.workers |= set(multiprocessing.active_children()) - self.before


@pytest.mark.parametrize("persistent", [False, True], ids=["2 workers", "persistent workers"])
@pytest.mark.parametrize("end", ["max_steps mid-epoch", "finished", "an exception kept"])
def test_fit_stops_the_loader_workers_it_started(run_dir: Path, end: str, persistent: bool) -> None:
    """Without the cycle collector: it would stop them at some later moment, 5 s per worker."""
    loader = make_loader(n=48)
    workers = dict(num_workers=2, persistent_workers=persistent)
    seen = _SeesWorkers()
    trainer = make_trainer(
        run_dir, trainer_class=_FailsAtBatch3 if end == "an exception kept" else Trainer,
        train_loader=DataLoader(loader.dataset, batch_size=8, shuffle=True, **workers),
        val_loader=DataLoader(loader.dataset, batch_size=16, **workers),
        max_steps=3 if end == "max_steps mid-epoch" else None, callbacks=[seen],
    )  # fmt: skip
    gc.disable()
    try:
        if end == "an exception kept":  # its traceback held on to, as a notebook keeps it
            with pytest.raises(RuntimeError, match="a step failed") as kept:
                trainer.fit()
        else:
            trainer.fit()
        assert len(seen.workers) >= 2, seen.workers  # the loader's workers did start
        deadline = time.monotonic() + 2.0
        while any(worker.is_alive() for worker in seen.workers) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(worker.is_alive() for worker in seen.workers), seen.workers
    finally:
        gc.enable()
    if end == "an exception kept":
        assert kept.traceback  # held to here, and its frames with it
