"""`trainer.event_file`: hand-encoded event files that TensorBoard's own code reads as its own.

Each record kind is parsed with tensorboard's protocol buffer classes and compared with what
tensorboard's (or PyTorch's) own helpers make for the same input; whole runs are read back
with TensorBoard's `EventAccumulator` and the HParams plugin's session-group handler.
"""

from __future__ import annotations

import math
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.data_compat import migrate_value
from tensorboard.plugins import base_plugin
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import (
    api_pb2,
    backend_context,
    list_session_groups,
    metadata,
    plugin_data_pb2,
    summary_v2,
)
from tensorboard.util import tensor_util
from torch.utils.tensorboard import summary as torch_summary

from trainer.event_file import HISTOGRAM_BUCKETS, EventFileWriter, _masked_crc


def records(path: Path) -> list[bytes]:
    """The payload of every record in `path`, checking both checksums of each."""
    data, payloads, offset = path.read_bytes(), [], 0
    while offset < len(data):
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        assert data[offset + 8 : offset + 12] == struct.pack("<I", masked_crc32c(header))
        payload = data[offset + 12 : offset + 12 + length]
        end = offset + 12 + length
        assert data[end : end + 4] == struct.pack("<I", masked_crc32c(payload))
        payloads.append(payload)
        offset = end + 4
    return payloads


def events_of(path: Path) -> list[event_pb2.Event]:
    return [event_pb2.Event.FromString(payload) for payload in records(path)]


def only_value(event: event_pb2.Event) -> summary_pb2.Summary.Value:
    [value] = event.summary.value
    return value


def read_run(folder: Path) -> EventAccumulator:
    everything = {"scalars": 0, "tensors": 0, "histograms": 0, "compressedHistograms": 0}
    events = EventAccumulator(str(folder), size_guidance=everything)
    events.Reload()
    return events


def start_a_new_second() -> None:
    """Files sort by creation second; a resumed run's file must sort after the first one's."""
    time.sleep(1.01 - time.time() % 1)


# ------------------------------------------------------------------------------ the records
def test_checksums_match_tensorboards_own() -> None:
    generator = random.Random(0)
    for size in (0, 1, 7, 8, 64, 1000):
        data = bytes(generator.randrange(256) for _ in range(size))
        assert _masked_crc(data) == struct.pack("<I", masked_crc32c(data))


def test_scalar_events_parse_as_tensorboard_protocol_buffers(tmp_path: Path) -> None:
    writer = EventFileWriter(tmp_path)
    writer.add_scalar("train/loss", 0.25, global_step=7)
    writer.add_scalar("val/ácc", 2.0**40, global_step=2**40)
    writer.close()

    first, loss, accuracy = events_of(writer.path)
    assert first.file_version == "brain.Event:2"
    assert (loss.step, only_value(loss).tag, only_value(loss).simple_value) == (
        7, "train/loss", 0.25,
    )  # fmt: skip
    assert (accuracy.step, only_value(accuracy).tag) == (2**40, "val/ácc")
    assert only_value(accuracy).simple_value == 2.0**40
    assert abs(loss.wall_time - first.wall_time) < 60
    assert only_value(loss) == torch_summary.scalar("train/loss", 0.25).value[0]


def test_tensorboard_reads_every_value_including_nan_and_out_of_range(tmp_path: Path) -> None:
    writer = EventFileWriter(tmp_path)
    values = [1.5, -3.0, math.nan, math.inf, 1e39, -1e39]
    for step, value in enumerate(values):
        writer.add_scalar("figure", value, global_step=step)
    writer.close()

    read = [event.value for event in read_run(tmp_path).Scalars("figure")]
    assert read[:2] == [1.5, -3.0]
    assert math.isnan(read[2])
    assert read[3:] == [math.inf, math.inf, -math.inf]


def test_text_is_the_record_pytorchs_add_text_writes(tmp_path: Path) -> None:
    text = "    optimizer:\n      lr: 0.1\n    note: ünïcode"
    writer = EventFileWriter(tmp_path)
    writer.add_text("config", text, global_step=3)
    writer.close()

    event = events_of(writer.path)[1]
    assert event.step == 3
    assert event.summary == torch_summary.text("config", text)


def test_custom_scalars_layout_is_the_record_pytorch_writes(tmp_path: Path) -> None:
    layout = {
        "train vs validation": {
            "loss": ["Multiline", ["^train/loss_epoch$", "^val/loss$"]],
            "bounds": ["Margin", ["val/loss", "val/loss_low", "val/loss_high"]],
        },
        "optimization": {"learning rate": ["Multiline", [r"^lr(/group\d+)?$"]]},
    }
    writer = EventFileWriter(tmp_path)
    writer.add_custom_scalars(layout)
    writer.close()

    event = events_of(writer.path)[1]
    expected = torch_summary.custom_scalars(layout)
    assert event.step == 0
    assert event.summary == expected
    ours = layout_pb2.Layout.FromString(only_value(event).tensor.string_val[0])
    assert ours == layout_pb2.Layout.FromString(expected.value[0].tensor.string_val[0])
    assert [chart.title for chart in ours.category[0].chart] == ["loss", "bounds"]


def test_a_margin_chart_needs_three_tags(tmp_path: Path) -> None:
    writer = EventFileWriter(tmp_path)
    with pytest.raises(ValueError, match=r"Margin chart takes \[value, lower, upper\]"):
        writer.add_custom_scalars({"c": {"m": ["Margin", ["a", "b"]]}})
    writer.close()


HPARAMS = {
    "optimizer.lr": 0.002,
    "trainer.max_epochs": 20,
    "model.hidden": "[256, 128]",
    "trainer.deterministic": False,
    "zero": 0,
    "empty": "",
    "größe": np.float32(0.5),
    "seed": np.int64(7),
}


def test_hparams_session_start_equals_tensorboards_hparams_pb(tmp_path: Path) -> None:
    writer = EventFileWriter(tmp_path)
    writer.add_hparams_session_start(HPARAMS, start_time_secs=1234.5)
    writer.close()

    event = events_of(writer.path)[1]
    ours = only_value(event)
    theirs = summary_v2.hparams_pb(HPARAMS, start_time_secs=1234.5).value[0]
    assert event.step == 0
    assert (ours.tag, ours.tensor) == (theirs.tag, theirs.tensor)
    assert ours.tensor == metadata.NULL_TENSOR
    assert ours.metadata.plugin_data.plugin_name == theirs.metadata.plugin_data.plugin_name
    # A map's entries may come in any order, so the plugin data is compared parsed: version,
    # every value with its type, the group name (a hash of the values) and the start time.
    parsed = plugin_data_pb2.HParamsPluginData.FromString
    ours_data = parsed(ours.metadata.plugin_data.content)
    assert ours_data == parsed(theirs.metadata.plugin_data.content)
    start = ours_data.session_start_info
    assert (len(start.group_name), start.start_time_secs) == (64, 1234.5)
    assert start.hparams["trainer.deterministic"].HasField("bool_value")
    assert start.hparams["zero"].HasField("number_value")


def test_hparams_session_end_is_the_plugins_success_record(tmp_path: Path) -> None:
    writer = EventFileWriter(tmp_path)
    writer.add_hparams_session_end(global_step=40, end_time_secs=99.25)
    writer.close()

    event = events_of(writer.path)[1]
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=99.25)
    expected = summary_pb2.Summary.Value(
        tag=metadata.SESSION_END_INFO_TAG,
        metadata=metadata.create_summary_metadata(
            plugin_data_pb2.HParamsPluginData(session_end_info=end)
        ),
        tensor=metadata.NULL_TENSOR,
    )
    assert event.step == 40
    assert only_value(event) == expected


@pytest.mark.parametrize("value", [None, [1, 2], {"lr": 0.1}])
def test_hparams_other_than_booleans_numbers_and_strings_are_refused(
    tmp_path: Path, value: object
) -> None:
    writer = EventFileWriter(tmp_path)
    with pytest.raises(TypeError, match=r"hparams\['odd'\] = .* booleans, numbers and strings"):
        writer.add_hparams_session_start({"odd": value})
    writer.close()


def test_the_hparams_plugin_groups_runs_by_their_values_with_final_metrics(
    tmp_path: Path,
) -> None:
    runs = {"a": ({"lr": 0.1, "opt": "sgd"}, 0.5), "b": ({"lr": 0.01, "opt": "sgd"}, 0.75)}
    runs["c"] = (dict(runs["a"][0]), 0.25)  # the same values as `a`: the same group
    for run, (hparams, accuracy) in runs.items():
        writer = EventFileWriter(tmp_path / run)
        writer.add_hparams_session_start(hparams, start_time_secs=100.0)
        writer.add_scalar("val/acc", accuracy, global_step=10)
        writer.add_hparams_session_end(global_step=10, end_time_secs=200.0)
        writer.close()

    groups = {
        tuple(sorted(session.name for session in group.sessions)): group
        for group in _session_groups(tmp_path, metric="val/acc")
    }
    assert groups.keys() == {("a", "c"), ("b",)}
    assert groups["b",].hparams["lr"].number_value == 0.01
    assert groups["a", "c"].hparams["opt"].string_value == "sgd"
    assert groups["a", "c"].metric_values[0].value == pytest.approx(0.375)
    for session in groups["a", "c"].sessions:
        assert (session.status, session.start_time_secs, session.end_time_secs) == (
            api_pb2.STATUS_SUCCESS, 100.0, 200.0,
        )  # fmt: skip


def _session_groups(logdir: Path, metric: str) -> list[api_pb2.SessionGroup]:
    """The HParams tab's table, from the plugin's own handler over TensorBoard's reader."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    backend = backend_context.Context(
        base_plugin.TBContext(logdir=str(logdir), data_provider=provider)
    )
    request = api_pb2.ListSessionGroupsRequest(
        allowed_statuses=[api_pb2.STATUS_SUCCESS],
        col_params=[api_pb2.ColParams(metric=api_pb2.MetricName(tag=metric))],
        start_index=0,
        slice_size=10,
    )
    handler = list_session_groups.Handler(context.RequestContext(), backend, "", request)
    return list(handler.run().session_groups)


# ------------------------------------------------------------------------------ histograms
def histogram_of(tmp_path: Path, values: torch.Tensor) -> summary_pb2.HistogramProto:
    writer = EventFileWriter(tmp_path)
    writer.add_histogram("weights", values, global_step=5)
    writer.close()
    event = events_of(writer.path)[1]
    assert (event.step, only_value(event).tag) == (5, "weights")
    return only_value(event).histo


def test_histogram_figures_match_pytorchs_and_buckets_count_every_value(tmp_path: Path) -> None:
    values = torch.randn(40, 50, generator=torch.Generator().manual_seed(0))
    ours = histogram_of(tmp_path, values)
    theirs = torch_summary.histogram("weights", values, bins="auto").value[0].histo

    for field in ("min", "max", "num", "sum", "sum_squares"):
        assert getattr(ours, field) == pytest.approx(getattr(theirs, field), rel=1e-9), field
    assert len(ours.bucket) == len(ours.bucket_limit) == HISTOGRAM_BUCKETS
    assert ours.bucket_limit[-1] == ours.max
    # As in TensorFlow's histograms, a bucket holds values from its left edge (the previous
    # limit, or min) up to but not including its limit; the last one also holds max.
    edges = [ours.min, *ours.bucket_limit]
    flat = values.double().flatten()
    for index, count in enumerate(ours.bucket):
        left, right = edges[index], edges[index + 1]
        below = flat <= right if index == HISTOGRAM_BUCKETS - 1 else flat < right
        assert count == int(((flat >= left) & below).sum()), index


def test_histograms_read_back_for_the_histogram_and_distribution_tabs(tmp_path: Path) -> None:
    writer = EventFileWriter(tmp_path)
    for step in (10, 20):
        values = torch.randn(500, generator=torch.Generator().manual_seed(step)) + step
        writer.add_histogram("weights/0.weight", values, global_step=step)
    writer.close()

    run = read_run(tmp_path)
    assert run.Tags()["histograms"] == ["weights/0.weight"]
    assert [event.step for event in run.Histograms("weights/0.weight")] == [10, 20]
    assert run.Histograms("weights/0.weight")[1].histogram_value.num == 500
    # The Distributions tab: percentiles, in order and between min and max.
    compressed = run.CompressedHistograms("weights/0.weight")[1].compressed_histogram_values
    quantiles = [value for _, value in compressed]
    assert quantiles == sorted(quantiles)
    histogram = run.Histograms("weights/0.weight")[1].histogram_value
    assert histogram.min <= quantiles[0] and quantiles[-1] <= histogram.max
    # The Histograms tab: the plugin's [left, right, count] buckets.
    [event] = [e for e in events_of(writer.path) if e.step == 20]
    buckets = tensor_util.make_ndarray(migrate_value(only_value(event)).tensor)
    assert buckets.shape == (HISTOGRAM_BUCKETS, 3)
    assert (buckets[:, 0] < buckets[:, 1]).all()
    assert buckets[:, 2].sum() == 500


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # (min, max, num, bucket limits, counts)
        (torch.full((6,), 0.5), (0.5, 0.5, 6, [0.5], [6])),
        (torch.tensor([1.0, math.nan, math.inf, -math.inf, 3.0]), (1.0, 3.0, 2, None, None)),
        (torch.tensor([math.nan, math.inf]), (0.0, 0.0, 0, [], [])),
        (torch.empty(0), (0.0, 0.0, 0, [], [])),
        (torch.tensor([1, 2, 2, 3]), (1.0, 3.0, 4, None, None)),
        (torch.tensor([0.25, -2.0], dtype=torch.bfloat16), (-2.0, 0.25, 2, None, None)),
    ],
    ids=["constant", "non-finite-left-out", "all-non-finite", "empty", "integers", "bfloat16"],
)
def test_histogram_of_awkward_values(tmp_path: Path, values: torch.Tensor, expected: tuple) -> None:
    low, high, num, limits, counts = expected
    histogram = histogram_of(tmp_path, values)
    assert (histogram.min, histogram.max, histogram.num) == (low, high, num)
    assert sum(histogram.bucket) == num
    if limits is not None:
        assert (list(histogram.bucket_limit), list(histogram.bucket)) == (limits, counts)
    run = read_run(tmp_path)  # the reader and the distribution compressor take them too
    assert run.Histograms("weights")[0].histogram_value.num == num
    assert len(run.CompressedHistograms("weights")[0].compressed_histogram_values) == 9


# --------------------------------------------------------------------------- whole runs
def test_a_run_with_every_kind_reads_back_whole(tmp_path: Path) -> None:
    writer = EventFileWriter(tmp_path)
    writer.add_hparams_session_start({"lr": 0.1}, start_time_secs=1.0)
    writer.add_text("config", "    lr: 0.1", global_step=0)
    writer.add_custom_scalars({"c": {"loss": ["Multiline", ["^train/loss$"]]}})
    for step in (1, 2, 3):
        writer.add_scalar("train/loss", 1.0 / step, global_step=step)
    writer.add_histogram("weights/w", torch.arange(10.0), global_step=3)
    writer.add_hparams_session_end(global_step=3)
    writer.close()

    run = read_run(tmp_path)
    assert run.Tags()["scalars"] == ["train/loss"]
    assert set(run.Tags()["tensors"]) == {
        "_hparams_/session_start_info",
        "config/text_summary",
        "custom_scalars__config__",
        "_hparams_/session_end_info",
    }
    assert [event.step for event in run.Scalars("train/loss")] == [1, 2, 3]
    assert [event.value for event in run.Scalars("train/loss")] == pytest.approx([1, 0.5, 1 / 3])
    [text] = run.Tensors("config/text_summary")
    assert text.tensor_proto.string_val == [b"    lr: 0.1"]
    assert run.SummaryMetadata("config/text_summary").plugin_data.plugin_name == "text"
    assert run.Histograms("weights/w")[0].histogram_value.sum == 45.0


def test_a_resumed_writer_makes_tensorboard_drop_later_points_of_earlier_files(
    tmp_path: Path,
) -> None:
    first = EventFileWriter(tmp_path)
    for step in range(1, 9):
        first.add_scalar("train/loss", float(step), global_step=step)
    first.close()
    # A later process resumes from a checkpoint at step 5, in a file of a later second.
    start_a_new_second()
    script = (
        "import sys; from trainer.event_file import EventFileWriter\n"
        "w = EventFileWriter(sys.argv[1], purge_step=6)\n"
        "[w.add_scalar('train/loss', 10.0 + s, global_step=s) for s in range(6, 10)]\n"
        "w.close()"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)

    points = [(event.step, event.value) for event in read_run(tmp_path).Scalars("train/loss")]
    assert points == [(s, float(s)) for s in range(1, 6)] + [(s, 10.0 + s) for s in range(6, 10)]


def test_a_resumed_file_starts_with_the_session_log_start_at_the_purge_step(
    tmp_path: Path,
) -> None:
    writer = EventFileWriter(tmp_path, purge_step=11)
    writer.close()
    version, restart = events_of(writer.path)
    assert (version.step, version.file_version) == (11, "brain.Event:2")
    assert (restart.step, restart.session_log.status) == (11, event_pb2.SessionLog.START)


def test_writing_after_close_is_an_error(tmp_path: Path) -> None:
    writer = EventFileWriter(tmp_path)
    writer.close()
    writer.close()
    with pytest.raises(ValueError, match="is closed"):
        writer.add_scalar("x", 1.0, global_step=1)


def test_each_event_reaches_the_file_at_once(tmp_path: Path) -> None:
    writer = EventFileWriter(tmp_path)
    writer.add_scalar("train/loss", 1.0, global_step=1)
    assert [event.step for event in events_of(writer.path)] == [0, 1]  # no flush, no close
    writer.close()


def test_a_killed_process_keeps_every_event_it_wrote(tmp_path: Path) -> None:
    script = (
        "import os, signal, sys, torch; from trainer.event_file import EventFileWriter\n"
        "w = EventFileWriter(sys.argv[1])\n"
        "w.add_hparams_session_start({'lr': 0.1})\n"
        "w.add_text('config', 'lr: 0.1', global_step=0)\n"
        "[w.add_scalar('train/loss', 1.0 / s, global_step=s) for s in range(1, 6)]\n"
        "w.add_histogram('weights/w', torch.ones(3), global_step=5)\n"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=False)
    assert result.returncode == -9

    run = read_run(tmp_path)
    assert [event.step for event in run.Scalars("train/loss")] == [1, 2, 3, 4, 5]
    assert run.Histograms("weights/w")[0].histogram_value.num == 3
    assert "config/text_summary" in run.Tags()["tensors"]
