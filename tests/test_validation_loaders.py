"""Several validation loaders: `val_loader={"clean": a, "noisy": b}` names every figure after
its loader, averages each loader over its own samples, resets stateful metrics between them,
lets monitors name one loader's figure, and rejects what cannot work in the constructor."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_loader, make_mlp, make_trainer, message_of
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from trainer import Trainer
from trainer.callbacks import Callback, CSVLogger, EarlyStopping, ModelCheckpoint
from trainer.distributed import Distributed
from trainer.metrics import accuracy
from trainer.sampling import EvaluationShard, evaluation_loader


class _Stream(IterableDataset):
    """The samples of a TensorDataset as a stream without a length."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from (self.data[index] for index in range(len(self.data)))


def _data(n: int, seed: int) -> TensorDataset:
    return make_loader(n=n, seed=seed).dataset


VAL_LOADERS: dict[str, Callable[[TensorDataset, int], Any]] = {
    "DataLoader": lambda data, size: DataLoader(data, batch_size=size),
    "shuffled": lambda data, size: DataLoader(data, batch_size=size, shuffle=True),
    "2 workers": lambda data, size: DataLoader(data, batch_size=size, num_workers=2),
    "IterableDataset": lambda data, size: DataLoader(_Stream(data), batch_size=size),
}


def _loss_and_accuracy(model: nn.Module, data: TensorDataset) -> tuple[float, float]:
    """The figures over every sample at once: what a per-batch mean must add up to."""
    inputs, targets = data.tensors
    with torch.inference_mode():
        was_training = model.training
        model.eval()
        outputs = model(inputs)
        model.train(was_training)
    return float(nn.functional.cross_entropy(outputs, targets)), float(accuracy(outputs, targets))


@pytest.mark.parametrize("kind", list(VAL_LOADERS))
def test_each_loader_logs_its_own_figures_averaged_over_its_samples(
    run_dir: Path, kind: str
) -> None:
    clean, noisy = _data(22, seed=1), _data(13, seed=2)  # batches of 5: short last batches
    loaders = {"clean": VAL_LOADERS[kind](clean, 5), "noisy": VAL_LOADERS[kind](noisy, 5)}
    trainer = make_trainer(run_dir, val_loader=loaders, max_epochs=1)
    record = trainer.fit()[-1]
    names = {"val/clean/loss", "val/clean/acc", "val/noisy/loss", "val/noisy/acc"}
    assert names <= set(record) and not {"val/loss", "val/acc"} & set(record)
    for name, data in (("clean", clean), ("noisy", noisy)):
        loss, acc = _loss_and_accuracy(trainer.model, data)
        assert record[f"val/{name}/loss"] == pytest.approx(loss, rel=1e-5)
        assert record[f"val/{name}/acc"] == pytest.approx(acc)
        assert trainer.metrics[f"val/{name}/loss"] == record[f"val/{name}/loss"]


def test_one_loader_keeps_todays_names(run_dir: Path) -> None:
    record = make_trainer(run_dir, max_epochs=1).fit()[-1]
    assert {"val/loss", "val/acc"} <= set(record)
    assert not any(name.count("/") > 1 for name in record)


def test_a_dict_of_one_loader_still_names_it(run_dir: Path) -> None:
    record = make_trainer(run_dir, val_loader={"held_out": make_loader(n=8)}, max_epochs=1).fit()
    assert {"val/held_out/loss", "val/held_out/acc"} <= set(record[-1])


def test_validation_hooks_fire_once_around_all_loaders(run_dir: Path) -> None:
    class Record(Callback):
        def __init__(self) -> None:
            self.calls: list[tuple[str, Any]] = []

        def on_validation_start(self, trainer: Trainer) -> None:
            self.calls.append(("start", trainer.stage))

        def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
            self.calls.append(("end", sorted(metrics)))

    record = Record()
    loaders = {"a": make_loader(n=8), "b": make_loader(n=8, seed=3)}
    make_trainer(run_dir, val_loader=loaders, max_epochs=2, callbacks=[record]).fit()
    figures = ["val/a/acc", "val/a/loss", "val/b/acc", "val/b/loss"]
    assert record.calls == [("start", "validate"), ("end", figures)] * 2


def test_figures_a_validation_step_logs_carry_the_loaders_name(run_dir: Path) -> None:
    class Margins(Trainer):
        def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
            inputs, targets = batch
            outputs = self.model(inputs)
            self.log("val/margin", outputs.max(-1).values.mean())
            self.log("confidence", outputs.softmax(-1).max(-1).values.mean())
            return {"loss": self.loss_fn(outputs, targets)}

    loaders = {"a": make_loader(n=8), "b": make_loader(n=8, seed=3)}
    trainer = make_trainer(run_dir, trainer_class=Margins, val_loader=loaders, metrics=None)
    figures = trainer.validate()
    assert set(figures) == {
        f"{name}" for loader in "ab"
        for name in (f"val/{loader}/loss", f"val/{loader}/margin", f"confidence/{loader}")
    }  # fmt: skip


class _CountingAccuracy:
    """A torchmetrics-style metric: update per batch, compute at the end, reset after."""

    def __init__(self) -> None:
        self.correct, self.total = 0, 0
        self.totals_computed: list[int] = []

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.correct += int((outputs.argmax(-1) == targets).sum())
        self.total += len(targets)

    def compute(self) -> torch.Tensor:
        self.totals_computed.append(self.total)
        return torch.tensor(self.correct / self.total)

    def reset(self) -> None:
        self.correct, self.total = 0, 0


def test_a_stateful_metric_is_computed_and_reset_per_loader(run_dir: Path) -> None:
    metric = _CountingAccuracy()
    clean, noisy = _data(20, seed=1), _data(12, seed=2)
    loaders = {"clean": DataLoader(clean, batch_size=8), "noisy": DataLoader(noisy, batch_size=8)}
    trainer = make_trainer(run_dir, val_loader=loaders, metrics={"acc": metric, "plain": accuracy})
    figures = trainer.validate()
    assert metric.totals_computed == [20, 12] and metric.total == 0
    for name, data in (("clean", clean), ("noisy", noisy)):
        assert figures[f"val/{name}/acc"] == pytest.approx(figures[f"val/{name}/plain"])
        assert figures[f"val/{name}/acc"] == pytest.approx(
            _loss_and_accuracy(trainer.model, data)[1]
        )


def test_validate_returns_every_loaders_figures_and_takes_a_dict(run_dir: Path) -> None:
    trainer = make_trainer(run_dir, val_loader={"a": make_loader(n=8), "b": make_loader(n=9)})
    assert set(trainer.validate()) == {"val/a/loss", "val/a/acc", "val/b/loss", "val/b/acc"}
    other = trainer.validate(loader={"c": make_loader(n=8, seed=4)})
    assert set(other) == {"val/c/loss", "val/c/acc"}
    assert set(trainer.validate(loader=make_loader(n=8))) == {"val/loss", "val/acc"}


class _ScriptedValidation(Trainer):
    """Validation figures from a script, one value per epoch and loader."""

    def __init__(self, *args: Any, script: dict[str, list[float]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.script = script
        self.passes = 0

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        names = list(self.script)
        name = names[self.passes % len(names)]
        if batch_idx == 0:
            self.passes += 1
        return {"loss": torch.tensor(self.script[name][(self.passes - 1) // len(names)])}


def _scripted(run_dir: Path, script: dict[str, list[float]], **options: Any) -> Trainer:
    loaders = {name: make_loader(n=4, batch_size=4) for name in script}
    return make_trainer(
        run_dir, trainer_class=_ScriptedValidation, script=script, val_loader=loaders,
        metrics=None, max_epochs=len(next(iter(script.values()))), num_sanity_val_steps=0,
        **options,
    )  # fmt: skip


def test_early_stopping_watches_the_named_loader_only(run_dir: Path) -> None:
    script = {"clean": [1.0, 0.5, 0.4, 0.3, 0.2], "noisy": [1.0, 1.1, 1.2, 1.3, 1.4]}
    on_noisy = _scripted(run_dir, script, callbacks=[EarlyStopping("val/noisy/loss", patience=2)])
    assert len(on_noisy.fit()) == 3  # no better noisy loss after epoch 1: stops after 3
    on_clean = _scripted(run_dir, script, callbacks=[EarlyStopping("val/clean/loss", patience=2)])
    assert len(on_clean.fit()) == 5


def test_model_checkpoint_keeps_the_best_epoch_of_the_named_loader(run_dir: Path) -> None:
    script = {"clean": [0.9, 0.5, 0.7], "noisy": [0.3, 0.8, 0.9]}
    saver = ModelCheckpoint(monitor="val/clean/loss", save_top_k=1, save_last=False)
    trainer = _scripted(run_dir, script, checkpoint=saver)
    trainer.fit()
    best = trainer.callbacks.best_so_far()
    assert best is not None and best.monitor == "val/clean/loss"
    assert (best.epoch, best.value) == (1, pytest.approx(0.5))
    assert best.path is not None and Path(best.path).is_file()


def test_reduce_lr_on_plateau_reads_the_named_loader(run_dir: Path) -> None:
    script = {"clean": [1.0, 0.5, 0.4], "noisy": [1.0, 1.5, 1.6]}
    model = make_mlp()
    trainer = _scripted(
        run_dir, script, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0),
        scheduler_monitor="val/noisy/loss",
    )  # fmt: skip
    history = trainer.fit()  # an epoch's record has the rate it trained with
    assert [record["lr"] for record in history] == pytest.approx([1.0, 1.0, 0.1])
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # clean: still 1.0


def test_the_default_monitor_with_several_loaders_fails_in_the_constructor(run_dir: Path) -> None:
    loaders = {"clean": make_loader(n=8), "noisy": make_loader(n=8)}
    with pytest.raises(ValueError) as excinfo:
        make_trainer(run_dir, val_loader=loaders, callbacks=[EarlyStopping()])
    message = message_of(excinfo)
    assert "EarlyStopping monitors 'val/loss'" in message
    assert "'val/clean/loss', 'val/noisy/loss'" in message
    with pytest.raises(ValueError, match="'val/clean/acc', 'val/noisy/acc'"):
        make_trainer(run_dir, val_loader=loaders, checkpoint=ModelCheckpoint(monitor="val/acc"))


def test_a_missing_monitor_lists_the_logged_names_and_the_closest(run_dir: Path) -> None:
    loaders = {"clean": make_loader(n=8), "noisy": make_loader(n=8)}
    trainer = make_trainer(
        run_dir, val_loader=loaders, callbacks=[EarlyStopping("val/noisy/los")], max_epochs=1
    )
    with pytest.raises(KeyError) as excinfo:
        trainer.fit()
    message = message_of(excinfo)
    assert "Did you mean 'val/noisy/loss'?" in message
    assert "val/clean/acc, val/clean/loss, val/noisy/acc, val/noisy/loss" in message


def test_a_plateau_scheduler_on_val_loss_fails_in_the_constructor_naming_the_choices(
    run_dir: Path,
) -> None:
    model = make_mlp()
    with pytest.raises(ValueError) as excinfo:
        make_trainer(
            run_dir, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            val_loader={"clean": make_loader(n=8), "noisy": make_loader(n=8)},
            scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt),
        )  # fmt: skip
    assert "pass scheduler_monitor= one of 'val/clean/loss', 'val/noisy/loss'" in message_of(
        excinfo
    )


def test_a_plateau_scheduler_built_later_is_told_which_loaders_to_name(run_dir: Path) -> None:
    class Configured(Trainer):
        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
            return optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)

    trainer = make_trainer(
        run_dir, trainer_class=Configured, optimizer=None, max_epochs=1,
        val_loader={"clean": make_loader(n=8), "noisy": make_loader(n=8)},
    )  # fmt: skip
    with pytest.raises(KeyError) as excinfo:
        trainer.fit()
    assert "name one: 'val/clean/loss', 'val/noisy/loss'" in message_of(excinfo)


@pytest.mark.parametrize(
    ("val_loader", "expected"),
    [
        ({}, "val_loader is an empty dict"),
        ({1: [1]}, "val_loader names its loaders by strings without '/', got 1"),
        ({"": [1]}, "val_loader names its loaders by strings without '/', got ''"),
        ({"a/b": [1]}, "got 'a/b'"),
        ({"a": 3}, "val_loader['a'] must be an iterable of batches (a DataLoader), got int"),
        ({"a": DataLoader(TensorDataset(torch.zeros(0, 64)))}, "val_loader['a'] is empty"),
    ],
    ids=["empty dict", "int name", "empty name", "slash", "not iterable", "empty loader"],
)
def test_a_bad_dict_of_loaders_fails_in_the_constructor_naming_the_fix(
    run_dir: Path, val_loader: Any, expected: str
) -> None:
    with pytest.raises((TypeError, ValueError)) as excinfo:
        make_trainer(run_dir, val_loader=val_loader)
    assert expected in message_of(excinfo)


def test_validate_checks_a_dict_it_is_given(run_dir: Path) -> None:
    with pytest.raises(ValueError, match="loader is an empty dict"):
        make_trainer(run_dir).validate(loader={})


def test_under_ddp_each_named_loader_is_split_between_the_ranks() -> None:
    distributed = Distributed("ddp")
    distributed.kind, distributed.world_size, distributed.rank = "ddp", 2, 1
    loaders = {"clean": make_loader(n=9), "noisy": make_loader(n=6)}
    split = evaluation_loader(loaders, distributed)
    assert list(split) == ["clean", "noisy"]
    assert all(isinstance(loader.sampler, EvaluationShard) for loader in split.values())
    assert [len(loader.sampler) for loader in split.values()] == [4, 3]


def test_the_csv_log_has_a_column_per_loaders_figure(run_dir: Path) -> None:
    loaders = {"clean": make_loader(n=8), "noisy": make_loader(n=8)}
    trainer = make_trainer(run_dir, val_loader=loaders, logger=CSVLogger())
    trainer.fit()
    header = (trainer.log_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/clean/loss", "val/clean/acc", "val/noisy/loss", "val/noisy/acc"} <= set(header)


def test_the_epoch_line_and_the_run_summary_name_each_loaders_figures(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainer.report import fit_summary

    loaders = {"clean": make_loader(n=8), "noisy": make_loader(n=8, seed=3)}
    saver = ModelCheckpoint(monitor="val/noisy/acc", mode="max")
    trainer = make_trainer(
        run_dir, val_loader=loaders, progress_bar=True, checkpoint=saver, max_epochs=1
    )
    history = trainer.fit()
    line = capsys.readouterr().out.splitlines()[-1]
    figures = ["val/clean/loss", "val/clean/acc", "val/noisy/loss", "val/noisy/acc"]
    for name in figures:
        assert f"{name}={trainer.metrics[name]:.4f}" in line
    summary = "\n".join(fit_summary(trainer, history))
    assert "best epoch:    1 by val/noisy/acc" in summary
    assert all(f"{name} " in summary for name in figures)
