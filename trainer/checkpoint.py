"""The checkpoint file format: crash-safe writing, loading that cannot run code, and the
random states a checkpoint carries.

A checkpoint is one safetensors file: the tensors are stored as safetensors tensors, and
everything else (counts, names, lists, dicts) as JSON text in its header, next to a CRC-32
of both. Neither format can name a class or function, so opening a checkpoint never
executes code. Writes go to a temporary file in the same folder, are flushed and renamed
into place (that second half may finish on the owner's `BackgroundWrites` queue), so a
crash leaves either the old file or the new one, never half of one. Which files a run has,
and which of them `"last"` and `"best"` mean, is `trainer.run_files`' concern.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import socket
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.background import BackgroundWrites

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "capture_rng_states",
    "check_storable",
    "export_weights",
    "is_stale_temporary",
    "load_checkpoint",
    "load_model_weights",
    "restore_rng_states",
    "save_checkpoint",
    "saved_at_ns",
]

FORMAT_NAME = "trainer-checkpoint"
# 4: optimizers and schedulers only by name; 3: per-rank states in "ranks"; 2: a CRC-32
# checksum; 1: SHA-256. `trainer.resume` reads the contents of formats 2 and 3.
FORMAT_VERSION = 4
# A temporary file's name carries its writer: `.<name>.<pid>@<host>.<random>.tmp`.
_TEMPORARY_PATTERN = re.compile(r"^\..+\.(\d+)@(.+)\.[^.]+\.tmp$")
_HOST = socket.gethostname().replace(".", "_")
# Temporary files this process is still writing or renaming, whichever queue renames them:
# a fact of the process, which a sweep by any of its trainers must respect.
_in_flight: set[str] = set()
# The checksum's place in the JSON header while the file is being written. Only the header's
# own key can match the slot: inside the escaped `content` text, quotes carry backslashes.
_CRC_NOT_YET = "00000000"
_CRC_SLOT = f'"crc32":"{_CRC_NOT_YET}"'.encode()
_SUM_ASIDE_FROM = 4 * 2**20  # bytes of tensors from which the checksum gets its own thread


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, truncated, or of another format."""


# ------------------------------------------------------------------------------------ writing
def save_checkpoint(
    checkpoint: dict[str, Any],
    path: str | Path,
    writes: BackgroundWrites | None = None,
    *,
    wait: bool = True,
) -> Path:
    """Write `checkpoint` (tensors and plain data) to `path` atomically, with a checksum.

    With `writes`, the owner's queue, the file is made durable and renamed into place after
    that owner's earlier saves; `wait=False` then returns once the bytes are written and
    leaves the rest to the queue. Without it the save is finished when this returns.
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    text = json.dumps(_encode(checkpoint, "", tensors, set()))
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        # When it was saved: `"last"` and rotation order files by it, not by step number.
        "saved_at_ns": str(time.time_ns()),
        "content": text,
        "crc32": _CRC_NOT_YET,
    }

    def write(temporary: str) -> None:
        # A large state's checksum is summed on a second thread while the file is written:
        # both only read the tensors, and zlib and safetensors let go of the GIL, so on a
        # free core it costs no time. It then fills the header's slot (same length). For a
        # small state, starting the thread would cost more than the sum.
        summed: list[str] = []
        summing = None
        if sum(tensor.nbytes for tensor in tensors.values()) >= _SUM_ASIDE_FROM:
            summing = threading.Thread(target=lambda: summed.append(_crc32(text, tensors)))
            summing.start()
        try:
            save_file(tensors, temporary, metadata=metadata)
        finally:
            if summing is not None:
                summing.join()  # the weights may change as soon as this save returns
        _fill_in_checksum(temporary, summed[0] if summing is not None else _crc32(text, tensors))

    return _write_atomically(Path(path), write, writes, wait)


def export_weights(
    model: torch.nn.Module | dict[str, torch.Tensor],
    path: str | Path,
    writes: BackgroundWrites | None = None,
) -> Path:
    """Write a model's weights (or a state dict) as a standard `.safetensors` file.

    With `writes`, the file lands after that owner's pending saves, and this waits for it.
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    weights = model.state_dict() if isinstance(model, torch.nn.Module) else model
    for name, tensor in weights.items():
        tensors[name] = _storable(tensor, seen)
    return _write_atomically(
        Path(path),
        lambda temporary: save_file(tensors, temporary, metadata={"format": "pt"}),
        writes,
    )


def _write_atomically(
    path: Path,
    write: Callable[[str], None],
    writes: BackgroundWrites | None,
    wait: bool = True,
) -> Path:
    """`write` a temporary file now; `fsync` and rename it once `writes`' earlier saves
    have landed (at once without a queue).

    Every save queues its second half, so files land in the order they were saved, and a
    waiting save returns only once it (and every save before it) is in place. An earlier
    save that failed in the background is raised here, before anything is written.
    """
    if writes is not None:
        writes.raise_failures()
    temporary: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The writer's process and host in the name tell a sweep whether it is abandoned.
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.{os.getpid()}@{_HOST}.", suffix=".tmp"
        )
        os.close(handle)
        _in_flight.add(temporary)
        write(temporary)
    except Exception as error:  # disk full, permissions, a folder that is a file, ...
        raise _save_error(path, temporary, error) from error
    if writes is None:
        _put_in_place(temporary, path)
        return path
    writes.after_pending(lambda: _put_in_place(temporary, path))
    if wait:
        writes.wait()
    return path


def _fill_in_checksum(temporary: str, crc: str) -> None:
    """Overwrite the checksum slot in the header of a file just written (same length)."""
    with open(temporary, "r+b") as file:
        header = file.read(int.from_bytes(file.read(8), "little"))
        slot = header.index(_CRC_SLOT) + len(_CRC_SLOT) - len(_CRC_NOT_YET) - 1
        file.seek(8 + slot)
        file.write(crc.encode())


def _put_in_place(temporary: str, path: Path) -> None:
    """Make the written file durable, then rename it over `path` (atomic on POSIX)."""
    try:
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except Exception as error:
        raise _save_error(path, temporary, error) from error
    _in_flight.discard(temporary)
    _fsync_folder(path.parent)


def _save_error(path: Path, temporary: str | None, error: Exception) -> CheckpointError:
    if temporary is not None:
        Path(temporary).unlink(missing_ok=True)
        _in_flight.discard(temporary)
    reason = getattr(error, "strerror", None) or error
    return CheckpointError(
        f"could not save checkpoint {path}: {reason}. Free disk space or fix the "
        "folder's permissions; earlier checkpoints are intact."
    )


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (not every platform supports it)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def is_stale_temporary(path: Path) -> bool:
    """Whether `path` is the temporary file of a save that died, so it may be deleted.

    A temporary file names its writer's process and host. It is stale when that process no
    longer runs on this host, or is this process but no longer writing it. Files of other
    hosts, and those of older trainers that name no writer, are never stale.
    """
    match = _TEMPORARY_PATTERN.match(path.name)
    if match is None or match[2] != _HOST:
        return False
    pid = int(match[1])
    return str(path) not in _in_flight if pid == os.getpid() else not _is_alive(pid)


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def check_storable(value: Any, key: str) -> None:
    """Raise the `TypeError` a save of `value` under `key` would raise, naming the entry.

    For a state taken apart from the checkpoint (a loader's), so its owner is named at once,
    not when a background save fails.
    """
    _encode(value, key, {}, set())


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor], seen: set[int]) -> Any:
    """Turn nested containers into JSON, moving tensors into `tensors` under their path."""
    if isinstance(value, torch.Tensor):
        tensors[key] = _storable(value, seen)
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        return _encode(torch.from_numpy(value.copy()), key, tensors, seen)
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        items = [_encode(v, f"{key}/{i}", tensors, seen) for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            prefix = f"{key}/" if key else ""
            return {k: _encode(v, prefix + k, tensors, seen) for k, v in value.items()}
        pairs = [[k, v] for k, v in value.items()]
        return {"__items__": _encode(pairs, f"{key}/items", tensors, seen)}
    raise TypeError(
        f"checkpoint entry {key!r} is a {type(value).__name__}; checkpoints hold only tensors, "
        "numbers, strings, booleans, None, lists, tuples and dicts. Convert it in the "
        "state_dict() that produced it."
    )


def _storable(tensor: torch.Tensor, seen: set[int]) -> torch.Tensor:
    """A dense, contiguous CPU tensor that shares memory with no other stored tensor."""
    tensor = tensor.detach()
    if tensor.layout != torch.strided:
        tensor = tensor.to_dense()
    tensor = tensor.cpu().contiguous()
    storage = tensor.untyped_storage().data_ptr()
    if storage in seen and tensor.numel():
        tensor = tensor.clone()
        storage = tensor.untyped_storage().data_ptr()
    seen.add(storage)
    return tensor


def _crc32(text: str, tensors: dict[str, torch.Tensor]) -> str:
    """CRC-32 of the JSON text and of every tensor's bytes.

    It catches truncation and bit rot, which is its job (nothing here is signed), at four
    times the speed of SHA-256: on a 60 MB state that is 15 ms instead of 60 per save.
    """
    crc = zlib.crc32(text.encode())
    for key in sorted(tensors):
        crc = zlib.crc32(key.encode(), crc)
        flat = tensors[key].reshape(-1)
        if flat.numel():
            crc = zlib.crc32(memoryview(flat.view(torch.uint8).numpy()), crc)
    return f"{crc:08x}"


def _sha256(text: str, tensors: dict[str, torch.Tensor]) -> str:
    """The checksum of format 1 files."""
    digest = hashlib.sha256(text.encode())
    for key in sorted(tensors):
        digest.update(key.encode())
        flat = tensors[key].reshape(-1)
        if flat.numel():
            digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


# ------------------------------------------------------------------------------------ reading
def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, verifying its checksum; tensors on CPU.

    A save still in its owner's queue is not in place yet: wait for that queue first (a
    trainer's run files do, before they load).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is a folder; pass a .ckpt file, or 'last' / 'best' to read "
            "the run's checkpoints/ folder."
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except Exception as error:
        raise _unreadable(path, error) from error
    if metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is a safetensors file but not a trainer checkpoint.")
    version = int(metadata.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {version}, newer than this trainer reads "
            f"({FORMAT_VERSION}); upgrade trainer to load it."
        )
    text = metadata.get("content", "")
    if "crc32" in metadata:
        is_intact = _crc32(text, tensors) == metadata["crc32"]
    else:
        is_intact = _sha256(text, tensors) == metadata.get("sha256")
    if not is_intact:
        raise CheckpointError(f"checkpoint {path} is corrupted: its checksum does not match.")
    try:
        return _decode(json.loads(text), tensors)
    except RecursionError as error:
        raise CheckpointError(
            f"checkpoint {path} nests its contents too deeply to read; it was not written "
            "by this trainer."
        ) from error
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path} has malformed contents ({error}).") from error


def saved_at_ns(path: Path) -> int:
    """When `path` was saved, from its header; its mtime if it records none or is unreadable.

    Read without loading the file: ordering a folder's checkpoints costs a header each.
    """
    try:
        with open(path, "rb") as file:
            header = json.loads(file.read(int.from_bytes(file.read(8), "little")))
        return int(header["__metadata__"]["saved_at_ns"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError, MemoryError):
        try:
            return path.stat().st_mtime_ns
        except OSError:  # removed meanwhile
            return -1


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    """Why `path` does not open as safetensors: a `torch.save` file, or a damaged one."""
    if _is_pickle(path):
        return CheckpointError(
            f"{path} is a torch.save/pickle file; only trainer checkpoints load (they never "
            "run code). To use its weights: model.load_state_dict(torch.load(path, "
            "weights_only=True)), then pass the model to Trainer."
        )
    return CheckpointError(
        f"checkpoint {path} is truncated or not a checkpoint ({type(error).__name__}: {error})."
    )


def _is_pickle(path: Path) -> bool:
    """True for what `torch.save` writes: a zip archive, or a bare pickle (protocol 2-5)."""
    try:
        with open(path, "rb") as file:
            head = file.read(4)
    except OSError:
        return False
    # A safetensors file may start with 0x80 too (its header's length), but then safetensors
    # reads it; this is asked only of a file it could not read.
    is_zip = head.startswith(b"PK\x03\x04")
    is_bare_pickle = len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5
    return is_zip or is_bare_pickle


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__items__" in value:
        return dict(_decode(value["__items__"], tensors))
    return {k: _decode(v, tensors) for k, v in value.items()}


def load_model_weights(
    model: torch.nn.Module,
    weights: dict[str, torch.Tensor],
    path: Path | str,
    load: Callable[[dict[str, torch.Tensor]], Any] | None = None,
) -> None:
    """Load weights into `model`, naming every entry whose shape or presence does not match.

    `load` replaces `model.load_state_dict` once the weights are checked (FSDP needs its own).
    """
    own = model.state_dict()
    mismatched = [
        f"{name}: checkpoint {tuple(weights[name].shape)} vs model {tuple(tensor.shape)}"
        for name, tensor in own.items()
        if name in weights and weights[name].shape != tensor.shape
    ]
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if missing:
        mismatched.append(f"missing in checkpoint: {', '.join(missing)}")
    if unexpected:
        mismatched.append(f"not in model: {', '.join(unexpected)}")
    if mismatched:
        raise CheckpointError(
            f"checkpoint {path} does not fit this model ({'; '.join(mismatched)}). Build the "
            "model with the same architecture as the run that saved it."
        )
    (load or model.load_state_dict)(weights)


# --------------------------------------------------------------------- random number generators
def capture_rng_states() -> dict[str, Any]:
    """The state of every random number generator the loop draws from, as plain data."""
    version, mt_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        # A tensor, not a list of 625 numbers: the JSON header stays small and quick to write.
        "python": [version, torch.tensor(mt_state, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Put every generator back to the state `capture_rng_states` recorded."""
    version, mt_state, gauss = states["python"]
    if isinstance(mt_state, torch.Tensor):  # a list in files written before it was a tensor
        mt_state = mt_state.tolist()
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(states["cuda"]))
