"""Checkpoint files survive damage and never run code: corruption, truncation, crafted pickles,
failed writes, and the checks a resume makes before trusting a file."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import make_loader, make_mlp, make_trainer
from safetensors.torch import save_file

from trainer.checkpoint import (
    CheckpointError,
    export_weights,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


def _two_epoch_run(run_dir: Path) -> list[Path]:
    """Train 3 epochs with the default checkpoint; return its files, newest first."""
    make_trainer(run_dir, checkpoint=True, max_epochs=3).fit()
    files = sorted((run_dir / "checkpoints").glob("last-*.ckpt"), key=lambda p: p.stat().st_mtime)
    assert [p.name for p in files] == ["last-epoch=1-step=10.ckpt", "last-epoch=2-step=15.ckpt"]
    return files[::-1]


@pytest.mark.parametrize("damage", ["truncate-0", "truncate-50", "truncate-99", "bit-flip"])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one(
    run_dir: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    newest, previous = _two_epoch_run(run_dir)
    data = newest.read_bytes()
    if damage == "bit-flip":
        position = len(data) - 7  # inside the tensor data, past the header
        data = data[:position] + bytes([data[position] ^ 0x10]) + data[position + 1 :]
    else:
        data = data[: len(data) * int(damage.split("-")[1]) // 100]
    newest.write_bytes(data)

    path, checkpoint = find_checkpoint("last", run_dir / "checkpoints")
    assert path == previous
    assert checkpoint["state"]["global_step"] == 10
    assert f"Skipping checkpoint {newest}" in capsys.readouterr().err

    resumed = make_trainer(run_dir, max_epochs=3)
    resumed.fit(ckpt_path="last")
    assert resumed.global_step == 15


def test_no_valid_checkpoint_is_an_error_listing_every_file_and_why(run_dir: Path) -> None:
    for path in _two_epoch_run(run_dir):
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError) as info:
        make_trainer(run_dir).fit(ckpt_path="last")
    message = str(info.value)
    assert "no valid checkpoint" in message
    assert "last-epoch=2-step=15.ckpt" in message and "last-epoch=1-step=10.ckpt" in message
    assert "truncated" in message


def test_a_checkpoint_crafted_to_run_code_is_refused_without_running_it(
    run_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "code-ran"

    class Exploit:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True)
    crafted = folder / "last-epoch=9-step=999.ckpt"
    with crafted.open("wb") as file:
        pickle.dump({"model": Exploit()}, file)
    torch.save({"model": Exploit()}, folder / "epoch=8-step=998.ckpt")

    with pytest.raises(CheckpointError):
        load_checkpoint(crafted)
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        make_trainer(run_dir).fit(ckpt_path="last")
    assert not marker.exists(), "loading a checkpoint executed code from it"


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


def test_objects_that_are_not_plain_data_cannot_be_saved(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"'callbacks/Mine/when' is a set"):
        save_checkpoint({"callbacks": {"Mine": {"when": {1, 2}}}}, tmp_path / "c.ckpt")
    assert not list(tmp_path.iterdir())


def test_a_newer_format_is_refused_with_an_upgrade_hint(tmp_path: Path) -> None:
    path = tmp_path / "future.ckpt"
    save_file(
        {"x": torch.zeros(1)},
        str(path),
        metadata={"format": "trainer-checkpoint", "format_version": "99", "content": "{}"},
    )
    with pytest.raises(CheckpointError, match=r"newer than this trainer reads.*upgrade"):
        load_checkpoint(path)


def test_missing_paths_and_folders_are_clear_errors(run_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(run_dir)
    with pytest.raises(CheckpointError, match="does not exist"):
        trainer.fit(ckpt_path=tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="is a folder"):
        trainer.fit(ckpt_path=tmp_path)
    exported = export_weights(make_mlp(), tmp_path / "weights.safetensors")
    with pytest.raises(CheckpointError, match="not a trainer checkpoint"):
        trainer.fit(ckpt_path=exported)


def test_last_with_no_checkpoint_starts_fresh_with_a_notice(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = make_trainer(run_dir)
    trainer.fit(ckpt_path="last")
    assert trainer.global_step == 10
    assert "starting from scratch" in capsys.readouterr().out


def test_a_model_of_other_shapes_is_refused_naming_the_parameters(run_dir: Path) -> None:
    _two_epoch_run(run_dir)
    wider = torch.nn.Sequential(
        torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Dropout(0.0), torch.nn.Linear(48, 10)
    )
    with pytest.raises(CheckpointError) as info:
        make_trainer(run_dir, wider).fit(ckpt_path="last")
    assert "0.weight: checkpoint (32, 64) vs model (48, 64)" in str(info.value)
    assert "3.weight" in str(info.value)


def test_resuming_mid_epoch_with_other_batches_is_refused(run_dir: Path) -> None:
    from trainer.callbacks import ModelCheckpoint

    make_trainer(run_dir, max_steps=3, callbacks=[ModelCheckpoint(every_n_steps=3)]).fit()
    changed = make_trainer(run_dir, train_loader=make_loader(batch_size=4))
    with pytest.raises(ValueError, match=r"stopped mid-epoch.*batch_size 8 -> 4"):
        changed.fit(ckpt_path="last")


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


def test_rotation_keeps_the_two_newest_last_checkpoints_and_nothing_else_is_touched(
    run_dir: Path,
) -> None:
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    (run_dir / "last-epoch=0-step=1.ckpt").write_text("outside the folder")
    make_trainer(run_dir, checkpoint=True, max_epochs=4).fit()
    assert sorted(p.name for p in folder.iterdir()) == [
        "last-epoch=2-step=15.ckpt",
        "last-epoch=3-step=20.ckpt",
        "notes.txt",
    ]
    assert (run_dir / "last-epoch=0-step=1.ckpt").exists()


def test_exported_weights_load_into_a_fresh_model(run_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model = make_mlp(seed=3)
    trainer = make_trainer(run_dir, model)
    trainer.fit()
    path = trainer.export_weights(tmp_path / "model.safetensors")
    fresh = make_mlp(seed=4)
    fresh.load_state_dict(load_file(str(path)))
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
