"""Checkpoints: atomic saves that keep earlier files, loads that never run code, damaged files
skipped or refused with the reason, and exact resume."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import assert_equal_states, make_loader, make_mlp, make_trainer
from safetensors.torch import load_file, save_file
from torch import nn

import trainer.checkpoint as checkpoint_module
from trainer import Trainer
from trainer.callbacks import EarlyStopping
from trainer.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    export_weights,
    load_checkpoint,
    save_checkpoint,
)
from trainer.run_files import NotARunCheckpointError, find_checkpoint

IS_ROOT = not hasattr(os, "geteuid") or os.geteuid() == 0


class WritesMarker:
    """Pickles to a call of `open(marker, "w")`: unpickling it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def leftover_temporaries(folder: Path) -> list[Path]:
    return [path for path in folder.iterdir() if path.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------ saving
def test_save_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.ckpt"
    save_checkpoint({"value": torch.ones(2)}, path)
    save_checkpoint({"value": torch.zeros(2)}, path)
    assert torch.equal(load_checkpoint(path)["value"], torch.zeros(2))
    assert leftover_temporaries(tmp_path) == []


def test_checkpoint_content_round_trips_plain_data_and_tensors(tmp_path: Path) -> None:
    content = {
        "tensors": {"w": torch.randn(3, 2), "bf16": torch.ones(2, dtype=torch.bfloat16)},
        "tuple": (1, 2.5, "x", None, True),
        "int_keys": {0: {"step": torch.tensor(3.0)}, 1: {}},
        "floats": [float("inf"), -1e-30],
        "empty": torch.zeros(0),
    }
    shared = torch.arange(6.0)
    content["tied"] = {"a": shared, "b": shared}
    path = save_checkpoint(content, tmp_path / "c.ckpt")
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["tensors"]["w"], content["tensors"]["w"])
    assert loaded["tensors"]["bf16"].dtype == torch.bfloat16
    assert loaded["tuple"] == (1, 2.5, "x", None, True)
    assert set(loaded["int_keys"]) == {0, 1}
    assert loaded["floats"][0] == float("inf")
    assert torch.equal(loaded["tied"]["b"], shared)
    assert loaded["empty"].shape == (0,)


def test_a_large_state_summed_on_a_second_thread_loads_and_its_damage_is_found(
    tmp_path: Path,
) -> None:
    weights = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0))
    assert weights.nbytes >= checkpoint_module._SUM_ASIDE_FROM  # the threaded checksum path
    path = save_checkpoint({"w": weights, "step": 3}, tmp_path / "big.ckpt")
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["w"], weights) and loaded["step"] == 3
    damaged = bytearray(path.read_bytes())
    damaged[-5] ^= 0xFF  # one flipped byte in the last weight
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError, match="is corrupted: its checksum does not match"):
        load_checkpoint(path)


def test_a_value_that_is_not_plain_data_is_refused_naming_its_entry(tmp_path: Path) -> None:
    path = save_checkpoint({"value": torch.ones(2)}, tmp_path / "state.ckpt")
    with pytest.raises(TypeError, match=r"'callbacks/Mine/when' is a set"):
        save_checkpoint({"callbacks": {"Mine": {"when": {1, 2}}}}, path)
    assert torch.equal(load_checkpoint(path)["value"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["state.ckpt"]


def _target_is_a_folder(folder: Path) -> Path:
    target = folder / "last-epoch=1-step=10.ckpt"
    target.mkdir()
    return target


def _parent_is_a_file(folder: Path) -> Path:
    (folder / "notes.txt").write_text("a file, not a folder")
    return folder / "notes.txt" / "last-epoch=1-step=10.ckpt"


def _read_only_folder(folder: Path) -> Path:
    folder.chmod(0o555)
    return folder / "last-epoch=1-step=10.ckpt"


@pytest.mark.parametrize(
    "break_target",
    [
        _target_is_a_folder,
        _parent_is_a_file,
        pytest.param(
            _read_only_folder,
            marks=pytest.mark.skipif(IS_ROOT, reason="root ignores folder permissions"),
        ),
    ],
    ids=lambda breaker: breaker.__name__.strip("_"),
)
def test_a_save_that_cannot_be_written_is_refused_and_keeps_earlier_files(
    run_dir: Path, break_target: Callable[[Path], Path]
) -> None:
    trainer = make_trainer(run_dir)
    folder = run_dir / "version_0" / "checkpoints"
    trainer.save_checkpoint(folder / "last-epoch=0-step=5.ckpt")
    target = break_target(folder)
    before = {path.name: path.is_file() and path.read_bytes() for path in folder.iterdir()}
    try:
        with pytest.raises(CheckpointError) as info:
            trainer.save_checkpoint(target)
    finally:
        folder.chmod(0o755)
    message = str(info.value)
    assert f"could not save checkpoint {target}" in message
    assert "permissions" in message and "earlier checkpoints are intact" in message
    # Every file is as it was (the earlier checkpoint, a file in the way), and no temporary.
    assert {path.name: path.is_file() and path.read_bytes() for path in folder.iterdir()} == before


def test_a_failed_write_keeps_the_previous_checkpoint_and_leaves_no_temp_file(
    tmp_path: Path,
) -> None:
    """A real write error (the file-size limit standing in for a full disk), in a subprocess."""
    folder = tmp_path / "checkpoints"
    good = save_checkpoint({"w": torch.ones(4)}, folder / "last-epoch=0-step=1.ckpt")
    script = textwrap.dedent(
        f"""
        import resource, signal, torch
        from trainer.checkpoint import CheckpointError, save_checkpoint
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            target = {str(folder)!r} + "/last-epoch=1-step=2.ckpt"
            save_checkpoint({{"w": torch.ones(100_000)}}, target)
        except CheckpointError as error:
            print("ERROR", error)
        """
    )
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=60
    )
    assert "ERROR could not save checkpoint" in result.stdout, result.stderr
    assert "earlier checkpoints are intact" in result.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["last-epoch=0-step=1.ckpt"]
    assert torch.equal(load_checkpoint(good)["w"], torch.ones(4))


# ----------------------------------------------------------------------------------- loading
def _missing(folder: Path) -> Path:
    return folder / "nope.ckpt"


def _a_folder(folder: Path) -> Path:
    return folder


def _torch_saved_weights(folder: Path) -> Path:
    torch.save(make_mlp().state_dict(), folder / "weights.pt")
    return folder / "weights.pt"


def _torch_saved_legacy_pickle(folder: Path) -> Path:
    path = folder / "weights.pt"
    torch.save(make_mlp().state_dict(), path, _use_new_zipfile_serialization=False)
    return path


def _exported_weights(folder: Path) -> Path:
    return export_weights(make_mlp(), folder / "weights.safetensors")


def _truncated(folder: Path) -> Path:
    path = make_trainer(folder / "run").save_checkpoint(folder / "state.ckpt")
    path.write_bytes(path.read_bytes()[:100])
    return path


def _bit_flipped(folder: Path) -> Path:
    path = make_trainer(folder / "run").save_checkpoint(folder / "state.ckpt")
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x10  # inside the tensor data, past the header
    path.write_bytes(bytes(data))
    return path


def _newer_format(folder: Path) -> Path:
    path = folder / "future.ckpt"
    metadata = {
        "format": "trainer-checkpoint",
        "format_version": str(FORMAT_VERSION + 1),
        "content": "{}",
    }
    save_file({"x": torch.zeros(1)}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("make_path", "reason"),
    [
        (_missing, r"nope\.ckpt does not exist"),
        (_a_folder, r"is a folder; pass a \.ckpt file"),
        (_torch_saved_weights, r"weights\.pt is a torch\.save/pickle file; only trainer"),
        (_torch_saved_legacy_pickle, r"weights\.pt is a torch\.save/pickle file.*load_state_dict"),
        (_exported_weights, "is a safetensors file but not a trainer checkpoint"),
        (_truncated, "is truncated or not a checkpoint"),
        (_bit_flipped, "is corrupted: its checksum does not match"),
        (_newer_format, r"newer than this trainer reads.*upgrade trainer"),
    ],
    ids=[
        "missing", "folder", "torch-save", "legacy-pickle", "exported-weights", "truncated",
        "bit-flip", "newer",
    ],
)
def test_an_unusable_checkpoint_path_is_refused_saying_why(
    run_dir: Path, tmp_path: Path, make_path: Callable[[Path], Path], reason: str
) -> None:
    path = make_path(tmp_path)
    with pytest.raises(CheckpointError, match=reason) as info:
        make_trainer(run_dir).fit(ckpt_path=path)
    assert isinstance(info.value, ValueError)


def _as_format_1(path: Path, sha256: str | None = None) -> None:
    """Rewrite a checkpoint as format 1 wrote it: SHA-256 where format 2 has a CRC-32."""
    from safetensors import safe_open

    from trainer.checkpoint import _sha256

    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
        tensors = {key: file.get_tensor(key) for key in file.keys()}
    metadata.pop("crc32", None)
    metadata |= {"format_version": "1", "sha256": sha256 or _sha256(metadata["content"], tensors)}
    save_file(tensors, str(path), metadata=metadata)


def test_format_1_checkpoints_with_a_sha256_still_load_and_are_still_checked(
    run_dir: Path, tmp_path: Path
) -> None:
    trainer = make_trainer(run_dir)
    trainer.fit()
    path = trainer.save_checkpoint(tmp_path / "old.ckpt")
    _as_format_1(path)
    assert load_checkpoint(path)["state"]["global_step"] == trainer.global_step

    _as_format_1(path, sha256="0" * 64)
    with pytest.raises(CheckpointError, match="is corrupted: its checksum does not match"):
        load_checkpoint(path)


def test_a_checkpoint_crafted_to_run_code_is_refused_without_running_it(
    run_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "code-ran"
    folder = run_dir / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    pickled = folder / "last-epoch=9-step=999.ckpt"
    with pickled.open("wb") as file:
        pickle.dump({"model": WritesMarker(marker)}, file)
    torch_saved = folder / "epoch=8-step=998.ckpt"
    torch.save({"model": WritesMarker(marker)}, torch_saved)

    for path in (pickled, torch_saved):
        with pytest.raises(CheckpointError, match=r"is a torch\.save/pickle file"):
            make_trainer(run_dir).fit(ckpt_path=path)
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        make_trainer(run_dir).fit(ckpt_path="last")
    assert not marker.exists(), "loading a checkpoint executed code from it"

    # The files are really dangerous: an unsafe load runs their code.
    torch.load(torch_saved, weights_only=False)["model"].close()
    assert marker.exists()


def test_a_model_that_does_not_fit_the_checkpoint_is_refused_naming_the_parameters(
    run_dir: Path,
) -> None:
    make_trainer(run_dir, checkpoint=True, max_epochs=1).fit()
    wider = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Dropout(0.0), nn.Linear(48, 10))
    with pytest.raises(CheckpointError) as info:
        make_trainer(run_dir, wider).fit(ckpt_path="last")
    message = str(info.value)
    assert "0.weight: checkpoint (32, 64) vs model (48, 64)" in message
    assert "3.weight: checkpoint (10, 32) vs model (10, 48)" in message
    assert "same architecture" in message

    deeper = nn.Sequential(*make_mlp(), nn.ReLU(), nn.Linear(10, 10))
    with pytest.raises(CheckpointError, match=r"missing in checkpoint: 5\.bias, 5\.weight"):
        make_trainer(run_dir, deeper).validate(ckpt_path="last")


# ------------------------------------------------------------------------------------ resume
def fit_with_dropout_and_shuffle(
    run_dir: Path, max_epochs: int, model_seed: int = 0, **fit_kwargs: Any
) -> tuple[Trainer, list[dict[str, float]]]:
    model = make_mlp(seed=model_seed, dropout=0.3)
    trainer = make_trainer(
        run_dir,
        model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
        scheduler=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, step_size=1),
        train_loader=make_loader(shuffle=True),
        max_epochs=max_epochs,
        checkpoint=True,
        seed=7,
    )
    return trainer, trainer.fit(**fit_kwargs)


def test_resume_at_an_epoch_boundary_gives_identical_weights_and_optimizer(
    tmp_path: Path,
) -> None:
    straight, straight_history = fit_with_dropout_and_shuffle(tmp_path / "straight", 4)

    fit_with_dropout_and_shuffle(tmp_path / "resumed", 2)
    resumed, resumed_history = fit_with_dropout_and_shuffle(
        tmp_path / "resumed", 4, model_seed=1, ckpt_path="last"
    )

    assert resumed.epoch == straight.epoch == 4
    assert resumed.global_step == straight.global_step == 20
    assert_equal_states(resumed.model.state_dict(), straight.model.state_dict(), "model")
    assert_equal_states(
        resumed.optimizer.state_dict(), straight.optimizer.state_dict(), "optimizer"
    )
    assert_equal_states(
        resumed.scheduler.state_dict(), straight.scheduler.state_dict(), "scheduler"
    )
    assert resumed_history == straight_history[2:]


def test_resume_without_seed_still_matches_the_straight_run(tmp_path: Path) -> None:
    """The RNG states in the checkpoint, not the seed, carry dropout and shuffling on."""
    torch.manual_seed(3)
    straight, _ = fit_with_dropout_and_shuffle(tmp_path / "straight", 3)
    torch.manual_seed(3)
    fit_with_dropout_and_shuffle(tmp_path / "resumed", 1)
    torch.manual_seed(12345)  # a different process would start from other random states
    resumed, _ = fit_with_dropout_and_shuffle(
        tmp_path / "resumed", 3, model_seed=1, ckpt_path="last"
    )
    assert_equal_states(resumed.model.state_dict(), straight.model.state_dict(), "model")


def test_early_stopping_state_round_trips_through_the_checkpoint(
    trainer_factory: Callable, run_dir: Path
) -> None:
    stopper = EarlyStopping(patience=5)
    trainer_factory(checkpoint=True, max_epochs=3, callbacks=[stopper]).fit()
    saved = load_checkpoint(run_dir / "version_0" / "checkpoints" / "last-epoch=2-step=15.ckpt")
    assert saved["callbacks"]["EarlyStopping"] == stopper.state_dict()
    assert stopper.best_epoch is not None

    restored = EarlyStopping(patience=5)
    trainer_factory(checkpoint=True, max_epochs=3, callbacks=[restored]).fit(ckpt_path="last")
    assert restored.state_dict() == stopper.state_dict()


def test_two_callbacks_of_one_class_keep_separate_states(
    trainer_factory: Callable, run_dir: Path
) -> None:
    on_loss = EarlyStopping(monitor="val/loss", patience=5)
    on_acc = EarlyStopping(monitor="val/acc", mode="max", patience=5)
    trainer_factory(checkpoint=True, callbacks=[on_loss, on_acc]).fit()
    saved = run_dir / "version_0" / "checkpoints" / "last-epoch=1-step=10.ckpt"
    states = load_checkpoint(saved)["callbacks"]
    assert states["EarlyStopping"] == on_loss.state_dict()
    assert states["EarlyStopping_2"] == on_acc.state_dict()

    restored = [EarlyStopping(monitor="val/loss"), EarlyStopping(monitor="val/acc", mode="max")]
    trainer_factory(checkpoint=True, callbacks=restored).fit(ckpt_path="last")
    assert [callback.state_dict() for callback in restored] == [
        on_loss.state_dict(),
        on_acc.state_dict(),
    ]


# ------------------------------------------------------------------------------------ export
def test_exported_weights_load_into_a_fresh_model(run_dir: Path, tmp_path: Path) -> None:
    model = make_mlp(seed=3)
    trainer = make_trainer(run_dir, model)
    trainer.fit()
    path = trainer.export_weights(tmp_path / "model.safetensors")
    fresh = make_mlp(seed=4)
    fresh.load_state_dict(load_file(str(path)))
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------- well-formed but not a run
def _without(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda saved: {name: part for name, part in saved.items() if name != key}


def _state_without(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda saved: saved | {"state": _without(key)(saved["state"])}


@pytest.mark.parametrize(
    ("malform", "reason"),
    [
        (_without("state"), "missing state"),
        (lambda saved: {"model": saved["model"]}, "callbacks; missing optimizers, schedulers"),
        (lambda saved: saved | {"state": [1, 2]}, "state is a list, not a dict"),
        (lambda saved: saved | {"model": "weights"}, "model is a str, not a dict"),
        (_state_without("global_step"), "missing state.global_step"),
        (lambda saved: [saved["model"]], "it is a list, not a dict"),
    ],
    ids=["no-state", "model-only", "state-list", "model-str", "no-global-step", "a-list"],
)
def test_a_checkpoint_with_a_valid_checksum_but_missing_parts_is_refused_naming_the_file(
    run_dir: Path, tmp_path: Path, malform: Callable[[Any], Any], reason: str
) -> None:
    good = make_trainer(run_dir).save_checkpoint(tmp_path / "good.ckpt")
    bad = save_checkpoint(malform(load_checkpoint(good)), tmp_path / "bad.ckpt")
    expected = f"checkpoint {bad} is not a run checkpoint of this trainer: .*{reason}"
    with pytest.raises(NotARunCheckpointError, match=expected):
        make_trainer(run_dir).fit(ckpt_path=bad)
    with pytest.raises(NotARunCheckpointError, match=expected):
        make_trainer(run_dir).validate(ckpt_path=bad)


def test_a_checkpoint_nested_too_deeply_to_read_is_a_checkpoint_error(tmp_path: Path) -> None:
    depth = 100_000
    text = "[" * depth + "]" * depth
    path = tmp_path / "deep.ckpt"
    metadata = {
        "format": "trainer-checkpoint",
        "format_version": str(FORMAT_VERSION),
        "content": text,
        "crc32": checkpoint_module._crc32(text, {}),
    }
    save_file({}, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match=f"checkpoint {path} nests its contents too deeply"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        find_checkpoint("last", tmp_path)
