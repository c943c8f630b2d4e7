"""`compile=`: the model runs through `torch.compile` without recompiling every step, and
its checkpoints carry the plain module's names, so compiled and uncompiled runs share files.

The compiler backend here counts the graphs dynamo hands it and runs them eagerly: real
tracing, guards and recompilation, without the minutes inductor's C++ build takes on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_loader, make_mlp, make_trainer
from safetensors import safe_open

from trainer import Trainer
from trainer.callbacks import Callback
from trainer.run_files import find_checkpoint


class CountingBackend:
    """A `torch.compile` backend that counts compilations and runs the traced graph as is."""

    def __init__(self) -> None:
        self.compilations = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        self.compilations += 1
        return graph.forward


class CompilationsPerEpoch(Callback):
    def __init__(self, backend: CountingBackend) -> None:
        self.backend = backend
        self.counts: list[int] = []

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        self.counts.append(self.backend.compilations)


@pytest.fixture
def backend() -> Iterator[CountingBackend]:
    torch.compiler.reset()  # graphs cached by earlier tests would hide compilations
    yield CountingBackend()
    torch.compiler.reset()


def test_compiled_training_and_validation_compile_once_not_every_step(
    run_dir: Path, backend: CountingBackend
) -> None:
    counter = CompilationsPerEpoch(backend)
    trainer = make_trainer(
        run_dir,
        train_loader=make_loader(n=44, batch_size=8),  # a short last batch: a new shape
        val_loader=make_loader(n=20, batch_size=8, seed=1),
        max_epochs=3,
        compile={"backend": backend},
        callbacks=[counter],
    )
    trainer.fit()
    assert trainer.global_step == 18
    assert 1 <= counter.counts[0] <= 6  # train and eval modes, the short batches' shapes
    assert counter.counts[1:] == [counter.counts[0]] * 2  # later epochs reuse every graph


def test_a_compiled_runs_checkpoint_loads_into_an_uncompiled_model_and_back(
    run_dir: Path, backend: CountingBackend
) -> None:
    compiled = make_trainer(run_dir, compile={"backend": backend}, checkpoint=True)
    compiled.fit()
    assert backend.compilations >= 1
    path, saved = find_checkpoint("last", run_dir / "version_0" / "checkpoints")
    plain_names = list(make_mlp().state_dict())
    assert list(saved["model"]) == plain_names  # no "_orig_mod." prefixes

    uncompiled = make_trainer(run_dir / "plain", checkpoint=True, max_epochs=3)
    assert uncompiled.validate(ckpt_path=path) == pytest.approx(compiled.validate())
    uncompiled.fit(ckpt_path=path)  # and on from there, uncompiled

    recompiled = make_trainer(run_dir / "plain", compile={"backend": backend}, max_epochs=3)
    recompiled.validate(ckpt_path="last")
    for name, tensor in uncompiled.model.state_dict().items():
        assert torch.equal(recompiled.model.state_dict()[name], tensor), name

    exported = compiled.export_weights(run_dir / "weights.safetensors")
    with safe_open(str(exported), framework="pt") as file:
        assert sorted(file.keys()) == sorted(plain_names)


@pytest.mark.parametrize("value", ["yes", 1, ["max-autotune"]])
def test_compile_must_be_a_bool_or_a_dict_of_options(
    trainer_factory: Callable, value: Any
) -> None:
    with pytest.raises(TypeError, match=r"compile must be True, False or a dict of torch\.compile"):
        trainer_factory(compile=value)
