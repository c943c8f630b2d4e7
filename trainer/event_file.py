"""TensorBoard event files, written without importing tensorboard or protobuf.

TensorBoard reads a run from `events.out.tfevents.*` files: a sequence of records, each an
`Event` protocol buffer between checksums. The logger needs only a few kinds of event
(scalars, text, the Custom Scalars layout, the HParams session records and histograms), and
each needs only a handful of fields, so they are encoded here by hand: a run pays neither
the import of tensorboard and protobuf (tens of milliseconds at every start) nor their
per-call work. Field numbers are those of tensorboard's `event.proto`, `summary.proto`,
`tensor.proto`, `plugins/hparams/plugin_data.proto` and `plugins/custom_scalar/layout.proto`;
`tests/test_event_file.py` parses every kind with tensorboard's own classes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

__all__ = ["HISTOGRAM_BUCKETS", "EventFileWriter"]

HISTOGRAM_BUCKETS = 30
"""Equal-width buckets per histogram, as many as TensorBoard's own summaries default to."""

_file_numbers = itertools.count()
_CRC32C_TABLE: list[int] = []

# tensorboard's DataType for strings, and the HParams plugin's names and values.
_DT_STRING = 7
_SESSION_START_TAG = "_hparams_/session_start_info"
_SESSION_END_TAG = "_hparams_/session_end_info"
_STATUS_SUCCESS = 1
# The HParams plugin's placeholder tensor: DT_FLOAT, shape [0], no values.
_NULL_TENSOR = b"\x08\x01\x12\x02\x12\x00"


class EventFileWriter:
    """Append TensorBoard events to a new file in `log_dir`, as TensorBoard's own writer does.

    Each event reaches the operating system as it is written (the file is unbuffered), so a
    process killed at any moment keeps every event it wrote.

    Args:
        log_dir: folder of the run's event files; created if missing.
        purge_step: for a resumed run: TensorBoard then hides the points earlier files hold
            at this step and later (written by a killed run after its last checkpoint).

    Example:
        >>> writer = EventFileWriter("runs/demo")
        >>> writer.add_scalar("train/loss", 0.25, global_step=10)
        >>> writer.close()
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        folder = Path(log_dir)
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = folder / (
            f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}."
            f"{next(_file_numbers)}"
        )
        # Unbuffered: one write per event, every log_every_n_steps steps, is cheap.
        self._file: BinaryIO | None = open(self.path, "wb", buffering=0)  # closed by close()
        self._write(_event(now, purge_step or 0, _bytes_field(3, b"brain.Event:2")))
        if purge_step is not None:  # SessionLog(status=START): "a restart, purge what follows"
            session_start = _bytes_field(7, _varint_field(1, 1))
            self._write(_event(now, purge_step, session_start))

    def add_scalar(self, tag: str, value: float, global_step: int) -> None:
        """Record `value` under `tag` at `global_step` (as a float32, as TensorBoard keeps it)."""
        self._write_value(global_step, _bytes_field(1, tag.encode()) + b"\x15" + _float32(value))

    def add_text(self, tag: str, text: str, global_step: int) -> None:
        """Record markdown `text` for the Text tab, under `TAG/text_summary` as PyTorch does."""
        tensor = _string_tensor(text.encode(), shape=(1,))
        self._write_value(global_step, _tensor_value(f"{tag}/text_summary", "text", b"", tensor))

    def add_custom_scalars(
        self, layout: Mapping[str, Mapping[str, Sequence]], global_step: int = 0
    ) -> None:
        """Record the Custom Scalars tab's charts, in `SummaryWriter.add_custom_scalars` form.

        `layout` maps each category title to its charts, a chart title to
        `["Multiline", [tag_regex, ...]]` or `["Margin", [value, lower, upper]]`.
        """
        categories = b"".join(
            _bytes_field(2, _category(title, charts)) for title, charts in layout.items()
        )
        tensor = _string_tensor(categories, shape=())
        value = _tensor_value("custom_scalars__config__", "custom_scalars", b"", tensor)
        self._write_value(global_step, value)

    def add_hparams_session_start(
        self,
        hparams: Mapping[str, bool | int | float | str],
        start_time_secs: float | None = None,
        global_step: int = 0,
    ) -> None:
        """Start the run's HParams session with its hyperparameters' values.

        The record is the one `tensorboard.plugins.hparams.summary_v2.hparams_pb` makes,
        session group named by the same hash of the values, so runs with equal
        hyperparameters group together in the HParams tab.

        Raises:
            TypeError: a value is not a bool, number or string, the HParams tab's only types.
        """
        normalized = {name: _hparam_value(name, value) for name, value in hparams.items()}
        group = json.dumps(normalized, sort_keys=True, separators=(",", ":"))
        entries = b"".join(
            _bytes_field(1, _bytes_field(1, name.encode()) + _bytes_field(2, _struct_value(value)))
            for name, value in sorted(normalized.items())
        )
        start = (
            entries
            + _bytes_field(4, hashlib.sha256(group.encode()).hexdigest().encode())
            + _double_field(5, time.time() if start_time_secs is None else start_time_secs)
        )
        self._write_hparams(_SESSION_START_TAG, _bytes_field(3, start), global_step)

    def add_hparams_session_end(self, global_step: int, end_time_secs: float | None = None) -> None:
        """End the run's HParams session as successful (the plugin's SessionEndInfo)."""
        end_time = time.time() if end_time_secs is None else end_time_secs
        end = _varint_field(1, _STATUS_SUCCESS) + _double_field(2, end_time)
        self._write_hparams(_SESSION_END_TAG, _bytes_field(4, end), global_step)

    def add_histogram(
        self,
        tag: str,
        values: torch.Tensor,
        global_step: int,
        buckets: int = HISTOGRAM_BUCKETS,
    ) -> None:
        """Record the distribution of `values` for the Histograms and Distributions tabs.

        The finite values fall into `buckets` equal-width buckets from their minimum to
        their maximum (one bucket when all are equal); NaN and infinities are left out of
        every figure, so one diverged weight does not flatten the picture of the rest.
        """
        histogram = _histogram(values, buckets)
        self._write_value(global_step, _bytes_field(1, tag.encode()) + _bytes_field(5, histogram))

    def close(self) -> None:
        """Close the file; later calls do nothing."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write_hparams(self, tag: str, plugin_data: bytes, global_step: int) -> None:
        value = _tensor_value(tag, "hparams", plugin_data, _NULL_TENSOR)
        self._write_value(global_step, value)

    def _write_value(self, global_step: int, value: bytes) -> None:
        """Write an event holding a `Summary` of one `Summary.Value`."""
        summary = _bytes_field(1, value)
        self._write(_event(time.time(), global_step, _bytes_field(5, summary)))

    def _write(self, event: bytes) -> None:
        if self._file is None:
            raise ValueError(f"event file {self.path} is closed.")
        header = struct.pack("<Q", len(event))
        self._file.write(header + _masked_crc(header) + event + _masked_crc(event))


# ---------------------------------------------------------------------------- summary parts
def _tensor_value(tag: str, plugin: str, content: bytes, tensor: bytes) -> bytes:
    """A `Summary.Value`: tag (1), a `TensorProto` (8), `SummaryMetadata` (9) naming `plugin`."""
    plugin_data = _bytes_field(1, plugin.encode()) + (_bytes_field(2, content) if content else b"")
    metadata = _bytes_field(1, plugin_data)
    return _bytes_field(1, tag.encode()) + _bytes_field(8, tensor) + _bytes_field(9, metadata)


def _string_tensor(data: bytes, shape: tuple[int, ...]) -> bytes:
    """A `TensorProto` of DT_STRING (1) with `shape` (2: a `Dim` per size) and one string (8)."""
    dims = b"".join(_bytes_field(2, _varint_field(1, size)) for size in shape)
    return _varint_field(1, _DT_STRING) + _bytes_field(2, dims) + _bytes_field(8, data)


def _category(title: str, charts: Mapping[str, Sequence]) -> bytes:
    """A Custom Scalars `Category`: title (1), then its charts (2)."""
    return _bytes_field(1, title.encode()) + b"".join(
        _bytes_field(2, _chart(name, *chart)) for name, chart in charts.items()
    )


def _chart(title: str, kind: str, tags: Sequence[str]) -> bytes:
    """A Custom Scalars `Chart`: title (1), then multiline (2: tag regexes) or margin (3)."""
    if kind == "Margin":
        if len(tags) != 3:
            raise ValueError(f"a Margin chart takes [value, lower, upper] tags, got {tags!r}.")
        series = b"".join(_bytes_field(number, tag.encode()) for number, tag in enumerate(tags, 1))
        content = _bytes_field(3, _bytes_field(1, series))
    else:
        content = _bytes_field(2, b"".join(_bytes_field(1, tag.encode()) for tag in tags))
    return _bytes_field(1, title.encode()) + content


def _hparam_value(name: str, value: object) -> bool | int | float | str:
    """`value` as JSON and the HParams tab take it: numpy scalars become Python ones.

    An int stays an int, since the session group's name hashes its JSON text.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"hparams[{name!r}] = {value!r} is a {type(value).__name__}; the HParams tab takes "
        f"booleans, numbers and strings only (flatten nested values first)."
    )


def _struct_value(value: bool | int | float | str) -> bytes:
    """A `google.protobuf.Value`: number (2, double), string (3) or bool (4)."""
    if isinstance(value, bool):
        return _varint_field(4, int(value))
    if isinstance(value, str):
        return _bytes_field(3, value.encode())
    return _double_field(2, float(value))


def _histogram(values: torch.Tensor, buckets: int) -> bytes:
    """A `HistogramProto`: min, max, num, sum, sum_squares (1-5), bucket limits and counts.

    A bucket's limit is its right edge; the first bucket's left edge is `min`.
    """
    flat = values.detach().reshape(-1).to("cpu", torch.float64)
    finite = flat[flat.isfinite()]
    if finite.numel() == 0:
        return b""  # every field zero: no values, no buckets
    low, high = (bound.item() for bound in torch.aminmax(finite))
    if low == high:
        limits, counts = [high], [float(finite.numel())]
    else:
        # Weighted sums of the ends stay finite where `high - low` would overflow; cummax
        # keeps the edges in order where the range is only a few representable numbers.
        fractions = torch.linspace(0.0, 1.0, buckets + 1, dtype=torch.float64)
        edges = (low * (1 - fractions) + high * fractions).cummax(0).values
        edges[0], edges[-1] = low, high
        counts = torch.histogram(finite, bins=edges).hist.tolist()
        limits = edges[1:].tolist()
    return (
        _double_field(1, low)
        + _double_field(2, high)
        + _double_field(3, float(finite.numel()))
        + _double_field(4, finite.sum().item())
        + _double_field(5, finite.dot(finite).item())
        + _bytes_field(6, struct.pack(f"<{len(limits)}d", *limits))
        + _bytes_field(7, struct.pack(f"<{len(counts)}d", *counts))
    )


# ------------------------------------------------------------------------ protocol buffers
def _event(wall_time: float, step: int, payload: bytes) -> bytes:
    """An `Event`: wall_time (field 1, double), step (field 2, int64), then `payload`."""
    return _double_field(1, wall_time) + _varint_field(2, step) + payload


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _double_field(number: int, value: float) -> bytes:
    return _varint(number << 3 | 1) + struct.pack("<d", value)


def _bytes_field(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values take ten bytes, as protobuf writes them
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _float32(value: float) -> bytes:
    try:
        return struct.pack("<f", value)
    except OverflowError:  # beyond float32's range: TensorBoard shows it as infinite
        return struct.pack("<f", math.copysign(math.inf, value))


# ------------------------------------------------------------------------------- checksums
def _masked_crc(data: bytes) -> bytes:
    """The record checksum: CRC-32C of `data`, rotated and offset as TFRecord files mask it."""
    crc = _crc32c(data)
    return struct.pack("<I", ((crc >> 15 | crc << 17) + 0xA282EAD8) & 0xFFFFFFFF)


def _crc32c(data: bytes) -> int:
    if not _CRC32C_TABLE:
        for byte in range(256):
            crc = byte
            for _ in range(8):
                crc = crc >> 1 ^ (0x82F63B78 if crc & 1 else 0)
            _CRC32C_TABLE.append(crc)
    table, crc = _CRC32C_TABLE, 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ crc >> 8
    return crc ^ 0xFFFFFFFF
