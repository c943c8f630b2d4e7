"""Where a run computes: resolving device names, and moving nested batches there.

Batches come as tensors inside tuples, lists, dicts, named tuples and dataclasses; the
move walks those containers so a training step always receives its data on the device. On
CUDA, copies are non-blocking from pinned memory, issued on a side stream so they overlap
the computation of the batch before.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

__all__ = ["batch_size_of", "batches_on_device", "move_to_device", "resolve_device"]

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn `"auto"`, `"cpu"`, `"cuda"`, `"cuda:1"`, `"mps"` or a `torch.device` into a device.

    Raises a ValueError naming the choices for an unknown name, and one naming what is
    there for a device this machine does not have.
    """
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device={device!r} is not a device; use one of {', '.join(DEVICE_CHOICES)} "
            "or a torch.device."
        ) from None
    _check_available(resolved, device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def _check_available(resolved: torch.device, asked: str | torch.device) -> None:
    if resolved.type == "cpu":
        return
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"device={asked!r} asks for CUDA, but no CUDA GPU is available here; "
                "use device='cpu' or device='auto'."
            )
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"device={asked!r} asks for GPU {resolved.index}, but only {count} "
                f"GPU(s) exist (cuda:0 .. cuda:{count - 1})."
            )
        return
    if resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(
                f"device={asked!r} asks for Apple MPS, which is not available here; "
                "use device='cpu' or device='auto'."
            )
        return
    raise ValueError(
        f"device={asked!r} is not supported; use one of {', '.join(DEVICE_CHOICES)}."
    )


def move_to_device(
    batch: Any, device: torch.device, non_blocking: bool = False, dtype: torch.dtype | None = None
) -> Any:
    """Return `batch` with every tensor inside it on `device`; other values are kept.

    `dtype`, when given, is what floating-point tensors become on the way (integer labels
    and masks keep theirs); it costs nothing extra, as the copy and the cast are one call.
    """
    if isinstance(batch, torch.Tensor):
        if dtype is not None and batch.is_floating_point():
            return batch.to(device, dtype, non_blocking=non_blocking)
        if batch.device == device:  # cheaper than asking .to() to find out
            return batch
        return batch.to(device, non_blocking=non_blocking)
    kind = type(batch)
    if kind is tuple or kind is list:  # the common case, first: this runs every step
        return kind([move_to_device(item, device, non_blocking, dtype) for item in batch])
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a named tuple
        return type(batch)(*(move_to_device(item, device, non_blocking, dtype) for item in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(item, device, non_blocking, dtype) for item in batch)
    if isinstance(batch, Mapping):
        moved = {
            key: move_to_device(value, device, non_blocking, dtype) for key, value in batch.items()
        }
        if isinstance(batch, defaultdict):
            return type(batch)(batch.default_factory, moved)
        return type(batch)(moved)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        changes = {
            item.name: move_to_device(getattr(batch, item.name), device, non_blocking, dtype)
            for item in dataclasses.fields(batch)
            if item.init
        }
        return dataclasses.replace(batch, **changes)
    return batch


def batches_on_device(
    batches: Iterable[Any], device: torch.device, dtype: torch.dtype | None = None
) -> Iterator[Any]:
    """Each batch of `batches`, moved to `device` as the loop asks for it.

    On CUDA the copy is issued from pinned memory on a side stream, so it overlaps the
    kernels still running for the previous batch instead of queueing behind them; the
    compute stream waits for the copy only when the batch is used. Batches are fetched in
    the loader's own rhythm (no read-ahead), so data order and random draws stay those of a
    plain loop and a resumed run.
    """
    if device.type == "cpu" and dtype is None:
        return (batch if _is_on_cpu(batch) else move_to_device(batch, device) for batch in batches)
    if device.type != "cuda":
        return (move_to_device(batch, device, dtype=dtype) for batch in batches)
    return _copied_on_side_stream(batches, device, dtype)


def _is_on_cpu(batch: Any) -> bool:
    """True for the usual `(inputs, targets)` of CPU tensors, which need no move on CPU.

    `move_to_device` reaches the same answer through one call per tensor; this flat check
    runs every step, and saves about 0.3% of a tiny model's step (bench_instructions.py).
    """
    if type(batch) is not tuple and type(batch) is not list:
        return False
    for item in batch:
        if type(item) is not torch.Tensor or not item.is_cpu:
            return False
    return True


def _copied_on_side_stream(
    batches: Iterable[Any], device: torch.device, dtype: torch.dtype | None
) -> Iterator[Any]:
    copy_stream = torch.cuda.Stream(device)
    for batch in batches:
        compute_stream = torch.cuda.current_stream(device)
        with torch.cuda.stream(copy_stream):
            moved = move_to_device(batch, device, non_blocking=True, dtype=dtype)
        compute_stream.wait_stream(copy_stream)
        _used_on(moved, compute_stream)
        yield moved


def _used_on(batch: Any, stream: torch.cuda.Stream) -> None:
    """Tell the caching allocator these copies are used on `stream`, so their memory is not
    handed to the next copy while the compute stream may still read it."""
    if isinstance(batch, torch.Tensor):
        if batch.is_cuda:
            batch.record_stream(stream)
    elif isinstance(batch, (list, tuple)):
        for item in batch:
            _used_on(item, stream)
    elif isinstance(batch, Mapping):
        for item in batch.values():
            _used_on(item, stream)
    elif dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        for item in dataclasses.fields(batch):
            _used_on(getattr(batch, item.name), stream)


def batch_size_of(batch: Any) -> int:
    """The length of the first tensor found in `batch`, used to weight per-batch means."""
    if type(batch) is tuple or type(batch) is list:  # (inputs, targets): this runs every step
        first = batch[0] if batch else None
        if isinstance(first, torch.Tensor) and first.ndim:
            return first.shape[0]
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    elif dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        batch = [getattr(batch, item.name) for item in dataclasses.fields(batch)]
    if isinstance(batch, (list, tuple)):
        for item in batch:
            size = batch_size_of(item)
            if size:
                return size
        return 0
    return 0
