"""What TensorBoard's dashboards show of a run: the Custom Scalars layout, the order of the
HParams tab's metric columns, the HParams plugin's records, and the address of the Time
Series tab with the figures that judge the run pinned on top.

Pure functions of the logged tags and the monitored metrics, apart from the callback that
decides when to write them (`TensorBoardLogger`); tensorboard's protobufs are imported
inside the functions that build them, so `import trainer` stays fast.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

from trainer.hparams import to_yaml

if TYPE_CHECKING:
    from tensorboard.compat.proto.summary_pb2 import Summary

    from trainer.trainer import Trainer

__all__ = [
    "as_markdown_yaml",
    "custom_scalars_layout",
    "hparams_experiment",
    "hparams_session_end",
    "metric_order",
    "monitored_metrics",
    "pinned_tags",
    "time_series_address",
]


def monitored_metrics(trainer: Trainer) -> list[str]:
    """The metrics the run's callbacks watch (early stopping, best checkpoints)."""
    from trainer.callbacks.monitor import Monitor

    names = (getattr(callback, "monitor", None) for callback in trainer.callbacks)
    return list(dict.fromkeys(m.name for m in names if isinstance(m, Monitor)))


def metric_order(tags: list[str], monitored: list[str]) -> list[str]:
    """Monitored metrics first, then validation figures (losses first, each loader's with
    several loaders), training epoch figures, the rest."""

    def rank(tag: str) -> tuple[int, bool]:
        if tag in monitored:
            return 0, False
        if tag.startswith("val/"):
            return 1, not tag.endswith("/loss")
        if tag.startswith("train/") and tag.endswith("_epoch"):
            return 2, tag != "train/loss_epoch"
        return 3, False

    return sorted(tags, key=rank)


def pinned_tags(tags: list[str], monitored: list[str]) -> list[str]:
    """The figures a run is judged by: what the callbacks watch, then the losses (the
    training loss of the log steps, or of the epochs when no log step came)."""
    train_loss = "train/loss" if "train/loss" in tags else "train/loss_epoch"
    loaders_losses = [tag for tag in tags if _loader_and_figure(tag)[1:] == ("loss",)]
    wanted = dict.fromkeys([*monitored, "val/loss", *loaders_losses, train_loss])
    return [tag for tag in wanted if tag in tags]


def _loader_and_figure(tag: str) -> tuple[str, ...]:
    """`("clean", "loss")` for `val/clean/loss`, a figure of one of several val loaders;
    `()` for any other tag."""
    parts = tag.split("/")
    return (parts[1], parts[2]) if len(parts) == 3 and parts[0] == "val" else ()


def _by_loader(tags: list[str], monitored: list[str]) -> dict[str, list[Any]]:
    """One chart per figure that several val loaders logged, such as `val/{clean,noisy}/loss`,
    a line per loader (in the order they logged), the monitored figure's chart first."""
    loaders: dict[str, list[str]] = {}
    for tag in tags:
        if named := _loader_and_figure(tag):
            loaders.setdefault(named[1], []).append(named[0])
    ordered = dict.fromkeys(named[1] for tag in metric_order(tags, monitored)
                            if (named := _loader_and_figure(tag)))  # fmt: skip
    return {
        f"val/{{{','.join(loaders[figure])}}}/{figure}": [
            "Multiline",
            [f"^val/({'|'.join(map(re.escape, loaders[figure]))})/{re.escape(figure)}$"],
        ]
        for figure in ordered
        if len(loaders[figure]) > 1
    }


def _hparam_type(value: bool | int | float | str) -> int:
    """The HParams plugin's type of `value` (it has no integer type)."""
    from tensorboard.plugins.hparams import api_pb2

    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL
    if isinstance(value, (int, float)):
        return api_pb2.DATA_TYPE_FLOAT64
    return api_pb2.DATA_TYPE_STRING


def custom_scalars_layout(tags: list[str], monitored: list[str]) -> dict[str, dict[str, list[Any]]]:
    """Custom Scalars charts, one per figure the run logged: validation first, monitored first;
    with several val loaders, first a chart per figure with a line per loader.

    TensorBoard colours lines by run, so a training and a validation line in one chart would
    share a colour: a validation figure with a training counterpart is drawn as its line with
    the gap to training shaded (a gap that widens is overfitting).
    """

    def chart(*names: str) -> list[Any]:
        return ["Multiline", [f"^{re.escape(name)}$" for name in names if name in tags]]

    compared: dict[str, list[Any]] = {}
    for tag in metric_order([tag for tag in tags if tag.startswith("val/")], monitored):
        figure = named[1] if (named := _loader_and_figure(tag)) else tag.removeprefix("val/")
        train = f"train/{figure}_epoch"
        is_paired = train in tags
        title = f"{tag}, shaded to {train}" if is_paired else tag
        compared[title] = ["Margin", [tag, train, tag]] if is_paired else chart(tag)
    if not compared and "train/loss_epoch" in tags:
        compared["train/loss_epoch"] = chart("train/loss_epoch")
    optimization = {
        "learning rate": ["Multiline", [r"^lr(/group\d+)?$"]],
        "train/loss at log steps": chart("train/loss"),
        "throughput (samples/s)": chart("train/samples_per_sec"),
        "gradient norm": chart("train/grad_norm"),
    }
    if not any(tag == "lr" or tag.startswith("lr/") for tag in tags):
        del optimization["learning rate"]
    optimization = {title: spec for title, spec in optimization.items() if spec[1]}
    layout = {
        "validation loaders": _by_loader(tags, monitored),
        "train vs validation": compared,
        "optimization": optimization,
    }
    return {title: charts for title, charts in layout.items() if charts}


def as_markdown_yaml(hparams: dict[str, Any]) -> str:
    """The hyperparameters as YAML, indented so TensorBoard's markdown shows it verbatim."""
    return "\n".join(f"    {line}" for line in to_yaml(hparams).splitlines())


def time_series_address(tags: list[str], monitored: list[str], port: int) -> str | None:
    """The Time Series tab's address with `pinned_tags` pinned; None when none was logged.

    TensorBoard sorts its groups by name, so `lr` and `train` would open first; pinned
    cards come before every group, and TensorBoard reads them from the address.
    """
    pinned = pinned_tags(tags, monitored)
    if not pinned:
        return None
    cards = json.dumps([{"plugin": "scalars", "tag": tag} for tag in pinned], separators=",:")
    query = urllib.parse.quote(cards, safe="/:,")
    return f"http://localhost:{port}/?pinnedCards={query}#timeseries"


def hparams_experiment(hparams: dict[str, Any], metrics: list[str]) -> Summary:
    """The HParams tab's columns: the hyperparameters, then `metrics` in that order."""
    from tensorboard.plugins.hparams import api_pb2

    experiment = api_pb2.Experiment(
        hparam_infos=[
            api_pb2.HParamInfo(name=name, type=_hparam_type(value))
            for name, value in hparams.items()
        ],
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metrics],
        time_created_secs=time.time(),
    )
    return _hparams_record(experiment=experiment)


def hparams_session_end() -> Summary:
    """The record that marks this run's HParams session finished, now."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    return _hparams_record(session_end_info=end)


def _hparams_record(**data: Any) -> Summary:
    """One record of the HParams plugin (its experiment or a session's end)."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    plugin_data = plugin_data_pb2.HParamsPluginData(**data)
    tag = metadata.EXPERIMENT_TAG if "experiment" in data else metadata.SESSION_END_INFO_TAG
    value = summary_pb2.Summary.Value(
        tag=tag,
        metadata=metadata.create_summary_metadata(plugin_data),
        tensor=metadata.NULL_TENSOR,
    )
    return summary_pb2.Summary(value=[value])
