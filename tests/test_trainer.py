"""The loop's contract: hook order, modes, accumulation, clipping, schedulers, metrics, limits."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_loader, make_mlp, make_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer import Trainer
from trainer.callbacks import Callback
from trainer.callbacks.base import HOOKS
from trainer.metrics import accuracy


class HookRecorder(Callback):
    """Records every hook call as a short string, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []


def _recording_hook(hook: str) -> Any:
    def record(self: HookRecorder, trainer: Trainer, *args: Any) -> None:
        if hook in ("on_train_batch_start", "on_train_batch_end"):
            self.calls.append(f"{hook}({args[-1]})")
        elif hook == "on_log":
            self.calls.append(f"on_log({args[-1]})")
        else:
            self.calls.append(hook)

    return record


for _hook in HOOKS:
    setattr(HookRecorder, _hook, _recording_hook(_hook))


def _expected_epoch(batches: int, log_every: int, first_step: int, with_save: bool) -> list[str]:
    calls = ["on_train_epoch_start"]
    for batch_idx in range(batches):
        step = first_step + batch_idx + 1
        calls += [f"on_train_batch_start({batch_idx})", "on_before_optimizer_step"]
        if step % log_every == 0:
            calls.append(f"on_log({step})")
        calls.append(f"on_train_batch_end({batch_idx})")
    calls += ["on_validation_start", "on_validation_end"]
    calls += [f"on_log({first_step + batches})", "on_train_epoch_end"]
    if with_save:
        calls.append("on_save_checkpoint")
    return calls


def test_hooks_fire_in_the_documented_order(run_dir: Path) -> None:
    recorder = HookRecorder()
    trainer = make_trainer(
        run_dir,
        train_loader=make_loader(n=24, batch_size=8),
        callbacks=[recorder],
        log_every_n_steps=2,
        checkpoint=True,
    )
    trainer.fit()
    expected = ["on_fit_start"]
    expected += _expected_epoch(3, 2, first_step=0, with_save=True)
    expected += _expected_epoch(3, 2, first_step=3, with_save=True)
    expected += ["on_train_end", "on_fit_end"]
    assert recorder.calls == expected

    resumed = HookRecorder()
    again = make_trainer(run_dir, callbacks=[resumed], max_epochs=3,
                         train_loader=make_loader(n=24, batch_size=8), log_every_n_steps=2)
    again.fit(ckpt_path="last")
    assert resumed.calls[:2] == ["on_load_checkpoint", "on_fit_start"]
    expected_after = _expected_epoch(3, 2, first_step=6, with_save=False)
    assert resumed.calls[2:] == [*expected_after, "on_train_end", "on_fit_end"]


def test_every_hook_is_documented_in_the_loop_pseudocode() -> None:
    doc = Trainer.__doc__ or ""
    for hook in HOOKS:
        assert hook in doc, f"{hook} is missing from Trainer's pseudocode"


def test_on_exception_fires_and_the_error_propagates(run_dir: Path) -> None:
    class Boom(Trainer):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            raise RuntimeError("boom in step")

    recorder = HookRecorder()
    model = make_mlp()
    trainer = Boom(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                   train_loader=make_loader(), max_epochs=1, callbacks=[recorder],
                   progress_bar=False, logger=False, checkpoint=False, run_dir=run_dir)
    with pytest.raises(RuntimeError, match="boom in step"):
        trainer.fit()
    assert recorder.calls[-1] == "on_exception"


def test_callback_errors_name_the_callback_and_hook(run_dir: Path) -> None:
    class Faulty(Callback):
        def on_train_epoch_start(self, trainer: Trainer) -> None:
            raise ValueError("bad callback")

    trainer = make_trainer(run_dir, callbacks=[Faulty()])
    with pytest.raises(ValueError, match="bad callback") as info:
        trainer.fit()
    notes = getattr(info.value, "__notes__", ["Faulty.on_train_epoch_start"])
    assert "Faulty.on_train_epoch_start" in " ".join(notes)


def test_default_job_learns_the_digits(digits: Any, run_dir: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10))
    trainer = Trainer(
        model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3),
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=digits.train_loader(),
        val_loader=digits.val_loader(),
        metrics={"acc": accuracy},
        max_epochs=12,
        seed=0,
        run_dir=run_dir,
        progress_bar=False,
    )
    history = trainer.fit()
    assert len(history) == 12
    assert history[-1]["val/acc"] >= 0.95
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert set(history[-1]) >= {"epoch", "train/loss", "val/loss", "val/acc", "lr"}
    per_epoch = trainer.global_step // 12
    assert sorted(path.name for path in (run_dir / "version_0" / "checkpoints").iterdir()) == [
        f"last-epoch=10-step={11 * per_epoch}.ckpt",
        f"last-epoch=11-step={12 * per_epoch}.ckpt",
    ]
    assert list((run_dir / "version_0").glob("events.out.tfevents.*"))


class ModeSpy(Callback):
    """Records the train/eval mode of the model and of one submodule at each phase."""

    def __init__(self, submodule: nn.Module) -> None:
        self.submodule = submodule
        self.during_training: set[tuple[bool, bool]] = set()

    def on_train_batch_start(self, trainer: Trainer, batch: Any, batch_idx: int) -> None:
        self.during_training.add((trainer.model.training, self.submodule.training))


def test_train_mode_for_training_eval_and_inference_mode_for_validation(run_dir: Path) -> None:
    seen: list[tuple[bool, bool]] = []

    class Spy(Trainer):
        def validation_step(self, batch: Any, batch_idx: int) -> Any:
            seen.append((self.model.training, torch.is_inference_mode_enabled()))
            return super().validation_step(batch, batch_idx)

    model = make_mlp(dropout=0.5)
    spy = ModeSpy(model[2])
    trainer = Spy(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                  loss_fn=nn.CrossEntropyLoss(), train_loader=make_loader(),
                  val_loader=make_loader(n=16), max_epochs=2, callbacks=[spy],
                  progress_bar=False, logger=False, checkpoint=False, run_dir=run_dir)
    trainer.fit()
    assert spy.during_training == {(True, True)}
    assert set(seen) == {(False, True)}
    assert model.training and model[2].training
    trainer.validate()
    assert model.training, "validate() must put the model back into train mode"


def test_a_frozen_eval_backbone_stays_in_eval_mode(run_dir: Path) -> None:
    model = make_mlp(dropout=0.5)
    backbone = model[0]
    backbone.eval()
    backbone.requires_grad_(False)
    spy = ModeSpy(backbone)
    trainer = make_trainer(run_dir, model, callbacks=[spy],
                           optimizer=torch.optim.SGD(model[3].parameters(), lr=0.1))
    before = backbone.weight.clone()
    trainer.fit()
    assert spy.during_training == {(True, False)}
    assert not backbone.training and model.training
    assert torch.equal(before, backbone.weight)


def test_a_model_left_in_eval_mode_trains_in_train_mode(run_dir: Path) -> None:
    model = make_mlp(dropout=0.5).eval()
    spy = ModeSpy(model[2])
    make_trainer(run_dir, model, callbacks=[spy]).fit()
    assert spy.during_training == {(True, True)}
    assert not model.training, "each module's own mode is restored after fit"


def _train_linear(run_dir: Path, batch_size: int, accumulate: int, n: int = 40) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    generator = torch.Generator().manual_seed(1)
    inputs, targets = torch.randn(n, 4, generator=generator), torch.randn(n, 1, generator=generator)
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=batch_size)
    trainer = Trainer(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                      loss_fn=nn.MSELoss(), train_loader=loader, max_epochs=1,
                      accumulate_grad_batches=accumulate, device="cpu", run_dir=run_dir,
                      progress_bar=False, logger=False, checkpoint=False)
    trainer.fit()
    return model


def test_accumulated_micro_batches_equal_one_big_batch(run_dir: Path) -> None:
    big = _train_linear(run_dir, batch_size=20, accumulate=1)
    accumulated = _train_linear(run_dir, batch_size=5, accumulate=4)
    for a, b in zip(big.parameters(), accumulated.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_a_short_last_accumulation_window_still_steps_as_a_batch_mean(run_dir: Path) -> None:
    # 40 samples in batches of 5 with windows of 3: steps over 15, 15 and the last 10.
    uneven = _train_linear(run_dir, batch_size=5, accumulate=3)
    steps: list[int] = []

    class CountSteps(Callback):
        def on_before_optimizer_step(self, trainer: Trainer, optimizer: Any) -> None:
            steps.append(trainer.global_step)

    torch.manual_seed(0)
    reference = nn.Linear(4, 1)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(40, 4, generator=generator)
    targets = torch.randn(40, 1, generator=generator)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for start, stop in ((0, 15), (15, 30), (30, 40)):
        optimizer.zero_grad()
        nn.functional.mse_loss(reference(inputs[start:stop]), targets[start:stop]).backward()
        optimizer.step()
    for a, b in zip(reference.parameters(), uneven.parameters(), strict=True):
        torch.testing.assert_close(a, b)

    model = make_mlp()
    make_trainer(run_dir, model, train_loader=make_loader(n=40, batch_size=5),
                 accumulate_grad_batches=3, max_epochs=1, callbacks=[CountSteps()]).fit()
    assert steps == [0, 1, 2]


def test_an_unsized_loader_steps_its_short_last_window(run_dir: Path) -> None:
    loader = make_loader(n=40, batch_size=5)

    class Unsized:
        def __iter__(self) -> Any:
            return iter(loader)

    trainer = make_trainer(run_dir, train_loader=Unsized(), accumulate_grad_batches=3,
                           max_epochs=2, val_loader=None)
    trainer.fit()
    assert trainer.global_step == 6


def test_gradients_are_clipped_to_the_total_norm(run_dir: Path) -> None:
    norms: list[float] = []

    class NormSpy(Callback):
        def on_before_optimizer_step(self, trainer: Trainer, optimizer: Any) -> None:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
            norms.append(float(torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(g) for g in grads if g is not None]))))

    make_trainer(run_dir, gradient_clip_val=0.01, callbacks=[NormSpy()]).fit()
    assert norms and max(norms) <= 0.01 + 1e-6


def test_schedulers_step_per_epoch_per_step_and_on_plateau(run_dir: Path) -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    by_epoch = make_trainer(run_dir, model, optimizer=optimizer, max_epochs=3,
                            scheduler=functools.partial(torch.optim.lr_scheduler.StepLR,
                                                        step_size=1, gamma=0.5))
    history = by_epoch.fit()
    assert [record["lr"] for record in history] == [1.0, 0.5, 0.25]
    assert optimizer.param_groups[0]["lr"] == 0.125

    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    by_step = make_trainer(run_dir, model, optimizer=optimizer, max_epochs=1,
                           scheduler_interval="step",
                           scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5))
    by_step.fit()
    assert optimizer.param_groups[0]["lr"] == 0.5**5  # 40 samples / batch 8 = 5 steps

    class RisingLoss(Trainer):
        def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return torch.tensor(float(self.epoch))

    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    plateau = RisingLoss(model, optimizer=optimizer, loss_fn=nn.CrossEntropyLoss(),
                         train_loader=make_loader(), val_loader=make_loader(), max_epochs=4,
                         scheduler=functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau,
                                                     patience=0, factor=0.1),
                         progress_bar=False, logger=False, checkpoint=False, run_dir=run_dir)
    history = plateau.fit()
    assert [round(record["lr"], 6) for record in history] == [1.0, 1.0, 0.1, 0.01]


def test_validation_figures_are_sample_weighted_means(run_dir: Path) -> None:
    """Batches of 4, 4 and 2: a per-batch average would be wrong."""
    inputs = torch.zeros(10, 64)
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])

    def mean_target(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return labels.float().mean()

    loader = DataLoader(TensorDataset(inputs, targets), batch_size=4)
    trainer = make_trainer(run_dir, metrics={"mean_target": mean_target})
    figures = trainer.validate(loader)
    assert figures["val/mean_target"] == pytest.approx(0.8)
    test_figures = trainer.test(loader)
    assert test_figures["test/mean_target"] == pytest.approx(0.8)
    assert set(test_figures) == {"test/loss", "test/mean_target"}


def test_stateful_metrics_are_updated_and_computed_once(run_dir: Path) -> None:
    class CountingAccuracy:
        """A torchmetrics-style metric: update per batch, compute at the end."""

        def __init__(self) -> None:
            self.correct, self.total, self.computed = 0, 0, 0

        def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
            self.correct += int((outputs.argmax(-1) == targets).sum())
            self.total += len(targets)

        def compute(self) -> torch.Tensor:
            self.computed += 1
            return torch.tensor(self.correct / self.total)

        def reset(self) -> None:
            self.correct, self.total = 0, 0

    metric = CountingAccuracy()
    trainer = make_trainer(run_dir, metrics={"acc": metric, "plain_acc": accuracy})
    figures = trainer.validate(make_loader(n=20, batch_size=8))
    assert metric.computed == 1 and metric.total == 0
    assert figures["val/acc"] == pytest.approx(figures["val/plain_acc"])


def test_max_steps_stops_mid_epoch_and_wins_over_max_epochs(run_dir: Path) -> None:
    trainer = make_trainer(run_dir, max_epochs=10, max_steps=7)
    history = trainer.fit()
    assert trainer.global_step == 7
    assert len(history) == 2  # 5 steps per epoch


def test_max_steps_alone_runs_as_many_epochs_as_needed(run_dir: Path) -> None:
    trainer = make_trainer(run_dir, max_epochs=None, max_steps=12)
    trainer.fit()
    assert trainer.global_step == 12


def test_should_stop_ends_training_after_the_current_step(run_dir: Path) -> None:
    class StopAtThree(Callback):
        def on_train_batch_end(self, trainer: Trainer, outputs: Any, batch: Any, idx: int) -> None:
            if trainer.global_step == 3:
                trainer.should_stop = True

    trainer = make_trainer(run_dir, max_epochs=5, callbacks=[StopAtThree()])
    history = trainer.fit()
    assert trainer.global_step == 3 and len(history) == 1


def test_the_same_seed_gives_the_same_weights(run_dir: Path) -> None:
    def run() -> list[torch.Tensor]:
        model = make_mlp(dropout=0.3)
        make_trainer(run_dir, model, seed=7,
                     train_loader=make_loader(shuffle=True)).fit()
        return [p.detach().clone() for p in model.parameters()]

    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_seed_applies_when_fit_starts_a_run_and_none_leaves_the_generators_alone(
    run_dir: Path,
) -> None:
    def final_weights(seed: int | None, caller_seed: int) -> torch.Tensor:
        trainer = make_trainer(run_dir, make_mlp(dropout=0.3), seed=seed, max_epochs=1,
                               train_loader=make_loader(shuffle=True))  # fmt: skip
        torch.manual_seed(caller_seed)  # what the script did after building the Trainer
        trainer.fit()
        return trainer.model[0].weight.detach().clone()

    model = make_mlp()
    torch.manual_seed(123)
    expected = torch.get_rng_state()
    make_trainer(run_dir, model, seed=7)
    assert torch.equal(torch.get_rng_state(), expected), "building a Trainer seeds nothing"
    assert torch.equal(final_weights(7, 1), final_weights(7, 2)), "fit seeds a fresh run"
    assert torch.equal(final_weights(None, 1), final_weights(None, 1))
    assert not torch.equal(final_weights(None, 1), final_weights(None, 2)), "None seeds nothing"


def test_a_resumed_run_is_not_seeded_again(run_dir: Path) -> None:
    """The checkpoint's random states win over `seed`: reseeding would repeat the stream."""
    model = make_mlp(dropout=0.3)
    straight = make_trainer(run_dir / "a", model, seed=7, max_epochs=2,
                            train_loader=make_loader(shuffle=True))  # fmt: skip
    straight.fit()
    first = make_trainer(run_dir / "b", make_mlp(dropout=0.3), seed=7, max_epochs=1,
                         checkpoint=True, train_loader=make_loader(shuffle=True))  # fmt: skip
    first.fit()
    resumed = make_trainer(run_dir / "b", make_mlp(dropout=0.3), seed=7, max_epochs=2,
                           checkpoint=True, train_loader=make_loader(shuffle=True))  # fmt: skip
    resumed.fit(ckpt_path="last")
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_batches_are_moved_to_the_device_recursively(run_dir: Path) -> None:
    seen: list[str] = []

    class DictBatches(Trainer):
        def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
            seen.append(batch["pair"][0].device.type)
            return self.loss_fn(self.model(batch["pair"][0]), batch["pair"][1])

    data = [{"pair": (torch.randn(4, 64), torch.randint(0, 10, (4,))), "name": "x"}] * 3
    model = make_mlp()
    DictBatches(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                loss_fn=nn.CrossEntropyLoss(), train_loader=data, max_epochs=1,
                device="cpu", progress_bar=False, logger=False, checkpoint=False,
                run_dir=run_dir).fit()
    assert seen == ["cpu"] * 3


def test_configure_optimizers_supplies_optimizer_and_scheduler(run_dir: Path) -> None:
    class Configured(Trainer):
        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.SGD(self.model.parameters(), lr=1.0)
            return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.1)

    trainer = Configured(make_mlp(), loss_fn=nn.CrossEntropyLoss(), train_loader=make_loader(),
                         max_epochs=2, progress_bar=False, logger=False, checkpoint=False,
                         run_dir=run_dir)
    history = trainer.fit()
    assert [round(record["lr"], 6) for record in history] == [1.0, 0.1]


def test_an_optimizer_factory_gets_the_models_parameters(run_dir: Path) -> None:
    trainer = make_trainer(run_dir, optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    trainer.fit()
    assert trainer.global_step == 10


def test_a_research_script_written_from_the_api_contract(digits: Any, run_dir: Path) -> None:
    """Subclass with an extra self.log in training_step, add a callback; fit, validate, predict."""

    class MyTrainer(Trainer):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            out = self.model(x)
            loss = self.loss_fn(out, y)
            self.log("train/aux", out.abs().mean())
            return loss

    class EpochLog(Callback):
        def __init__(self) -> None:
            self.seen: list[tuple[int, float]] = []

        def on_train_epoch_end(self, trainer: Trainer) -> None:
            self.seen.append((trainer.epoch, trainer.metrics["train/aux"]))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10))
    callback = EpochLog()
    trainer = MyTrainer(
        model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=digits.train_loader(),
        val_loader=digits.val_loader(),
        metrics={"acc": accuracy},
        max_epochs=3,
        callbacks=[callback],
        run_dir=run_dir,
        log_every_n_steps=5,
    )
    history = trainer.fit()
    assert [epoch for epoch, _ in callback.seen] == [0, 1, 2]
    assert all("train/aux" in record for record in history)
    metrics = trainer.validate()
    assert set(metrics) == {"val/loss", "val/acc"} and metrics["val/acc"] > 0.8
    predictions = trainer.predict(digits.predict_loader())
    assert sum(len(p) for p in predictions) == len(digits.test_set)
    assert predictions[0].shape[1] == 10
    assert not predictions[0].requires_grad
