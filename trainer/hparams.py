"""A run's hyperparameters: what they are by default, and their flat form for dashboards.

`Trainer(hparams=...)` takes any mapping (the command line passes the resolved config). Without
one, the trainer records its own plain-valued options and the class names of its objects, so
every run has something to compare in TensorBoard's HParams tab. Dashboards want flat names
with scalar values and few of them, so `dashboard_hparams` picks the values that tell runs apart
(the optimizer and its lr, batch size, model, epochs, seed); people want the whole nested form,
so `to_yaml` writes it as YAML for the config text.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping
from datetime import timedelta
from typing import Any

__all__ = ["dashboard_hparams", "default_hparams", "flatten_hparams", "plain_hparams", "to_yaml"]

# Constructor options that are plumbing, not choices that change the result.
_NOT_HYPERPARAMETERS = frozenset(
    {"self", "model", "train_loader", "val_loader", "callbacks", "run_dir", "metrics",
     "progress_bar", "logger", "checkpoint", "hparams", "device", "log_every_n_steps"}
)  # fmt: skip
_OBJECTS = ("optimizer", "loss_fn", "scheduler")
# Where the values that tell runs apart sit: in `default_hparams`' flat form, and in a config
# (`class_path` beside its arguments, or under `init_args`).
_KEY_HPARAMS = {
    name: [(name,), *((section, name) for section in sections),
           *((section, "init_args", name) for section in sections)]
    for name, sections in {
        "optimizer": (), "lr": ("optimizer",), "batch_size": ("data", "trainer"),
        "model": (), "max_epochs": ("trainer",), "seed": ("trainer",),
    }.items()
}  # fmt: skip
_CLASSES = frozenset({"optimizer", "model"})  # shown by class name: "AdamW", not its path
# A config's sections: their values reach the HParams tab only through `_KEY_HPARAMS`.
_SECTIONS = frozenset(
    {"model", "data", "optimizer", "scheduler", "loss_fn", "metrics", "callbacks", "trainer"}
)


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
        elif isinstance(value, timedelta):  # max_time: loggable as people write it
            hparams[name] = str(value)
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

    Objects become their names (`plain_hparams`); PyYAML quotes what it must, so a YAML parser
    gives back the plain hyperparameters. Characters beyond ASCII are written as escapes: with
    them written as they are, PyYAML reads U+0085 inside a quoted string back as a space.
    """
    import yaml  # the config's parser brings it; only a run that logs its config loads it

    return yaml.safe_dump(plain_hparams(hparams), sort_keys=False, default_flow_style=False)


def dashboard_hparams(
    hparams: Mapping[str, Any], trainer_options: Collection[str] = ()
) -> dict[str, bool | int | float | str]:
    """The values that tell runs apart, flat, for TensorBoard's HParams tab.

    From a config (`trainer fit`) or the defaults: the optimizer and its `lr`, the
    `batch_size`, the model, `max_epochs` and the `seed`, where the hyperparameters hold them.
    Entries of your own `Trainer(hparams=...)` that are neither config sections nor Trainer
    options (`trainer_options`) are added, flattened. Callbacks' settings stay in the config
    text, out of the comparison.
    """
    chosen: dict[str, Any] = {}
    for name, paths in _KEY_HPARAMS.items():
        for path in paths:
            value = _lookup(hparams, path)
            if isinstance(value, Mapping):
                value = value.get("class_path")
            if isinstance(value, (bool, int, float, str)):
                chosen[name] = value.rsplit(".", 1)[-1] if name in _CLASSES else value
                break
    own = {
        name: value
        for name, value in hparams.items()
        if name not in _SECTIONS and name not in chosen and name not in trainer_options
    }
    return chosen | flatten_hparams(own)


def _lookup(hparams: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = hparams
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value
