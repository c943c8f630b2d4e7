"""Sharding: DDP and FSDP wrapping in a real gloo process group of one, the gradient sync
it gives any training step (and skips on micro-steps), the frames it adds between `fit` and
`training_step`, the plain model's state-dict keys, and the private DDP seam it relies on.

The 2-rank jobs that check the same sharding across real ranks are in test_distributed.py.
"""

from __future__ import annotations

import datetime
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_loader, make_mlp, make_trainer
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainer import Trainer
from trainer.distributed import Distributed
from trainer.sharding import Sharding, run_as_ddp_forward


@pytest.fixture
def group_of_one() -> Iterator[None]:
    """A real gloo process group with one rank, left again after the test."""
    store = torch.distributed.HashStore()
    torch.distributed.init_process_group(
        "gloo", store=store, rank=0, world_size=1, timeout=datetime.timedelta(seconds=60)
    )
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def _frames_from_fit() -> list[str]:
    """The functions between `Trainer.fit` and the caller's caller (the training step)."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    frame, names = frame.f_back.f_back, []
    while frame is not None and frame.f_code is not Trainer.fit.__code__:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    assert frame is not None, "the training step did not run inside Trainer.fit"
    return [*names, "fit"]


class DefaultStep(Trainer):
    """The default training step, recording the frames above it."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.frames = _frames_from_fit()
        return super().training_step(batch, batch_idx)


class SubmoduleStep(Trainer):
    """A custom step that calls submodules only, never the model itself (as a GAN does)."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.frames = _frames_from_fit()
        inputs, targets = batch
        features = self.model[0](inputs)
        outputs = self.model[3](self.model[2](self.model[1](features)))
        return nn.functional.cross_entropy(outputs, targets)


def _count_gradient_syncs(trainer: Trainer) -> list[int]:
    """The global step of every gradient bucket DDP all-reduces from now on."""
    syncs: list[int] = []

    def count(state, bucket):  # type: ignore[no-untyped-def]  # DDP checks real annotations
        syncs.append(trainer.global_step)
        done: torch.futures.Future = torch.futures.Future()
        done.set_result(bucket.buffer())  # one rank: its gradients are the average
        return done

    assert trainer.sharding.ddp is not None
    trainer.sharding.ddp.register_comm_hook(None, count)
    return syncs


@pytest.mark.parametrize("trainer_class", [DefaultStep, SubmoduleStep])
def test_one_process_runs_the_step_three_frames_below_fit(
    run_dir: Path, trainer_class: type[Trainer]
) -> None:
    trainer = make_trainer(run_dir, trainer_class=trainer_class, max_epochs=1, val_loader=None)
    trainer.fit()
    assert trainer.frames == ["_run_train_batch", "_run_train_epoch", "fit"]
    assert trainer.sharding.ddp is None


@pytest.mark.parametrize("trainer_class", [DefaultStep, SubmoduleStep])
def test_ddp_runs_any_step_four_frames_below_fit_and_syncs_its_gradients(
    run_dir: Path, trainer_class: type[Trainer]
) -> None:
    trainer = make_trainer(run_dir, trainer_class=trainer_class, strategy="ddp", max_epochs=1,
                           val_loader=None, train_loader=make_loader(n=24))  # fmt: skip
    try:
        syncs = _count_gradient_syncs(trainer)
        trainer.fit()
    finally:
        trainer.distributed.teardown()
    assert trainer.frames == ["run_as_ddp_forward", "_run_train_batch", "_run_train_epoch", "fit"]
    assert syncs == [0, 1, 2]  # one bucket per optimizer step: the model is small


def test_accumulation_all_reduces_once_per_optimizer_step(run_dir: Path) -> None:
    trainer = make_trainer(run_dir, strategy="ddp", accumulate_grad_batches=2, max_epochs=1,
                           train_loader=make_loader(n=48, batch_size=8))  # fmt: skip
    try:
        syncs = _count_gradient_syncs(trainer)
        trainer.fit()
    finally:
        trainer.distributed.teardown()
    assert trainer.global_step == 3 and syncs == [0, 1, 2]


def test_a_step_owning_its_update_all_reduces_once_per_optimizer_step(run_dir: Path) -> None:
    """DDP, manual optimization, windows of 2 batches: one gradient all-reduce per step."""
    from test_research_steps import ManualRegression
    from torch.profiler import ProfilerActivity, profile

    trainer = make_trainer(run_dir, trainer_class=ManualRegression, strategy="ddp",
                           accumulate_grad_batches=2, max_epochs=1, val_loader=None,
                           train_loader=make_loader(n=48, batch_size=8))  # fmt: skip
    parameters = sum(p.numel() for p in trainer.model.parameters())
    try:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
            trainer.fit()
    finally:
        trainer.distributed.teardown()
    gradient_syncs = [
        event for event in profiler.events()
        if event.name == "gloo:all_reduce" and event.input_shapes == [[parameters]]
    ]  # fmt: skip
    assert trainer.global_step == 6  # batches, in manual mode
    assert len(gradient_syncs) == 3  # 6 batches in windows of 2


def test_ddp_keeps_the_plain_models_state_dict_keys(run_dir: Path) -> None:
    trainer = make_trainer(run_dir, strategy="ddp", max_epochs=1, val_loader=None)
    try:
        trainer.fit()
        saved = trainer.sharding.model_state_dict()
    finally:
        trainer.distributed.teardown()
    assert trainer.model.__class__ is nn.Sequential
    assert sorted(saved) == sorted(make_mlp().state_dict())


class HalfUsed(nn.Module):
    """A model whose second head gets no gradient: DDP must be told to look for it."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.unused = nn.Linear(64, 10), nn.Linear(64, 10)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.body(inputs)


@pytest.mark.parametrize("find_unused_parameters", [True, False])
def test_find_unused_parameters_reaches_ddp(run_dir: Path, find_unused_parameters: bool) -> None:
    model = HalfUsed()
    trainer = make_trainer(
        run_dir, model, max_epochs=1, val_loader=None,
        strategy=Distributed("ddp", find_unused_parameters=find_unused_parameters),
    )  # fmt: skip
    try:
        if find_unused_parameters:
            trainer.fit()
            assert trainer.global_step == 5 and model.unused.weight.grad is None
        else:  # DDP's reducer waits for the unused head's gradient, and says so
            with pytest.raises(RuntimeError, match="find_unused_parameters=True"):
                trainer.fit()
    finally:
        trainer.distributed.teardown()


@pytest.mark.usefixtures("group_of_one")
def test_the_private_ddp_forward_seam_still_arms_the_gradient_hooks() -> None:
    """`run_as_ddp_forward` calls three private DDP methods. If torch renames or reshapes
    them, or they stop arming the reducer, this fails first and names the seam."""
    for name, parameters in [
        ("_pre_forward", ["self", "inputs", "kwargs"]),
        ("_post_forward", ["self", "output"]),
        ("_inside_ddp_forward", ["self"]),
        ("_get_active_ddp_module", []),
    ]:
        method = getattr(DistributedDataParallel, name, None)
        assert method is not None, f"torch's DistributedDataParallel lost {name}"
        assert list(inspect.signature(method).parameters) == parameters, name
    model = make_mlp()
    ddp = DistributedDataParallel(model)
    buckets: list[int] = []

    def count(state, bucket):  # type: ignore[no-untyped-def]  # DDP checks real annotations
        buckets.append(bucket.index())
        done: torch.futures.Future = torch.futures.Future()
        done.set_result(bucket.buffer())
        return done

    ddp.register_comm_hook(None, count)
    inputs = torch.randn(4, 64)
    model(inputs).sum().backward()  # outside the seam: DDP's hooks stay quiet
    assert buckets == []
    active: list[Any] = []

    def step(batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        active.append(DistributedDataParallel._get_active_ddp_module())  # what dynamo reads
        return model(batch).sum()

    run_as_ddp_forward(ddp, step, inputs, 0).backward()
    assert buckets == [0]
    assert active == [ddp]  # torch.compile splits graphs at DDP's buckets inside the step
    assert DistributedDataParallel._get_active_ddp_module() is None


@pytest.mark.usefixtures("group_of_one")
def test_fsdp_refuses_an_optimizer_built_before_sharding() -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sharding = Sharding(model, "fsdp", torch.device("cpu"))
    with pytest.raises(ValueError, match="an optimizer built from them beforehand holds none"):
        sharding.check_optimizer(optimizer)
    sharding.check_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))  # built after: fine
