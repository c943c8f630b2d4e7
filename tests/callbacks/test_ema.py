"""`EMA`: the average follows the weights step by step, evaluation and the end of `fit` use it,
a resumed run ends with the same average, and an update reads nothing back from the device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_loader, make_mlp, make_trainer
from torch import nn
from torch.overrides import TorchFunctionMode

from trainer import Trainer
from trainer.callbacks import EMA, Callback, ModelCheckpoint
from trainer.checkpoint import load_checkpoint


def _clone(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in tensors.items()}


class StepWatch(Callback):
    """Records the weights and the EMA's average after every optimizer step (runs after EMA)."""

    def __init__(self, ema: EMA) -> None:
        self.ema = ema
        self.steps: list[tuple[int, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []
        self.start: dict[str, torch.Tensor] = {}
        self.seen_step = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        self.start = _clone(trainer.model.state_dict())

    def on_train_batch_end(
        self, trainer: Trainer, outputs: dict[str, Any], batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step != self.seen_step:
            self.seen_step = trainer.global_step
            weights = _clone(trainer.model.state_dict())
            self.steps.append((trainer.global_step, weights, _clone(self.ema.average)))


@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_average_is_a_hand_computed_ema_of_the_weights_after_each_step(
    run_dir: Path, accumulate: int
) -> None:
    ema = EMA(decay=0.9)
    watch = StepWatch(ema)
    trainer = make_trainer(run_dir, callbacks=[ema, watch], max_epochs=1,
                           accumulate_grad_batches=accumulate)  # fmt: skip
    trainer.fit()
    expected = dict(watch.start)
    assert len(watch.steps) == trainer.global_step == (5 + accumulate - 1) // accumulate
    for step, weights, average in watch.steps:
        expected = {name: 0.9 * expected[name] + 0.1 * weights[name] for name in expected}
        for name, tensor in expected.items():
            assert torch.allclose(average[name], tensor, atol=1e-6, rtol=0), f"step {step}: {name}"
    assert not torch.equal(watch.steps[-1][1]["0.weight"], watch.steps[-1][2]["0.weight"])
    assert ema.updates == trainer.global_step
    # After fit, the model holds the average.
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, ema.average[name]), name


def test_warm_up_copies_the_weights_and_every_n_steps_skips_steps(run_dir: Path) -> None:
    ema = EMA(decay=0.5, every_n_steps=2, start_step=2)
    watch = StepWatch(ema)
    make_trainer(run_dir, callbacks=[ema, watch], max_epochs=1).fit()
    weights = [step[1]["0.weight"] for step in watch.steps]
    average = [step[2]["0.weight"] for step in watch.steps]
    assert torch.equal(average[0], watch.start["0.weight"])  # step 1: not an update step
    assert torch.equal(average[1], weights[1])  # step 2: warm-up copies
    assert torch.equal(average[2], average[1])
    assert torch.allclose(average[3], 0.5 * average[1] + 0.5 * weights[3], atol=1e-6)
    assert torch.equal(average[4], average[3])
    assert ema.updates == 2


def test_buffers_are_copied_as_they_are(run_dir: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    ema = EMA(decay=0.9)
    watch = StepWatch(ema)
    make_trainer(run_dir, model=model, callbacks=[ema, watch], max_epochs=1).fit()
    for _, weights, average in watch.steps:
        for name in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
            assert torch.equal(average[name], weights[name]), name


class ValidationWatch(Callback):
    """The model's weights while validating, and after validation (for the epoch's end)."""

    def __init__(self) -> None:
        self.during: list[dict[str, torch.Tensor]] = []
        self.after: list[dict[str, torch.Tensor]] = []

    def on_validation_start(self, trainer: Trainer) -> None:
        self.during.append(_clone(trainer.model.state_dict()))

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        self.after.append(_clone(trainer.model.state_dict()))


def test_validation_figures_are_those_of_the_averaged_weights(run_dir: Path) -> None:
    ema = EMA(decay=0.8)
    watch = ValidationWatch()
    trainer = make_trainer(run_dir, callbacks=[ema, watch], max_epochs=1)
    history = trainer.fit()

    averaged = make_mlp()
    averaged.load_state_dict(ema.average)
    expected = make_trainer(run_dir / "check", model=averaged).validate()
    assert history[-1]["val/loss"] == pytest.approx(expected["val/loss"], abs=1e-6)
    assert history[-1]["val/acc"] == expected["val/acc"]
    assert torch.equal(watch.during[0]["0.weight"], ema.average["0.weight"])
    # Training went on with its own weights: validation put them back.
    training = watch.after[0]
    assert not torch.equal(training["0.weight"], ema.average["0.weight"])
    plain = make_mlp()
    plain.load_state_dict(training)
    without_ema = make_trainer(run_dir / "plain", model=plain).validate()
    assert without_ema["val/loss"] != pytest.approx(expected["val/loss"], abs=1e-6)


def test_test_uses_the_average_and_gives_the_weights_back(run_dir: Path) -> None:
    ema = EMA(decay=0.8)
    trainer = make_trainer(run_dir, callbacks=[ema], max_epochs=1)
    trainer.fit()
    other = _clone(make_mlp(seed=3).state_dict())
    trainer.model.load_state_dict(other)
    figures = trainer.test(make_loader(n=16, seed=2))

    averaged = make_mlp()
    averaged.load_state_dict(ema.average)
    expected = make_trainer(run_dir / "check", model=averaged).test(make_loader(n=16, seed=2))
    assert figures == pytest.approx(expected, abs=1e-6)
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, other[name]), name


def test_use_for_validation_false_leaves_evaluation_alone(run_dir: Path) -> None:
    ema = EMA(use_for_validation=False)
    watch = ValidationWatch()
    trainer = make_trainer(run_dir, callbacks=[ema, watch], max_epochs=1)
    trainer.fit()
    assert not any(ema.uses_hook(hook) for hook in ("on_validation_start", "on_test_end"))
    assert torch.equal(watch.during[0]["0.weight"], watch.after[0]["0.weight"])
    assert torch.equal(trainer.model.state_dict()["0.weight"], ema.average["0.weight"])


def test_a_run_resumed_mid_epoch_ends_with_the_same_average_and_weights(run_dir: Path) -> None:
    def run(ckpt_path: Path | None = None) -> tuple[Trainer, EMA]:
        ema = EMA(decay=0.7)
        model = make_mlp(seed=0 if ckpt_path is None else 5, dropout=0.2)
        saves = ModelCheckpoint(every_n_steps=1, keep_last=100)
        trainer = make_trainer(run_dir, model=model, callbacks=[ema], checkpoint=saves,
                               train_loader=make_loader(shuffle=True), max_epochs=2)  # fmt: skip
        trainer.fit(ckpt_path=ckpt_path)
        return trainer, ema

    straight, straight_ema = run()
    checkpoints = run_dir / "version_0" / "checkpoints"
    final = load_checkpoint(checkpoints / "last-epoch=1-step=10.ckpt")
    middle = checkpoints / "last-epoch=1-step=7.ckpt"
    assert load_checkpoint(middle)["state"]["batches_in_epoch"] == 2

    resumed, resumed_ema = run(ckpt_path=middle)
    assert resumed_ema.updates == straight_ema.updates == 10
    for name, tensor in straight_ema.average.items():
        assert torch.equal(resumed_ema.average[name], tensor), f"average {name}"
        assert torch.equal(resumed.model.state_dict()[name], tensor), f"model {name}"
        assert torch.equal(straight.model.state_dict()[name], tensor), f"model {name}"
    resumed_final = load_checkpoint(checkpoints / "last-epoch=1-step=10.ckpt")
    for name, tensor in final["model"].items():  # the training weights
        assert torch.equal(resumed_final["model"][name], tensor), f"saved weight {name}"
        assert torch.equal(resumed_final["callbacks"]["EMA"]["parameters"][name],
                           final["callbacks"]["EMA"]["parameters"][name])  # fmt: skip


def test_a_checkpoint_of_another_model_is_refused_by_name(run_dir: Path) -> None:
    ema = EMA()
    ema.load_state_dict({"parameters": {"weight": torch.zeros(1)}, "buffers": {}, "updates": 1})
    trainer = make_trainer(run_dir, callbacks=[ema], max_epochs=1)
    with pytest.raises(ValueError, match=r"EMA parameters do not match.*missing \['0.bias'"):
        trainer.fit()


class FunctionNames(TorchFunctionMode):
    """The names of the torch functions called while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        self.names.add(getattr(func, "__name__", repr(func)))
        return func(*args, **(kwargs or {}))


def test_an_update_is_foreach_kernels_only_and_reads_nothing_back(run_dir: Path) -> None:
    calls = FunctionNames()

    class RecordedEMA(EMA):
        def on_train_batch_end(self, *args: Any) -> None:
            with calls:
                super().on_train_batch_end(*args)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    ema = RecordedEMA(decay=0.9)
    make_trainer(run_dir, model=model, callbacks=[ema], max_epochs=1).fit()
    assert ema.updates == 5
    assert calls.names - {"_set_grad_enabled"} == {"_foreach_lerp_", "_foreach_copy_"}
    assert not calls.names & {"item", "tolist", "cpu", "__float__", "__bool__", "__format__"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"decay": 1.5}, "decay must be in"),
        ({"every_n_steps": 0}, "every_n_steps must be >= 1"),
        ({"start_step": -1}, "start_step must be >= 0"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EMA(**options)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_an_update_never_synchronises(run_dir: Path) -> None:
    class Strict(EMA):
        def on_train_batch_end(self, *args: Any) -> None:
            torch.cuda.set_sync_debug_mode("error")
            try:
                super().on_train_batch_end(*args)
            finally:
                torch.cuda.set_sync_debug_mode(0)

    ema = Strict(decay=0.9)
    trainer = make_trainer(run_dir, callbacks=[ema], max_epochs=1, device="cuda")
    trainer.fit()
    assert ema.updates == 5
    assert all(tensor.is_cuda for tensor in ema.average.values())
