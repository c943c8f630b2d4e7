"""`trainer.callbacks.tensorboard_dashboards`: what the dashboards show, as functions of the
logged tags and the monitored metrics."""

from __future__ import annotations

import json
import urllib.parse

from trainer.callbacks.tensorboard_dashboards import (
    custom_scalars_layout,
    metric_order,
    time_series_address,
)

TAGS = ["lr", "train/loss", "train/loss_epoch", "train/acc_epoch", "val/loss", "val/acc"]


def test_metric_columns_put_the_monitored_metric_then_validation_then_training_epochs() -> None:
    assert metric_order(TAGS, ["val/acc"]) == [
        "val/acc", "val/loss", "train/loss_epoch", "train/acc_epoch", "lr", "train/loss",
    ]  # fmt: skip


def test_a_validation_figure_with_a_training_counterpart_is_shaded_to_it() -> None:
    layout = custom_scalars_layout(TAGS, ["val/acc"])
    compared = layout["train vs validation"]
    assert list(compared) == [
        "val/acc, shaded to train/acc_epoch",
        "val/loss, shaded to train/loss_epoch",
    ]
    assert compared["val/acc, shaded to train/acc_epoch"] == [
        "Margin", ["val/acc", "train/acc_epoch", "val/acc"],
    ]  # fmt: skip
    assert list(layout["optimization"]) == ["learning rate", "train/loss at log steps"]


def test_the_time_series_address_pins_the_monitored_metric_and_the_losses() -> None:
    address = time_series_address(TAGS, ["val/acc"], port=6123)
    assert address is not None and address.startswith("http://localhost:6123/?pinnedCards=")
    query = urllib.parse.urlsplit(address).query.removeprefix("pinnedCards=")
    cards = json.loads(urllib.parse.unquote(query))
    assert [card["tag"] for card in cards] == ["val/acc", "val/loss", "train/loss"]
    assert time_series_address(["lr"], [], port=6006) is None


LOADER_TAGS = [
    "lr", "train/loss", "train/loss_epoch",
    "val/clean/loss", "val/clean/acc", "val/noisy/loss", "val/noisy/acc",
]  # fmt: skip


def test_several_val_loaders_get_a_chart_per_figure_with_a_line_per_loader() -> None:
    layout = custom_scalars_layout(LOADER_TAGS, ["val/noisy/acc"])
    assert list(layout) == ["validation loaders", "train vs validation", "optimization"]
    assert layout["validation loaders"] == {
        "val/{clean,noisy}/acc": ["Multiline", ["^val/(clean|noisy)/acc$"]],
        "val/{clean,noisy}/loss": ["Multiline", ["^val/(clean|noisy)/loss$"]],
    }
    compared = layout["train vs validation"]
    assert next(iter(compared)) == "val/noisy/acc"  # the monitored figure first
    assert compared["val/clean/loss, shaded to train/loss_epoch"] == [
        "Margin", ["val/clean/loss", "train/loss_epoch", "val/clean/loss"],
    ]  # fmt: skip


def test_one_loader_and_one_named_loader_get_no_per_loader_charts() -> None:
    assert "validation loaders" not in custom_scalars_layout(TAGS, [])
    one = ["train/loss_epoch", "val/clean/loss", "val/clean/acc"]
    assert "validation loaders" not in custom_scalars_layout(one, [])


def test_several_val_loaders_pin_each_loaders_loss_and_lead_the_hparams_columns() -> None:
    address = time_series_address(LOADER_TAGS, ["val/noisy/acc"], port=6006)
    assert address is not None
    query = urllib.parse.urlsplit(address).query.removeprefix("pinnedCards=")
    cards = [card["tag"] for card in json.loads(urllib.parse.unquote(query))]
    assert cards == ["val/noisy/acc", "val/clean/loss", "val/noisy/loss", "train/loss"]
    assert metric_order(LOADER_TAGS, ["val/noisy/acc"])[:4] == [
        "val/noisy/acc", "val/clean/loss", "val/noisy/loss", "val/clean/acc",
    ]  # fmt: skip
