"""Where a run computes: resolving device names, and moving nested batches there.

Batches come as tensors inside tuples, lists, dicts, named tuples and dataclasses; the
move walks those containers so a training step always receives its data on the device.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["batch_size_of", "move_to_device", "resolve_device"]

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


def move_to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Return `batch` with every tensor inside it on `device`; other values are kept."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if type(batch) in (tuple, list):  # the common case, first: this runs every step
        return type(batch)([move_to_device(item, device, non_blocking) for item in batch])
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a named tuple
        return type(batch)(*(move_to_device(item, device, non_blocking) for item in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(item, device, non_blocking) for item in batch)
    if isinstance(batch, Mapping):
        moved = {key: move_to_device(value, device, non_blocking) for key, value in batch.items()}
        if isinstance(batch, defaultdict):
            return type(batch)(batch.default_factory, moved)
        return type(batch)(moved)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        changes = {
            item.name: move_to_device(getattr(batch, item.name), device, non_blocking)
            for item in dataclasses.fields(batch)
            if item.init
        }
        return dataclasses.replace(batch, **changes)
    return batch


def batch_size_of(batch: Any) -> int:
    """The length of the first tensor found in `batch`, used to weight per-batch means."""
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
