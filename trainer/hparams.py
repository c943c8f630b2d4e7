"""A run's hyperparameters: what they are by default, and their flat form for dashboards.

`Trainer(hparams=...)` takes any mapping (the command line passes the resolved config). Without
one, the trainer records its own plain-valued options and the class names of its objects, so
every run has something to compare in TensorBoard's HParams tab. Dashboards want flat names
with scalar values, so nested configs become dotted names (`optimizer.lr`) and lists become text;
people want the nested form, so `to_yaml` writes it as YAML without a YAML library's import.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["default_hparams", "flatten_hparams", "plain_hparams", "to_yaml"]

# Constructor options that are plumbing, not choices that change the result.
_NOT_HYPERPARAMETERS = frozenset(
    {"self", "model", "train_loader", "val_loader", "callbacks", "run_dir", "metrics",
     "progress_bar", "logger", "checkpoint", "hparams", "device", "log_every_n_steps"}
)  # fmt: skip
_OBJECTS = ("optimizer", "loss_fn", "scheduler")
# Strings YAML reads as they are: a letter or `_` first, then word characters and a few marks
# that start nothing in YAML, no colon, no `#`, no space at either end.
_PLAIN_STRING = re.compile(r"[^\W\d][\w.+/()@-]*(?: [\w.+/()@-]+)*")
# Words YAML 1.1 (PyYAML, OmegaConf) reads as booleans or null.
_YAML_WORDS = frozenset({"y", "yes", "n", "no", "true", "false", "on", "off", "null"})


def default_hparams(options: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters of a Trainer built with `options` (its constructor's arguments).

    Keeps plain values (numbers, strings, booleans, None), names the model, optimizer, loss
    and scheduler by class, and adds the optimizer's `lr` and the loader's `batch_size`,
    the two numbers people compare runs by first.
    """
    hparams: dict[str, Any] = {"model": type(options["model"]).__name__}
    for name, value in options.items():
        if name in _NOT_HYPERPARAMETERS:
            continue
        if name in _OBJECTS:
            if value is not None:
                hparams[name] = _name_of(value)
        elif _is_plain(value):
            hparams[name] = value
    lr = getattr(options.get("optimizer"), "defaults", {}).get("lr")
    if isinstance(lr, (int, float)):
        hparams["lr"] = lr
    batch_size = getattr(options.get("train_loader"), "batch_size", None)
    if isinstance(batch_size, int):
        hparams["batch_size"] = batch_size
    return hparams


def plain_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """A copy holding only mappings, lists and scalars, so YAML and JSON can write it."""
    return {str(name): _plain(value) for name, value in hparams.items()}


def flatten_hparams(hparams: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted names to scalars: `{"optimizer": {"lr": 0.1}}` becomes `{"optimizer.lr": 0.1}`.

    Lists of mappings are numbered (`callbacks.0.patience`); other lists and values become
    their text, and None becomes "None", because the HParams tab holds numbers, strings and
    booleans only.
    """
    flat: dict[str, Any] = {}
    for name, value in hparams.items():
        key = f"{prefix}{name}"
        if isinstance(value, (list, tuple)) and any(isinstance(v, Mapping) for v in value):
            value = dict(enumerate(value))
        if isinstance(value, Mapping):
            flat |= flatten_hparams(value, prefix=f"{key}.")
        elif isinstance(value, (bool, int, float, str)):
            flat[key] = value
        else:
            flat[key] = str(_plain(value))
    return flat


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return plain_hparams(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value if _is_plain(value) else _name_of(value)


def _name_of(value: Any) -> str:
    """A readable name for an object: a factory's target, a function's or a class's name."""
    if isinstance(value, functools.partial):
        return _name_of(value.func)
    if isinstance(value, type) or (callable(value) and hasattr(value, "__qualname__")):
        return value.__qualname__
    return type(value).__name__


def to_yaml(hparams: Mapping[str, Any]) -> str:
    """The hyperparameters as block-style YAML, for people to read (the config text).

    Objects become their names (`plain_hparams`). A string is quoted, JSON style, only where
    YAML would read it as something else (`"yes"`, `"1e-3"`, `"a: b"`, `""`), so a YAML parser
    gives back the plain hyperparameters.
    """
    return "\n".join(_yaml_lines(plain_hparams(hparams), "")) + "\n"


def _yaml_lines(value: Any, indent: str) -> list[str]:
    """`value` (a mapping, a list or a scalar) as lines of YAML at `indent`."""
    if isinstance(value, Mapping) and value:
        lines = []
        for name, item in value.items():
            key = f"{indent}{_yaml_scalar(str(name))}:"
            if isinstance(item, (Mapping, list)) and item:
                lines += [key, *_yaml_lines(item, indent + "  ")]
            else:
                lines.append(f"{key} {_yaml_scalar(item)}")
        return lines
    if isinstance(value, list) and value:
        lines = []
        for item in value:
            if isinstance(item, (Mapping, list)) and item:
                first, *rest = _yaml_lines(item, indent + "  ")
                lines += [f"{indent}- {first.lstrip()}", *rest]
            else:
                lines.append(f"{indent}- {_yaml_scalar(item)}")
        return lines
    return [f"{indent}{_yaml_scalar(value)}"]


def _yaml_scalar(value: Any) -> str:
    """One value as YAML reads it back: null, true/false, a number, a string or `{}`/`[]`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
        text = repr(value)
        # YAML 1.1 reads `1e-05` as text: its floats need a dot, as in `1.0e-05`.
        return text if "." in text else text.replace("e", ".0e", 1)
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list):
        return "[]"
    if _PLAIN_STRING.fullmatch(value) and value.lower() not in _YAML_WORDS:
        return value
    return json.dumps(value, ensure_ascii=False)
