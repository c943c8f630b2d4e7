"""`trainer.event_file`: hand-encoded event files that TensorBoard's own reader accepts."""

from __future__ import annotations

import math
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

from trainer.event_file import EventFileWriter, _masked_crc


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


def test_checksums_match_tensorboards_own() -> None:
    generator = random.Random(0)
    for size in (0, 1, 7, 8, 64, 1000):
        data = bytes(generator.randrange(256) for _ in range(size))
        assert _masked_crc(data) == struct.pack("<I", masked_crc32c(data))


def test_events_parse_as_tensorboard_protocol_buffers(tmp_path: Path) -> None:
    writer = EventFileWriter(tmp_path)
    writer.add_scalar("train/loss", 0.25, global_step=7)
    writer.add_scalar("val/ácc", 2.0**40, global_step=2**40)
    writer.close()

    first, loss, accuracy = (event_pb2.Event.FromString(p) for p in records(writer.path))
    assert first.file_version == "brain.Event:2"
    assert (loss.step, loss.summary.value[0].tag, loss.summary.value[0].simple_value) == (
        7, "train/loss", 0.25,
    )  # fmt: skip
    assert (accuracy.step, accuracy.summary.value[0].tag) == (2**40, "val/ácc")
    assert accuracy.summary.value[0].simple_value == 2.0**40
    assert abs(loss.wall_time - first.wall_time) < 60


def test_tensorboard_reads_every_value_including_nan_and_out_of_range(tmp_path: Path) -> None:
    writer = EventFileWriter(tmp_path)
    values = [1.5, -3.0, math.nan, math.inf, 1e39, -1e39]
    for step, value in enumerate(values):
        writer.add_scalar("figure", value, global_step=step)
    writer.close()

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    read = [event.value for event in events.Scalars("figure")]
    assert read[:2] == [1.5, -3.0]
    assert math.isnan(read[2])
    assert read[3:] == [math.inf, math.inf, -math.inf]


def test_a_resumed_writer_makes_tensorboard_drop_later_points_of_earlier_files(
    tmp_path: Path,
) -> None:
    first = EventFileWriter(tmp_path)
    for step in range(1, 9):
        first.add_scalar("train/loss", float(step), global_step=step)
    first.close()
    # A later process resumes from a checkpoint at step 5. Files sort by creation second,
    # so it starts in a new one, as a resumed job does.
    time.sleep(1.01 - time.time() % 1)
    script = (
        "import sys; from trainer.event_file import EventFileWriter\n"
        "w = EventFileWriter(sys.argv[1], purge_step=6)\n"
        "[w.add_scalar('train/loss', 10.0 + s, global_step=s) for s in range(6, 10)]\n"
        "w.close()"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    points = [(event.step, event.value) for event in events.Scalars("train/loss")]
    assert points == [(s, float(s)) for s in range(1, 6)] + [(s, 10.0 + s) for s in range(6, 10)]


def test_writing_after_close_is_an_error(tmp_path: Path) -> None:
    writer = EventFileWriter(tmp_path)
    writer.close()
    writer.close()
    with pytest.raises(ValueError, match="is closed"):
        writer.add_scalar("x", 1.0, global_step=1)


def test_each_event_reaches_the_file_at_once_so_a_killed_run_keeps_it(tmp_path: Path) -> None:
    writer = EventFileWriter(tmp_path)
    writer.add_scalar("train/loss", 1.0, global_step=1)
    events = [event_pb2.Event.FromString(p) for p in records(writer.path)]  # no flush, no close
    assert [event.step for event in events] == [0, 1]
    writer.close()
