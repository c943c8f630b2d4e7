"""TensorBoard event files for scalars, written without importing tensorboard.

TensorBoard reads a run's figures from `events.out.tfevents.*` files: a sequence of
records, each holding an `Event` protocol buffer between checksums. A scalar needs only a
handful of that message's fields, so they are encoded here by hand: a run that logs
scalars pays neither the import of tensorboard and protobuf (tens of milliseconds at every
start) nor their per-call work.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import struct
import time
from pathlib import Path
from typing import BinaryIO

__all__ = ["EventFileWriter"]

_file_numbers = itertools.count()
_CRC32C_TABLE: list[int] = []


class EventFileWriter:
    """Append scalars to a new event file in `log_dir`, as TensorBoard's own writer does.

    Args:
        log_dir: folder of the run's event files; created if missing.
        purge_step: for a resumed run: TensorBoard then hides the points earlier files hold
            at this step and later (written by a killed run after its last checkpoint).
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        folder = Path(log_dir)
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = folder / (
            f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}."
            f"{next(_file_numbers)}"
        )
        # Unbuffered: each event reaches the operating system at once, so a killed process
        # loses no point it logged (a write per event, every log_every_n_steps steps).
        self._file: BinaryIO | None = open(self.path, "wb", buffering=0)  # closed by close()
        self._write(_event(now, purge_step or 0, _bytes_field(3, b"brain.Event:2")))
        if purge_step is not None:  # SessionLog(status=START): "a restart, purge what follows"
            session_start = _bytes_field(7, _varint_field(1, 1))
            self._write(_event(now, purge_step, session_start))
        self.flush()

    def add_scalar(self, tag: str, value: float, global_step: int) -> None:
        """Record `value` under `tag` at `global_step`."""
        tagged = _bytes_field(1, tag.encode()) + b"\x15" + _float32(value)
        summary = _bytes_field(1, tagged)
        self._write(_event(time.time(), global_step, _bytes_field(5, summary)))

    def flush(self) -> None:
        """Hand what was written to the operating system, so TensorBoard can read it."""
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        """Flush and close the file; later calls do nothing."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, event: bytes) -> None:
        if self._file is None:
            raise ValueError(f"event file {self.path} is closed.")
        header = struct.pack("<Q", len(event))
        self._file.write(header + _masked_crc(header) + event + _masked_crc(event))


# ------------------------------------------------------------------------ protocol buffers
def _event(wall_time: float, step: int, payload: bytes) -> bytes:
    """An `Event`: wall_time (field 1, double), step (field 2, int64), then `payload`."""
    return b"\x09" + struct.pack("<d", wall_time) + _varint_field(2, step) + payload


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


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
