"""YAML configs for the command line: merge files and overrides, check every key, build objects.

A config names each object by import path (`class_path`) with its arguments as sibling keys.
OmegaConf merges the files and `key=value` overrides and resolves `${...}` interpolation; this
module checks every key against the signature it will be passed to before anything is built,
so a misspelt key fails at once, naming the nearest valid keys, not deep inside a constructor.
OmegaConf is imported inside functions, so `import trainer` stays fast.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from inspect import Parameter
from pathlib import Path
from typing import Any, Literal

__all__ = ["ConfigError", "Job", "build_job", "config_to_yaml", "import_path", "load_config"]

SECTIONS = (
    "seed", "model", "data", "loss_fn", "optimizer", "scheduler", "metrics", "callbacks", "trainer"
)  # fmt: skip
# Trainer keywords that other sections fill, and the section a user should set instead.
_FILLED_BY = {name: name for name in SECTIONS if name not in ("data", "trainer")} | {
    "train_loader": "data",
    "val_loader": "data",
}
# How an entry's target becomes an object: "call" always calls it (model, data); "partial"
# defers the call because the Trainer supplies the first argument (optimizer -> params,
# scheduler -> optimizer); "auto" instantiates classes and keeps functions as callables.
How = Literal["call", "partial", "auto"]
_OBJECT_SECTIONS: tuple[tuple[str, How], ...] = (
    ("model", "call"), ("data", "call"), ("loss_fn", "auto"),
    ("optimizer", "partial"), ("scheduler", "partial"),
)  # fmt: skip


class ConfigError(ValueError):
    """A mistake in a config or an override; the CLI prints it as `error: ...` and exits 2."""


@dataclass
class Job:
    """Everything a config describes, built and ready to hand to the Trainer."""

    trainer_class: Callable[..., Any]
    model: Any
    data: Any
    trainer_kwargs: dict[str, Any]
    config: Mapping[str, Any]  # the resolved config it was built from, saved with the run

    def make_trainer(self, **loaders: Any) -> Any:
        """Construct the Trainer; its argument checks are reported like config mistakes."""
        try:
            return self.trainer_class(self.model, **loaders, **self.trainer_kwargs)
        except ConfigError:
            raise
        except (ValueError, TypeError) as error:
            raise ConfigError(f"trainer: {error}") from error


class _ConfiguredFactory(functools.partial):
    """A partial whose bad arguments are reported under the config key that set them.

    The optimizer and scheduler are built inside the Trainer; without this, a torch error
    such as "Invalid learning rate" would not say which part of the config caused it.
    """

    key: str

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{self.key}: {error}") from error


def load_config(paths: Sequence[str | Path], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Merge config files in order, apply `key=value` overrides, then resolve interpolation.

    Later files and overrides win, so a base config can be specialised per experiment, and
    `${trainer.max_epochs}` sees the overridden value.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    try:
        config = OmegaConf.merge(OmegaConf.create(), *(_read_file(Path(path)) for path in paths))
    except OmegaConfBaseException as error:
        raise ConfigError(f"--config: {_first_line(error)}") from error
    for override in overrides:
        try:
            config.merge_with_dotlist([override])
        except Exception as error:  # OmegaConf and PyYAML errors, whose types vary
            raise ConfigError(f"override {override!r}: {_first_line(error)}") from error
    try:
        resolved = OmegaConf.to_container(config, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        key = error.full_key
        raise ConfigError(f"{key}: the config has no value (???); pass --{key} VALUE.") from error
    except OmegaConfBaseException as error:
        raise ConfigError(_first_line(error)) from error
    return resolved  # type: ignore[return-value]  # a DictConfig resolves to a dict


def _read_file(path: Path) -> Any:
    from omegaconf import DictConfig, OmegaConf

    if not path.is_file():
        raise ConfigError(f"--config: no file {str(path)!r}; check the path.")
    try:
        config = OmegaConf.load(path)
    except Exception as error:  # PyYAML's parser errors carry the line and column
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(config, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of sections ({SECTIONS}).")
    return config


def _first_line(error: BaseException) -> str:
    """OmegaConf puts the key on later lines; keep the message and prefix the key once."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    key = getattr(error, "full_key", None)
    return f"{key}: {line}" if key else line


def config_to_yaml(config: Mapping[str, Any]) -> str:
    """The resolved config as YAML, for `--print_config` and for saving with a run."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(dict(config)))


def import_path(path: Any, key: str) -> Any:
    """Import `package.module.Name`; a failure names the config key and close spellings."""
    if not isinstance(path, str) or not all(path.split(".")):
        raise ConfigError(f"{key}: expected an import path like 'torch.optim.AdamW'; got {path!r}.")
    parts = path.split(".")
    target, depth = _import_longest_module(parts, key)
    owner = ".".join(parts[:depth])
    for name in parts[depth:]:
        if not hasattr(target, name):
            submodules = pkgutil.iter_modules(getattr(target, "__path__", []))
            names = dict.fromkeys([*dir(target), *(module.name for module in submodules)])
            close = _close(name, list(names), owner)
            raise ConfigError(
                f"{key}: cannot import {path!r}: {owner!r} has no attribute {name!r}{close}."
            )
        target, owner = getattr(target, name), f"{owner}.{name}"
    return target


def _import_longest_module(parts: list[str], key: str) -> tuple[Any, int]:
    for depth in range(len(parts), 0, -1):
        name = ".".join(parts[:depth])
        try:
            return importlib.import_module(name), depth
        except ModuleNotFoundError as error:  # a missing dependency inside is not a typo
            if error.name is None or not f"{name}.".startswith(f"{error.name}."):
                raise ConfigError(f"{key}: importing {name!r} failed: {error}") from error
    close = _close(parts[0], [module.name for module in pkgutil.iter_modules()])
    raise ConfigError(f"{key}: cannot import {'.'.join(parts)!r}: no module {parts[0]!r}{close}.")


def _close(name: str, candidates: Sequence[str], prefix: str = "") -> str:
    matches = difflib.get_close_matches(name, candidates, n=3)
    if not matches:
        return ""
    return " (did you mean " + " or ".join(repr(_join(prefix, match)) for match in matches) + "?)"


def _join(prefix: str, name: object) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def _check_known(mapping: Mapping[Any, Any], valid: Sequence[str], prefix: str) -> None:
    for name in mapping:
        if name not in valid:
            listing = ", ".join(_join(prefix, choice) for choice in sorted(valid))
            raise ConfigError(
                f"unknown key {_join(prefix, name)!r}{_close(str(name), valid, prefix)}; "
                f"fix or remove it. Valid keys: {listing}."
            )


@dataclass
class _Signature:
    names: list[str]  # what can be passed by keyword
    required: list[str]
    accepts_any: bool  # a **kwargs parameter
    kinds: dict[str, str]  # "number" or "boolean", for parameters that take only those


def _signature(target: Any, skip_first: bool) -> _Signature | None:
    try:
        parameters = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):  # some builtins have no signature; nothing to check
        return None
    positional = (Parameter.POSITIONAL_ONLY, Parameter.POSITIONAL_OR_KEYWORD)
    if skip_first and parameters and parameters[0].kind in positional:
        parameters = parameters[1:]
    kinds = (Parameter.POSITIONAL_OR_KEYWORD, Parameter.KEYWORD_ONLY)
    named = [parameter for parameter in parameters if parameter.kind in kinds]
    return _Signature(
        names=[parameter.name for parameter in named],
        required=[parameter.name for parameter in named if parameter.default is Parameter.empty],
        accepts_any=any(parameter.kind is Parameter.VAR_KEYWORD for parameter in parameters),
        kinds={p.name: kind for p in named if (kind := _value_kind(p)) is not None},
    )


def _value_kind(parameter: Parameter) -> str | None:
    """"number" or "boolean" when the default or the annotation says only that fits."""
    default, annotation = parameter.default, parameter.annotation
    words = set() if annotation is Parameter.empty else set(str(annotation).split(" | "))
    if words == {"bool"} or (isinstance(default, bool) and "int" not in words):
        return "boolean"  # `bool | int` (fast_dev_run: True or a count) is a number
    if isinstance(default, int | float) or (words and words <= {"int", "float", "None"}):
        return "number"
    return None


def _check_value_kinds(arguments: Mapping[str, Any], signature: _Signature, key: str) -> None:
    """A word where a number or true/false belongs fails here, named, not deep in a
    constructor with "'<=' not supported between instances of 'float' and 'str'"."""
    for name, value in arguments.items():
        kind = signature.kinds.get(name)
        if kind == "number" and isinstance(value, str):
            example = "0.001" if name in ("lr", "learning_rate") else "3"
            raise ConfigError(
                f"{key}.{name}: expected a number, got {value!r}; "
                f"write it as a number, e.g. --{key}.{name} {example}."
            )
        if kind == "boolean" and not isinstance(value, bool) and value is not None:
            raise ConfigError(
                f"{key}.{name}: expected true or false, got {value!r}; "
                f"write --{key}.{name} true or --{key}.{name} false."
            )


def _split_entry(entry: Any, key: str) -> tuple[Any, dict[str, Any]]:
    if not isinstance(entry, Mapping) or "class_path" not in entry:
        raise ConfigError(
            f"{key}: expected a mapping with 'class_path' (an import path such as "
            f"trainer.models.MLP) and its arguments as sibling keys; got {entry!r}."
        )
    arguments = {name: value for name, value in entry.items() if name != "class_path"}
    return import_path(entry["class_path"], f"{key}.class_path"), arguments


def _check_arguments(target: Any, arguments: Mapping[str, Any], key: str, how: How) -> None:
    signature = _signature(target, skip_first=how == "partial")
    if signature is None:
        return
    if not signature.accepts_any:
        _check_known(arguments, ["class_path", *signature.names], key)
    _check_value_kinds(arguments, signature, key)
    if how == "auto" and not inspect.isclass(target):
        return  # a function becomes a partial; whoever calls it supplies the rest
    missing = [name for name in signature.required if name not in arguments]
    if missing:
        name = getattr(target, "__qualname__", target)
        raise ConfigError(
            f"{key}: {name} needs {', '.join(map(repr, missing))}; "
            f"add {key}.{missing[0]} to the config or pass --{key}.{missing[0]} VALUE."
        )


def _entry(entry: Any, key: str, how: How, build: bool) -> Any:
    """Check one class_path entry against its target's signature; when `build`, make it."""
    target, arguments = _split_entry(entry, key)
    _check_arguments(target, arguments, key, how)
    arguments = {name: _value(value, f"{key}.{name}", build) for name, value in arguments.items()}
    if not build:
        return None
    if how == "partial":
        factory = _ConfiguredFactory(target, **arguments)
        factory.key = key
        return factory
    if how == "auto" and not inspect.isclass(target):
        return functools.partial(target, **arguments) if arguments else target
    try:
        return target(**arguments)
    except (ValueError, TypeError, ImportError, OSError) as error:
        raise ConfigError(f"{key}: {error}") from error


def _value(value: Any, key: str, build: bool) -> Any:
    """Walk nested mappings and lists, so entries inside arguments are checked and built too."""
    if isinstance(value, Mapping) and "class_path" in value:
        return _entry(value, key, "auto", build)
    if isinstance(value, Mapping):
        return {name: _value(item, f"{key}.{name}", build) for name, item in value.items()}
    if isinstance(value, list):
        return [_value(item, f"{key}.{index}", build) for index, item in enumerate(value)]
    return value


def _sections(config: Mapping[str, Any], build: bool) -> dict[str, Any]:
    objects = {
        name: _entry(config[name], name, how, build)
        for name, how in _OBJECT_SECTIONS
        if config.get(name) is not None
    }
    for name, kind in (("metrics", dict), ("callbacks", list)):
        value = config.get(name)
        if value is None:
            continue
        if not isinstance(value, kind):
            shape = "a mapping of name: {class_path: ...}" if kind is dict else "a list of entries"
            raise ConfigError(f"{name}: expected {shape}; got {value!r}.")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        built = {part: _entry(item, f"{name}.{part}", "auto", build) for part, item in items}
        objects[name] = built if kind is dict else list(built.values())
    return objects


def _trainer_section(section: Any, build: bool) -> tuple[Any, dict[str, Any]]:
    """Check `trainer:` against the Trainer's keywords; return the class and its arguments."""
    section = dict(section or {}) if isinstance(section, Mapping | None) else section
    if not isinstance(section, dict):
        raise ConfigError(f"trainer: expected a mapping of Trainer keywords; got {section!r}.")
    trainer_class = import_path(section.pop("class_path", "trainer.Trainer"), "trainer.class_path")
    for name in section:
        if name in _FILLED_BY:
            raise ConfigError(
                f"'trainer.{name}' is set by the top-level '{_FILLED_BY[name]}' section; "
                "move it there."
            )
    signature = _signature(trainer_class, skip_first=True)  # `model`, from its own section
    if signature is not None and not signature.accepts_any:
        valid = ["class_path", *(name for name in signature.names if name not in _FILLED_BY)]
        _check_known(section, valid, "trainer")
    if signature is not None:
        _check_value_kinds(section, signature, "trainer")
    return trainer_class, {
        name: _value(value, f"trainer.{name}", build) for name, value in section.items()
    }


def _check_top_level(config: Mapping[str, Any]) -> None:
    for name in config:
        if name not in SECTIONS:
            raise ConfigError(_unknown_top_level_key(str(name), config))
    for name in ("model", "data"):
        if config.get(name) is None:
            raise ConfigError(
                f"the config has no '{name}' section; add one with a class_path (see "
                f"configs/digits_mlp.yaml) or pass --{name}.class_path PATH."
            )
    seed = config.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ConfigError(f"seed: expected an integer or null; got {seed!r}.")


def _unknown_top_level_key(name: str, config: Mapping[str, Any]) -> str:
    """The message for a top-level key that is no section, such as `--epochs 3`.

    A mapping there is a misspelt section; a value is most often an option written without
    its section, so the nearest Trainer keywords and keys of the config's sections count too.
    """
    value = config[name]
    is_section = isinstance(value, Mapping)
    candidates = {section: section for section in SECTIONS}
    if not is_section:
        candidates |= _option_names(config)
    by_last: dict[str, list[str]] = {}
    for full, last in candidates.items():
        by_last.setdefault(last, []).append(full)
    # Spellings and parts both count: `epochs` finds trainer.max_epochs, `lr` optimizer.lr.
    close = difflib.get_close_matches(name, list(by_last), n=3, cutoff=0.7)
    close += [last for last in by_last if name in last.split("_") and last not in close]
    matches = [full for last in close for full in by_last[last]][:3]
    sections = f"The top-level keys are the sections: {', '.join(SECTIONS)}"
    if not matches:
        return (
            f"unknown key {name!r}; fix or remove it. {sections}; a Trainer option goes "
            "under trainer, e.g. --trainer.max_epochs 3."
        )
    if is_section:
        fix = f"rename it to {matches[0]!r}"
    else:
        shown = str(value) if isinstance(value, int | float) else "VALUE"
        fix = f"write --{matches[0]} {shown}"
    suggestions = " or ".join(repr(match) for match in matches)
    return f"unknown key {name!r} (did you mean {suggestions}?); {fix}. {sections}."


def _option_names(config: Mapping[str, Any]) -> dict[str, str]:
    """Full keys of the options a config could hold (`optimizer.lr`, `callbacks.0.patience`,
    every `trainer.` keyword), each mapped to its last part."""
    names: dict[str, str] = {}
    for section in SECTIONS:
        value = config.get(section)
        entries = enumerate(value) if isinstance(value, list) else [(None, value)]
        for index, entry in entries:
            prefix = section if index is None else f"{section}.{index}"
            if isinstance(entry, Mapping):
                names |= {f"{prefix}.{key}": str(key) for key in entry if key != "class_path"}
    trainer = config.get("trainer")
    trainer_class = trainer.get("class_path") if isinstance(trainer, Mapping) else None
    try:
        target = import_path(trainer_class or "trainer.Trainer", "trainer.class_path")
    except ConfigError:  # reported on its own once the top level is right
        return names
    signature = _signature(target, skip_first=True)
    for keyword in signature.names if signature is not None else []:
        if keyword not in _FILLED_BY:
            names.setdefault(f"trainer.{keyword}", keyword)
    return names


def build_job(config: Mapping[str, Any]) -> Job:
    """Check every key of a loaded config, then build its objects.

    Checking everything first makes a typo fail in milliseconds, before data is loaded or a
    model allocated. The seed is the Trainer's (`seed=`, which seeds a run from scratch);
    applied once more with the Trainer's own `seed_everything` before the model is built, it
    makes the initial weights repeat too.
    """
    _check_top_level(config)
    # trainer: first, as other sections interpolate its values (T_max: ${trainer.max_epochs})
    _trainer_section(config.get("trainer"), build=False)
    _sections(config, build=False)
    seed = config.get("seed")
    if seed is not None:
        from trainer.trainer import seed_everything

        seed_everything(seed)
    objects = _sections(config, build=True)
    trainer_class, trainer_kwargs = _trainer_section(config.get("trainer"), build=True)
    trainer_kwargs |= {name: objects[name] for name in objects if name not in ("model", "data")}
    if seed is not None:
        trainer_kwargs["seed"] = seed
    return Job(trainer_class, objects["model"], objects["data"], trainer_kwargs, config)
