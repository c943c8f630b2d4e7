"""The default job seen through a real `tensorboard` server: its HTTP data API serves the
scalars, the HParams entry with final metrics, the Custom Scalars layout and the config."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT

from trainer.cli import main

JOB = "digits"  # the run_dir
RUN = f"{JOB}/version_0"  # its first run, as TensorBoard names it


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Board:
    """A running `tensorboard` process and its HTTP data API."""

    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"

    def get(self, route: str, **query: str) -> Any:
        address = f"{self.url}{route}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(address, timeout=10) as response:
            return json.load(response)

    def post(self, route: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            f"{self.url}{route}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default job, shortened to 2 epochs, trained into runs/digits."""
    runs = tmp_path_factory.mktemp("runs")
    status = main([
        "fit", "--config", str(REPO_ROOT / "configs" / "digits_mlp.yaml"),
        "--trainer.max_epochs", "2", "--trainer.run_dir", str(runs / JOB),
    ])  # fmt: skip
    assert status == 0
    return runs


@pytest.fixture(scope="module")
def board(runs: Path) -> Iterator[Board]:
    """tensorboard on a free port of 127.0.0.1, all data loaded before it answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(runs),
         "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false",
         "--reload_interval", "0", "--reload_task", "blocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    server = Board(process, port)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"tensorboard exited: {process.stderr.read().decode()[-2000:]}")
            try:
                server.get("/data/runs")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    pytest.fail("tensorboard did not answer within 60 s")
                time.sleep(0.2)
        yield server
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        process.stderr.close()


def csv_columns(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Each CSV column as its (step, value) points."""
    columns: dict[str, list[tuple[int, float]]] = {}
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            step = int(row.pop("step"))
            for name, value in row.items():
                if value:
                    columns.setdefault(name, []).append((step, float(value)))
    return columns


def test_scalar_tags_and_points_match_what_was_logged(board: Board, runs: Path) -> None:
    logged = csv_columns(runs / RUN / "metrics.csv")
    del logged["epoch"]  # the CSV's; TensorBoard has its step axis
    tags = board.get("/data/plugin/scalars/tags")[RUN]
    assert set(tags) == set(logged)
    assert {"train/loss", "train/loss_epoch", "val/loss", "val/acc", "lr",
            "train/samples_per_sec"} <= set(tags)  # fmt: skip
    for tag, points in logged.items():
        served = board.get("/data/plugin/scalars/scalars", run=RUN, tag=tag)
        assert [step for _, step, _ in served] == [step for step, _ in points], tag
        assert [value for _, _, value in served] == pytest.approx(
            [value for _, value in points], rel=1e-6
        ), tag
    assert len(logged["val/loss"]) == 2
    assert len(logged["train/loss"]) == max(step for step, _ in logged["val/loss"]) // 10


def test_hparams_tab_compares_the_key_values_and_opens_on_the_monitored_metric(
    board: Board, runs: Path
) -> None:
    experiment = board.post("/data/plugin/hparams/experiment", {"experimentName": ""})
    names = [info["name"] for info in experiment["hparamInfos"]]
    assert names == ["batch_size", "lr", "max_epochs", "model", "optimizer", "seed"]
    metrics = [info["name"]["tag"] for info in experiment["metricInfos"]]
    # The tab shows the first five as it opens: EarlyStopping's val/acc, then val/loss.
    assert metrics[:3] == ["val/acc", "val/loss", "train/loss_epoch"]
    assert {"lr", "train/loss", "train/samples_per_sec"} <= set(metrics)

    groups = board.post(
        "/data/plugin/hparams/session_groups",
        {
            "experimentName": "",
            "allowedStatuses": ["STATUS_SUCCESS"],
            "colParams": [{"metric": {"tag": "val/acc", "group": ""}}],
            "startIndex": 0,
            "sliceSize": 10,
        },
    )["sessionGroups"]
    assert len(groups) == 1
    assert groups[0]["name"] == "version_0 (digits)"
    assert groups[0]["sessions"][0]["name"] == RUN
    assert groups[0]["hparams"] == {
        "batch_size": 64, "lr": pytest.approx(0.002), "max_epochs": 2, "model": "MLP",
        "optimizer": "AdamW", "seed": 0,
    }  # fmt: skip
    final = {value["name"]["tag"]: value["value"] for value in groups[0]["metricValues"]}
    final_val_acc = csv_columns(runs / RUN / "metrics.csv")["val/acc"][-1][1]
    assert final["val/acc"] == pytest.approx(final_val_acc, rel=1e-6)


def test_custom_scalars_open_on_the_monitored_metric_and_draw_only_logged_figures(
    board: Board,
) -> None:
    layout = board.get("/data/plugin/custom_scalars/layout")
    charts = [chart for category in layout["category"] for chart in category["chart"]]
    assert [chart["title"] for chart in charts[:2]] == [
        "val/acc", "val/loss, shaded to train/loss_epoch",
    ]  # fmt: skip
    margin = charts[1]["margin"]["series"][0]
    assert (margin["value"], margin["lower"], margin["upper"]) == (
        "val/loss", "train/loss_epoch", "val/loss",
    )  # fmt: skip
    tags = set(board.get("/data/plugin/scalars/tags")[RUN])
    for chart in charts:  # every chart draws something: no gradient norm without clipping
        patterns = chart.get("multiline", {}).get("tag", [])
        served = [
            board.get("/data/plugin/custom_scalars/scalars", run=RUN, tag=pattern)
            for pattern in patterns
        ]
        assert not patterns or any(served), chart["title"]
    assert "gradient norm" not in {chart["title"] for chart in charts}
    assert tags


def test_the_resolved_config_is_shown_as_text(board: Board) -> None:
    [entry] = board.get("/data/plugin/text/text", run=RUN, tag="config/text_summary")
    assert "class_path: torch.optim.AdamW" in entry["text"]
    assert "max_epochs: 2" in entry["text"]
    assert "T_max: 2" in entry["text"]  # interpolation resolved
