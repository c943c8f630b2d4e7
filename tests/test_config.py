"""Config files, overrides, key checking and object building of `trainer.config`."""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from trainer.cli import overrides_to_dotlist
from trainer.config import ConfigError, build_job, load_config
from trainer.data import DigitsData
from trainer.metrics import accuracy

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits_mlp.yaml"

SMALL_CONFIG = """
seed: 0
model:
  class_path: trainer.models.MLP
  hidden: [16]
data:
  class_path: trainer.data.DigitsData
  batch_size: 32
trainer:
  max_epochs: 2
"""


def write(folder: Path, text: str, name: str = "config.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def load(*overrides: str, path: Path = DEFAULT_CONFIG) -> dict:
    return load_config([path], overrides_to_dotlist(list(overrides)))


def error_of(config: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        build_job(config)
    return str(caught.value)


def test_default_config_builds_the_documented_objects() -> None:
    job = build_job(load())
    assert isinstance(job.model, nn.Module)
    assert isinstance(job.data, DigitsData)
    assert job.trainer_kwargs["max_epochs"] == 30
    assert job.trainer_kwargs["seed"] == 0
    assert isinstance(job.trainer_kwargs["loss_fn"], nn.CrossEntropyLoss)
    assert job.trainer_kwargs["metrics"] == {"acc": accuracy}
    callbacks = job.trainer_kwargs["callbacks"]
    assert [type(callback).__name__ for callback in callbacks] == [
        "EarlyStopping", "ModelCheckpoint"
    ]  # the checkpoint keeps the best epoch, so `--ckpt_path best` works on the default job
    assert (callbacks[1].monitor.name, callbacks[1].monitor.mode) == ("val/acc", "max")


def test_later_files_merge_over_earlier_ones(tmp_path: Path) -> None:
    base = write(tmp_path, SMALL_CONFIG, "base.yaml")
    experiment = write(
        tmp_path, "model:\n  hidden: [32, 8]\ntrainer:\n  max_epochs: 5\n", "exp.yaml"
    )
    config = load_config([base, experiment])
    assert config["model"] == {"class_path": "trainer.models.MLP", "hidden": [32, 8]}
    assert config["trainer"]["max_epochs"] == 5
    assert config["data"]["batch_size"] == 32


def test_overrides_in_every_syntax_and_interpolation_sees_them() -> None:
    config = load("--trainer.max_epochs", "3", "--optimizer.lr=1e-3", "model.hidden=[256,128]")
    assert config["trainer"]["max_epochs"] == 3
    assert config["scheduler"]["T_max"] == 3  # ${trainer.max_epochs}
    assert config["optimizer"]["lr"] == pytest.approx(0.001)
    assert isinstance(config["optimizer"]["lr"], float)
    assert config["model"]["hidden"] == [256, 128]


def test_override_can_add_a_key_the_file_does_not_set_and_drop_a_section() -> None:
    job = build_job(load("--trainer.gradient_clip_val", "1.0", "--scheduler", "null"))
    assert job.trainer_kwargs["gradient_clip_val"] == 1.0
    assert "scheduler" not in job.trainer_kwargs


def test_optimizer_and_scheduler_become_callables_the_trainer_completes() -> None:
    job = build_job(load("--trainer.max_epochs", "4"))
    make_optimizer, make_scheduler = (job.trainer_kwargs[k] for k in ("optimizer", "scheduler"))
    assert isinstance(make_optimizer, functools.partial)
    optimizer = make_optimizer(job.model.parameters())
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["lr"] == pytest.approx(0.002)
    scheduler = make_scheduler(optimizer)
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert scheduler.T_max == 4


def test_nested_entries_in_mappings_and_lists_are_built(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        model:
          class_path: torch.nn.ModuleDict
          modules:
            body:
              class_path: torch.nn.ModuleList
              modules:
                - {class_path: torch.nn.Linear, in_features: 64, out_features: 8}
                - {class_path: torch.nn.ReLU}
        data: {class_path: trainer.data.DigitsData}
        loss_fn:
          class_path: torch.nn.functional.cross_entropy
          label_smoothing: 0.1
        """,
    )
    job = build_job(load_config([path]))
    linear, relu = job.model["body"]
    assert isinstance(linear, nn.Linear) and linear.out_features == 8
    assert isinstance(relu, nn.ReLU)
    loss_fn = job.trainer_kwargs["loss_fn"]
    assert isinstance(loss_fn, functools.partial)
    assert loss_fn.func is torch.nn.functional.cross_entropy
    assert loss_fn.keywords == {"label_smoothing": 0.1}


def test_seed_makes_model_initialisation_repeatable(tmp_path: Path) -> None:
    path = write(tmp_path, SMALL_CONFIG)
    first, second = (build_job(load(path=path)).model for _ in range(2))
    other = build_job(load("--seed", "1", path=path)).model
    assert torch.equal(first[0].weight, second[0].weight)
    assert not torch.equal(first[0].weight, other[0].weight)


def test_unknown_top_level_key_names_the_nearest_section() -> None:
    message = error_of(load("--modle.hidden", "[8]"))
    assert "unknown key 'modle'" in message
    assert "did you mean 'model'" in message.lower()
    assert "trainer" in message  # the valid keys are listed


def test_option_given_without_its_section_names_the_full_key_and_the_override() -> None:
    message = error_of(load("--epochs", "3"))
    assert message.startswith("unknown key 'epochs' (did you mean 'trainer.max_epochs'?)")
    assert "write --trainer.max_epochs 3." in message
    assert "write --optimizer.lr 0.01." in error_of(load("--lr", "0.01"))
    assert "write --callbacks.0.patience 5." in error_of(load("--patience", "5"))


def test_misspelt_section_is_matched_against_sections_only() -> None:
    message = error_of(load("--modle.hidden", "[8]"))
    assert "(did you mean 'model'?); rename it to 'model'." in message


def test_a_word_where_a_number_belongs_names_the_key_before_anything_is_built() -> None:
    message = error_of(load("--optimizer.lr", "abc"))
    assert message == (
        "optimizer.lr: expected a number, got 'abc'; write it as a number, "
        "e.g. --optimizer.lr 0.001."
    )
    message = error_of(load("--trainer.max_epochs", "abc"))  # before T_max, its copy
    assert message.startswith("trainer.max_epochs: expected a number, got 'abc'")
    message = error_of(load("--trainer.progress_bar", "maybe"))
    assert "trainer.progress_bar: expected true or false, got 'maybe'" in message


def test_unknown_trainer_key_names_the_nearest_trainer_keyword() -> None:
    message = error_of(load("--trainer.max_epoch", "3"))
    assert "unknown key 'trainer.max_epoch'" in message
    assert "did you mean 'trainer.max_epochs'" in message.lower()
    assert "trainer.gradient_clip_val" in message


def test_trainer_keyword_filled_by_another_section_says_where_it_belongs() -> None:
    message = error_of(load("--trainer.seed", "1"))
    assert "'trainer.seed' is set by the top-level 'seed' section" in message


def test_unknown_model_argument_is_checked_against_the_signature() -> None:
    message = error_of(load("--model.hiden", "[8]"))
    assert "unknown key 'model.hiden'" in message
    assert "'model.hidden'" in message


def test_unknown_callback_argument_names_its_list_position() -> None:
    message = error_of(load("--callbacks.0.patiense", "3"))
    assert "unknown key 'callbacks.0.patiense'" in message
    assert "'callbacks.0.patience'" in message


def test_misspelt_class_path_suggests_names_in_that_module() -> None:
    message = error_of(load("--model.class_path", "trainer.models.MPL"))
    assert "model.class_path" in message
    assert "'trainer.models' has no attribute 'MPL'" in message
    assert "'trainer.models.MLP'" in message


def test_class_path_of_a_missing_module_is_an_error() -> None:
    message = error_of(load("--optimizer.class_path", "torhc.optim.AdamW"))
    assert "optimizer.class_path" in message and "'torhc'" in message
    assert "'torch'" in message


def test_missing_required_argument_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, SMALL_CONFIG + "loss_fn: {class_path: torch.nn.Linear}\n")
    message = error_of(load_config([path]))
    assert "loss_fn" in message and "'in_features'" in message and "'out_features'" in message


def test_scheduler_missing_argument_is_named_before_the_trainer_builds_it() -> None:
    config = load()
    del config["scheduler"]["T_max"]
    message = error_of(config)
    assert message.startswith("scheduler:") and "'T_max'" in message


def test_value_left_as_missing_names_the_key_and_the_override() -> None:
    with pytest.raises(ConfigError, match=r"scheduler.T_max.*--scheduler.T_max VALUE"):
        load("--scheduler.T_max", "???")


def test_error_raised_by_a_constructor_is_prefixed_with_its_key() -> None:
    assert error_of(load("--data.val_fraction", "0.9")).startswith("data: val_fraction")


def test_bad_optimizer_value_is_reported_under_optimizer_when_built() -> None:
    job = build_job(load("--optimizer.lr", "-1"))
    with pytest.raises(ConfigError, match=r"^optimizer: Invalid learning rate"):
        job.trainer_kwargs["optimizer"](job.model.parameters())


def test_missing_model_section_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "data: {class_path: trainer.data.DigitsData}\n")
    assert "no 'model' section" in error_of(load_config([path]))


def test_missing_file_and_invalid_yaml_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no file"):
        load_config([tmp_path / "absent.yaml"])
    broken = write(tmp_path, "model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config([broken])


def test_override_syntax_errors_say_how_to_write_one() -> None:
    with pytest.raises(ConfigError, match="has no value"):
        overrides_to_dotlist(["--trainer.max_epochs"])
    with pytest.raises(ConfigError, match="overrides look like"):
        overrides_to_dotlist(["max_epochs"])
    with pytest.raises(ConfigError, match="callbacks"):
        load("--callbacks.3.patience", "1")


def test_interpolation_to_a_missing_key_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"scheduler\.T_max"):
        load("--scheduler.T_max", "${trainer.max_epoch}")
