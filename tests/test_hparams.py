"""`trainer.hparams`: the config text that TensorBoard shows, read back by YAML parsers, and the
few values the HParams tab compares runs by."""

from __future__ import annotations

import math

import pytest
import yaml
from omegaconf import OmegaConf

from trainer.hparams import dashboard_hparams, plain_hparams, to_yaml

# Strings a careless writer would let YAML read as booleans, null, numbers, dates, keys,
# comments, anchors, tags, block scalars or flow collections, and characters YAML treats as
# line breaks, a byte-order mark or non-printable.
AWKWARD_STRINGS = [
    "yes", "No", "on", "OFF", "y", "n", "true", "False", "null", "None", "~", "", " lead",
    "trail ", "a: b", "a #c", "#x", "-x", "- x", "1", "1.5", "1e3", "1_000", "0x1F", "0o17",
    ".inf", "-.inf", ".nan", "nan", "inf", "2024-01-01", "12:30", "a\nb", "tab\there", "it's",
    'say "hi"', "x:", "[1]", "{a}", "*a", "&a", "!t", "%p", "@x", "`x", "|", ">", "?", "=",
    "<<", ",", "ünïcode", "normal text here", "torch.optim.AdamW", "a/b.c-d_e+f(g)",
    "next\x85line", "line\u2028separator", "delete\x7f", "\ufeffbom", "para\u2029graph",
]  # fmt: skip

HPARAMS = {
    "optimizer": {
        "class_path": "torch.optim.AdamW",
        "init_args": {"lr": 0.002, "betas": (0.9, 0.999), "eps": 1e-08, "weight_decay": 0.0},
    },
    "model": {"hidden": [256, 128]},
    "callbacks": [{"class_path": "EarlyStopping", "init_args": {"patience": 5}}, {"a": [1, [2]]}],
    "strings": AWKWARD_STRINGS,
    "numbers": [0, -1, 10**20, 0.1, -2.5e-7, 1e300, 3.0, math.inf, -math.inf],
    "none": None,
    "flags": {"on": True, "off": False},
    "empty": {"mapping": {}, "list": []},
    "1": "a key that looks like a number",
    "key: with colon": 2,
    "loss_fn": math.sqrt,
}


def test_pyyaml_reads_back_the_plain_hparams() -> None:
    assert yaml.safe_load(to_yaml(HPARAMS)) == plain_hparams(HPARAMS)


def test_omegaconf_reads_back_the_config_text_of_the_default_job() -> None:
    """OmegaConf also reads `1e3` as a number (YAML 1.1 needs a dot); other text is the same."""
    config = {key: value for key, value in HPARAMS.items() if key != "strings"}
    text = to_yaml(config)
    assert OmegaConf.to_container(OmegaConf.create(text)) == plain_hparams(config)


@pytest.mark.parametrize("text", ["\x85", "\u2028", "\x7f", "\ufeff", "a\x85b\u2028c\x7fd\ufeff"])
def test_line_breaks_delete_and_byte_order_marks_read_back(text: str) -> None:
    assert yaml.safe_load(to_yaml({"note": text, text: 1})) == {"note": text, text: 1}


def test_a_nan_reads_back_as_nan() -> None:
    assert math.isnan(yaml.safe_load(to_yaml({"x": math.nan}))["x"])


def test_nested_hparams_read_as_indented_blocks_in_their_order() -> None:
    text = to_yaml({"optimizer": {"class_path": "torch.optim.AdamW", "lr": 0.1},
                    "hidden": [256, 128], "note": "yes"})  # fmt: skip
    assert text == (
        "optimizer:\n"
        "  class_path: torch.optim.AdamW\n"
        "  lr: 0.1\n"
        "hidden:\n"
        "- 256\n"
        "- 128\n"
        "note: 'yes'\n"
    )


CONFIG = {
    "seed": 0,
    "model": {"class_path": "trainer.models.MLP", "hidden": [256, 128], "dropout": 0.2},
    "data": {"class_path": "trainer.data.DigitsData", "batch_size": 64},
    "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.002}},
    "callbacks": [{"class_path": "trainer.callbacks.EarlyStopping", "patience": 10}],
    "trainer": {"max_epochs": 30, "run_dir": "runs/digits_mlp"},
}


def test_a_config_is_compared_by_optimizer_lr_batch_size_model_epochs_and_seed() -> None:
    assert dashboard_hparams(CONFIG) == {
        "optimizer": "AdamW", "lr": 0.002, "batch_size": 64, "model": "MLP",
        "max_epochs": 30, "seed": 0,
    }  # fmt: skip


def test_the_default_hparams_give_the_same_names_and_your_own_values_are_kept() -> None:
    defaults = {"model": "MLP", "optimizer": "SGD", "lr": 0.1, "batch_size": 32,
                "max_epochs": 5, "precision": "32", "seed": None, "note": "baseline",
                "arch": {"width": 128}}  # fmt: skip
    assert dashboard_hparams(defaults, trainer_options={"precision", "seed", "max_epochs"}) == {
        "model": "MLP", "optimizer": "SGD", "lr": 0.1, "batch_size": 32, "max_epochs": 5,
        "note": "baseline", "arch.width": 128,
    }  # fmt: skip
