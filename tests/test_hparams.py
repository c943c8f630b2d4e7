"""`trainer.hparams.to_yaml`: the config text that TensorBoard shows, read back by YAML parsers."""

from __future__ import annotations

import math

import pytest
import yaml
from omegaconf import OmegaConf

from trainer.hparams import plain_hparams, to_yaml

# Strings a careless writer would let YAML read as booleans, null, numbers, dates, keys,
# comments, anchors, tags, block scalars or flow collections.
AWKWARD_STRINGS = [
    "yes", "No", "on", "OFF", "y", "n", "true", "False", "null", "None", "~", "", " lead",
    "trail ", "a: b", "a #c", "#x", "-x", "- x", "1", "1.5", "1e3", "1_000", "0x1F", "0o17",
    ".inf", "-.inf", ".nan", "nan", "inf", "2024-01-01", "12:30", "a\nb", "tab\there", "it's",
    'say "hi"', "x:", "[1]", "{a}", "*a", "&a", "!t", "%p", "@x", "`x", "|", ">", "?", "=",
    "<<", ",", "ünïcode", "normal text here", "torch.optim.AdamW", "a/b.c-d_e+f(g)",
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


@pytest.mark.parametrize(
    "load",
    [yaml.safe_load, lambda text: OmegaConf.to_container(OmegaConf.create(text))],
    ids=["pyyaml", "omegaconf"],
)
def test_yaml_parsers_read_back_the_plain_hparams(load: object) -> None:
    assert load(to_yaml(HPARAMS)) == plain_hparams(HPARAMS)  # type: ignore[operator]


def test_a_nan_reads_back_as_nan() -> None:
    assert math.isnan(yaml.safe_load(to_yaml({"x": math.nan}))["x"])


def test_nested_hparams_read_as_indented_blocks_and_plain_strings_stay_unquoted() -> None:
    text = to_yaml({"optimizer": {"class_path": "torch.optim.AdamW", "lr": 0.1},
                    "hidden": [256, 128], "note": "yes"})  # fmt: skip
    assert text == (
        "optimizer:\n"
        "  class_path: torch.optim.AdamW\n"
        "  lr: 0.1\n"
        "hidden:\n"
        "  - 256\n"
        "  - 128\n"
        'note: "yes"\n'
    )


def test_small_floats_keep_a_dot_so_yaml_1_1_reads_them_as_numbers() -> None:
    assert to_yaml({"eps": 1e-08, "big": 1e300}) == "eps: 1.0e-08\nbig: 1.0e+300\n"
