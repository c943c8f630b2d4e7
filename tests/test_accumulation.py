"""Gradient accumulation that equals the big batch: micro-batches weighed by their items.

A window of unequal micro-batches (the epoch's short last batch, or sequences with different
token counts reported as `num_items`) must update as one batch of all their items: compared
with the trainer on the concatenated batches, under each precision, with and without
clipping, with the count as an int or a tensor, and under DDP on 2 ranks against one process.
Equal micro-batches keep the arithmetic of a loop that divides each loss by the window, to
the bit.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_loader, make_mlp, make_trainer
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from trainer import Trainer
from trainer.callbacks import Callback
from trainer.metrics import ITEMS_PER_SEC, PEAK_MEMORY, SAMPLES_PER_SEC

JOBS = Path(__file__).parent / "jobs"
sys.path.insert(0, str(JOBS))
from token_steps import TokenTrainer, token_data, token_loss, token_model  # noqa: E402

SEQUENCES, BATCH = 22, 4  # batches of 4, 4, 4, 4, 4 and a short 2


def _train_tokens(
    run_dir: Path, batch_size: int, window: int, items_as: str, **options: Any
) -> nn.Module:
    model = token_model()

    class Tokens(TokenTrainer):
        pass

    Tokens.items_as = items_as
    trainer = make_trainer(
        run_dir, model, Tokens, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        train_loader=DataLoader(token_data(SEQUENCES), batch_size=batch_size), val_loader=None,
        metrics=None, loss_fn=None, accumulate_grad_batches=window, **options,
    )  # fmt: skip
    trainer.fit()
    return model


def _largest_difference(left: nn.Module, right: nn.Module) -> float:
    return max(
        float((a - b).detach().abs().max())
        for a, b in zip(left.parameters(), right.parameters(), strict=True)
    )


@pytest.mark.parametrize("items_as", ["tensor", "int"])
@pytest.mark.parametrize("clip", [None, 0.05])
@pytest.mark.parametrize("precision", ["32", "16-mixed"])
@pytest.mark.parametrize("window", [2, 3, 4])
def test_micro_batches_of_different_token_counts_step_as_the_concatenated_batch(
    run_dir: Path, window: int, precision: str, clip: float | None, items_as: str
) -> None:
    options = dict(precision=precision, gradient_clip_val=clip)
    accumulated = _train_tokens(run_dir / "a", BATCH, window, items_as, **options)
    concatenated = _train_tokens(run_dir / "c", BATCH * window, 1, items_as, **options)
    tolerance = 1e-6 if precision == "32" else 2e-4  # float16 forwards differ by batch
    assert _largest_difference(accumulated, concatenated) <= tolerance
    as_before = _train_tokens(run_dir / "u", BATCH, window, "none", **options)
    assert _largest_difference(as_before, concatenated) > 5 * tolerance, (
        "the token counts differ enough that averaging micro-batch means would show"
    )


class _InOrderStream(IterableDataset):
    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __iter__(self) -> Any:
        return (self.data[index] for index in range(len(self.data)))


def _samples(n: int = 42) -> TensorDataset:
    generator = torch.Generator().manual_seed(3)
    return TensorDataset(torch.randn(n, 64, generator=generator),
                         torch.randint(0, 10, (n,), generator=generator))  # fmt: skip


LOADERS = {
    "shuffled DataLoader": lambda size: DataLoader(_samples(), batch_size=size, shuffle=True),
    "2 workers": lambda size: DataLoader(_samples(), batch_size=size, num_workers=2),
    "IterableDataset": lambda size: DataLoader(_InOrderStream(_samples()), batch_size=size),
}


@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("window", [2, 3])
def test_an_epochs_short_last_batch_counts_by_its_samples(
    run_dir: Path, loader: str, window: int
) -> None:
    """42 samples in batches of 5 end with a batch of 2: without `num_items` the batch size
    weighs it, so the window is the batch of its samples, not the mean of batch means."""

    def train(batch_size: int, accumulate: int) -> nn.Module:
        model = make_mlp()
        make_trainer(run_dir / f"{batch_size}", model, train_loader=LOADERS[loader](batch_size),
                     val_loader=None, accumulate_grad_batches=accumulate, seed=5).fit()  # fmt: skip
        return model

    difference = _largest_difference(train(5, window), train(5 * window, 1))
    assert difference <= 1e-6


def _hand_written(window: int, epochs: int = 2) -> nn.Module:
    """The loop the trainer stands for: each loss divided by the window, a short last window
    scaled back to a mean over its batches."""
    model = token_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    batches = list(DataLoader(_equal_tokens(), batch_size=BATCH))
    for _ in range(epochs):
        for start in range(0, len(batches), window):
            group = batches[start:start + window]
            for batch in group:
                (token_loss(model, batch)[0] / window).backward()
            if len(group) < window:
                for parameter in model.parameters():
                    parameter.grad.mul_(window / len(group))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return model


def _equal_tokens() -> TensorDataset:
    """20 sequences, all of the full length: every micro-batch has the same count."""
    index, inputs, targets, mask = token_data(20).tensors
    return TensorDataset(index, inputs, targets, torch.ones_like(mask))


@pytest.mark.parametrize("items_as", ["none", "int", "tensor"])
@pytest.mark.parametrize("window", [2, 3])
def test_equal_micro_batches_are_bit_identical_to_dividing_by_the_window(
    run_dir: Path, window: int, items_as: str
) -> None:
    model = token_model()

    class Tokens(TokenTrainer):
        pass

    Tokens.items_as = items_as
    make_trainer(
        run_dir, model, Tokens, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        train_loader=DataLoader(_equal_tokens(), batch_size=BATCH), val_loader=None,
        metrics=None, loss_fn=None, accumulate_grad_batches=window,
    ).fit()  # fmt: skip
    expected = _hand_written(window)
    for a, b in zip(expected.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


class _Returns(Trainer):
    value: Any = None

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        inputs, targets = batch
        return {"loss": self.loss_fn(self.model(inputs), targets), "num_items": self.value}


@pytest.mark.parametrize(
    "value", [0, -3, 2.5, True, "7", torch.tensor([3, 4]), torch.tensor(True)],
    ids=["zero", "negative", "float", "bool", "str", "vector", "bool tensor"],
)
def test_a_bad_num_items_is_refused_naming_the_value_and_what_it_must_be(
    run_dir: Path, value: Any
) -> None:
    _Returns.value = value
    trainer = make_trainer(run_dir, trainer_class=_Returns, accumulate_grad_batches=2)
    with pytest.raises(ValueError, match="num_items") as error:
        trainer.fit()
    assert "positive int or a 0-d tensor" in str(error.value) or "0-d tensor" in str(error.value)


# --------------------------------------------------------------------------------- DDP, 2 ranks
def _run_two_ranks(run_dir: Path, *args: str) -> list[str]:
    """The job once per rank, with the variables torchrun gives its workers (as
    test_distributed.py starts its job); this process serves the rendezvous store."""
    store = torch.distributed.TCPStore("127.0.0.1", 0, 2, is_master=True, wait_for_workers=False)
    processes = []
    for rank in range(2):
        env = os.environ | {
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port),
            "TORCHELASTIC_USE_AGENT_STORE": "True", "WORLD_SIZE": "2", "RANK": str(rank),
            "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1",
        }  # fmt: skip
        command = [sys.executable, str(JOBS / "accumulation_job.py"), str(run_dir), *args]
        processes.append(subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ))  # fmt: skip
    try:
        outputs = [process.communicate(timeout=90)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    assert [process.returncode for process in processes] == [0, 0], "\n".join(outputs)
    return outputs


def _windows(outputs: list[str], window: int) -> dict[tuple[int, int], list[int]]:
    """Every window's sequences over both ranks, keyed by (epoch, window)."""
    windows: dict[tuple[int, int], list[int]] = defaultdict(list)
    for output in outputs:
        for line in output.splitlines():
            words = line.split()
            if len(words) > 7 and words[0] == "RANK" and words[6] == "IDX":
                epoch, batch = int(words[3]), int(words[5])
                windows[(epoch, batch // window)] += [int(i) for i in words[7:]]
    return dict(sorted(windows.items()))


@pytest.mark.parametrize("items_as", ["tensor", "int"])
def test_two_ranks_with_different_token_counts_step_as_one_process_on_all_of_them(
    tmp_path: Path, items_as: str
) -> None:
    outputs = _run_two_ranks(tmp_path, "--items", items_as)
    import accumulation_job as job

    windows = _windows(outputs, job.WINDOW)
    assert len(windows) == job.EPOCHS * 3  # 5 batches a rank: windows of 2, 2 and 1
    assert all(len(indices) in (2 * job.BATCH * job.WINDOW, 2 * job.BATCH) for indices in
               windows.values())  # fmt: skip
    data = token_data(job.SEQUENCES)
    model = token_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=job.LR)
    for indices in windows.values():
        token_loss(model, data[torch.tensor(indices)])[0].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    ranks = torch.load(tmp_path / "final.pt")
    difference = max(float((ranks[name] - value).abs().max())
                     for name, value in model.state_dict().items())  # fmt: skip
    print(f"DDP accumulated vs concatenated: {difference:.3g}")
    assert difference <= 1e-6


# ---------------------------------------------------------------------------------- throughput
class _StepFigures(Callback):
    def __init__(self) -> None:
        self.by_step: dict[int, dict[str, float]] = {}

    def on_log(self, trainer: Trainer, metrics: dict[str, float], step: int) -> None:
        if SAMPLES_PER_SEC in metrics:
            self.by_step[step] = dict(metrics)


@pytest.mark.parametrize("items_as", ["tensor", "int", "none"])
def test_items_per_second_are_logged_at_log_steps_when_steps_report_them(
    run_dir: Path, items_as: str
) -> None:
    figures = _StepFigures()
    model = token_model()

    class Tokens(TokenTrainer):
        pass

    Tokens.items_as = items_as
    data = token_data(24)
    make_trainer(
        run_dir, model, Tokens, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        train_loader=DataLoader(data, batch_size=4), val_loader=None, metrics=None,
        loss_fn=None, log_every_n_steps=2, max_epochs=1, callbacks=[figures],
    ).fit()  # fmt: skip
    assert sorted(figures.by_step) == [2, 4, 6]
    tokens = data.tensors[3].sum(dim=1)  # per sequence
    for step, logged in figures.by_step.items():
        assert PEAK_MEMORY not in logged, "peak memory is CUDA's allocator's figure"
        if items_as == "none":
            assert ITEMS_PER_SEC not in logged
            continue
        # Both rates share the interval: their ratio is the interval's tokens per sequence.
        interval = tokens[(step - 2) * 4:step * 4]
        expected = float(interval.sum()) / len(interval)
        ratio = logged[ITEMS_PER_SEC] / logged[SAMPLES_PER_SEC]
        assert ratio == pytest.approx(expected, rel=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_peak_memory_is_logged_on_cuda_per_log_interval(run_dir: Path) -> None:
    figures = _StepFigures()
    model = make_mlp()
    make_trainer(run_dir, model, optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                 device="cuda", log_every_n_steps=2, callbacks=[figures]).fit()  # fmt: skip
    peaks = [logged[PEAK_MEMORY] for logged in figures.by_step.values()]
    assert peaks and all(0 < peak < 1 for peak in peaks), peaks


class _PoisonsBatch(Trainer):
    poisoned = 1

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if batch_idx == self.poisoned else loss


@pytest.mark.parametrize("poisoned", [0, 1], ids=["first of the window", "last of the window"])
def test_a_skipped_micro_batch_leaves_the_step_to_the_windows_other_items(
    run_dir: Path, poisoned: int
) -> None:
    """`nan_policy="skip"` on one process: the window steps on the mean over the items it
    kept, as a hand-written step on the other batch alone does."""
    _PoisonsBatch.poisoned = poisoned
    model = make_mlp()
    loader = make_loader(n=16, batch_size=8)
    with pytest.warns(UserWarning, match="non-finite loss"):
        make_trainer(run_dir, model, _PoisonsBatch, train_loader=loader, val_loader=None,
                     metrics=None, accumulate_grad_batches=2, nan_policy="skip",
                     max_epochs=1).fit()  # fmt: skip
    by_hand = make_mlp()
    optimizer = torch.optim.SGD(by_hand.parameters(), lr=0.1)
    inputs, targets = list(loader)[1 - poisoned]
    nn.CrossEntropyLoss()(by_hand(inputs), targets).backward()
    optimizer.step()
    assert _largest_difference(model, by_hand) <= 1e-7
