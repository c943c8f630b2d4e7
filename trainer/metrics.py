"""Running means of logged values, and the metric callables the default validation step uses.

Values logged with `Trainer.log` stay tensors on the device and are summed there; the host
reads them only when a log step or an epoch end asks for a float, so logging adds no
device-to-host sync to ordinary steps.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

import torch

from trainer.device import batch_size_of

__all__ = [
    "ITEMS_PER_SEC",
    "PEAK_MEMORY",
    "SAMPLES_PER_SEC",
    "LogBook",
    "MetricFn",
    "RunningMeans",
    "Throughput",
    "accuracy",
    "compute_metrics",
    "is_stateful_metric",
    "metrics_on_device",
]


# The throughput figures of a log step: samples, the items steps report as `num_items`
# (tokens, say), and the CUDA allocator's peak since the previous log step.
SAMPLES_PER_SEC = "train/samples_per_sec"
ITEMS_PER_SEC = "train/items_per_sec"
PEAK_MEMORY = "train/peak_memory_gib"


class MetricFn(Protocol):
    """A metric: `(outputs, targets) -> scalar tensor`, averaged over samples by the trainer."""

    def __call__(self, outputs: Any, targets: Any, /) -> torch.Tensor: ...


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose highest score is the target class."""
    return (outputs.argmax(dim=-1) == targets).float().mean()


def is_stateful_metric(metric: object) -> bool:
    """True for `torchmetrics.Metric`-like objects that accumulate with update/compute/reset."""
    return all(callable(getattr(metric, verb, None)) for verb in ("update", "compute", "reset"))


def metrics_on_device(metrics: Mapping[str, Any] | None, device: torch.device) -> dict[str, Any]:
    """The `metrics` argument as a dict, its module metrics (torchmetrics) moved to `device`."""
    return {
        name: metric.to(device) if isinstance(metric, torch.nn.Module) else metric
        for name, metric in dict(metrics or {}).items()
    }


class RunningMeans:
    """Weighted means of named scalars, accumulated on whatever device the values live on.

    `add` only appends a tensor to a list, so a training step pays no tensor operation for
    it; the list is summed on its device in one go every `fold_every` additions and when a
    mean is read. Plain numbers are summed on the host at once.
    """

    def __init__(self, fold_every: int = 1024) -> None:
        self.fold_every = fold_every
        self._pending: dict[str, list[tuple[torch.Tensor, float]]] = {}
        self._sums: dict[str, torch.Tensor | float] = {}
        self._weights: dict[str, float] = {}

    def add(self, name: str, value: torch.Tensor | float, weight: float = 1.0) -> None:
        """Add `value` (a detached scalar tensor or a number) counted `weight` times."""
        if not isinstance(value, torch.Tensor):
            self._sums[name] = self._sums.get(name, 0.0) + float(value) * weight
            self._weights[name] = self._weights.get(name, 0.0) + weight
            return
        pending = self._pending.get(name)
        if pending is None:
            pending = self._pending[name] = []
        pending.append((value, weight))
        if len(pending) >= self.fold_every:
            self._fold(name)

    def _fold(self, name: str) -> None:
        self._sums[name], self._weights[name] = self._total(name)
        del self._pending[name]

    def _total(self, name: str) -> tuple[torch.Tensor | float, float]:
        """The weighted sum and weight of `name`, pending values included, changing nothing."""
        total, weight = self._sums.get(name, 0.0), self._weights.get(name, 0.0)
        if self._pending.get(name):
            values, weights = zip(*self._pending[name], strict=True)
            # A loss is 0-d already; reshaping each value would cost more than the stack.
            scalars = [value if value.dim() == 0 else value.reshape(()) for value in values]
            stacked = torch.stack(scalars)
            factors = torch.tensor(weights, dtype=torch.float32, device=stacked.device)
            total = total + (stacked.float() * factors).sum()
            weight += sum(weights)
        return total, weight

    def means(self) -> dict[str, float]:
        """The mean of every name as a float; this is where the host reads the device."""
        for name in list(self._pending):
            self._fold(name)
        return {name: float(total) / self._weights[name] for name, total in self._sums.items()}

    def totals(self) -> dict[str, tuple[torch.Tensor | float, float]]:
        """Each name's weighted sum and total weight, for adding up over the ranks of a run."""
        for name in list(self._pending):
            self._fold(name)
        return {name: (total, self._weights[name]) for name, total in self._sums.items()}

    def mean(self, name: str) -> float | None:
        """The mean of one name, or None if it was never added; reading it changes no sum."""
        if name not in self._sums and name not in self._pending:
            return None
        total, weight = self._total(name)
        return float(total) / weight

    def state_dict(self) -> dict[str, Any]:
        """Sums, weights and the values not yet summed, so a resumed epoch sums as this one."""
        # As float32 on the host: exactly what summing them would use (DTensors included).
        pending = {
            name: [torch.tensor([float(v) for v, _ in items]), [w for _, w in items]]
            for name, items in self._pending.items()
        }
        sums = {name: float(total) for name, total in self._sums.items()}
        return {"sums": sums, "weights": dict(self._weights), "pending": pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()` output."""
        self.reset()
        self._sums = dict(state["sums"])
        self._weights = {name: float(weight) for name, weight in state["weights"].items()}
        for name, (values, weights) in state["pending"].items():
            self._pending[name] = list(zip(values.unbind(), weights, strict=True))

    def reset(self) -> None:
        self._pending.clear()
        self._sums.clear()
        self._weights.clear()

    def __bool__(self) -> bool:
        return bool(self._sums) or bool(self._pending)


class Throughput:
    """Training samples (and reported items) per second between two readings, timed on the
    host, and the CUDA allocator's peak memory over the same interval.

    It keeps no sample count of its own: it is handed the epoch's count when read. The items
    steps report as `num_items` wait in a list (a tensor count stays on its device) and are
    summed when read. The trainer reads at log steps, just after reading the loss made the
    host wait for the device, so the interval covers finished work; it restarts at each
    epoch so validation time (and memory) is left out.
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self._is_cuda = device is not None and device.type == "cuda"
        self._device = device
        self._samples_then = 0
        self._items: list[int | torch.Tensor] = []
        self._since = time.perf_counter()

    def restart(self) -> None:
        """Start a new interval now, at an epoch's first sample."""
        self._samples_then = 0
        self._items.clear()
        self._since = time.perf_counter()
        if self._is_cuda:
            torch.cuda.reset_peak_memory_stats(self._device)

    def count_items(self, items: int | torch.Tensor) -> None:
        """A training step reported `items` (its `num_items`)."""
        self._items.append(items)

    def rates(self, samples: int) -> dict[str, float]:
        """Samples per second since the last reading or restart, `samples` being the count
        now, items per second when steps reported any, and the peak memory on CUDA; starts
        the next interval."""
        now = time.perf_counter()
        elapsed = max(now - self._since, 1e-9)
        figures = {SAMPLES_PER_SEC: (samples - self._samples_then) / elapsed}
        if self._items:
            figures[ITEMS_PER_SEC] = float(_sum_counts(self._items)) / elapsed
            self._items.clear()
        if self._is_cuda:
            figures[PEAK_MEMORY] = torch.cuda.max_memory_allocated(self._device) / 2**30
            torch.cuda.reset_peak_memory_stats(self._device)
        self._samples_then, self._since = samples, now
        return figures


def _sum_counts(counts: list[int | torch.Tensor]) -> int | torch.Tensor:
    """The sum of plain counts on the host and of tensor counts in one go on their device."""
    tensors = [count for count in counts if isinstance(count, torch.Tensor)]
    plain = sum(count for count in counts if not isinstance(count, torch.Tensor))
    return plain + torch.stack(tensors).sum() if tensors else plain


class LogBook:
    """What a run's steps logged and the loop has not yet read, kept in one place.

    The loop opens a batch (`open_train_batch`, `open_eval_batch`) before its hooks and
    step run and closes it after: in between, `add` weighs a value by the batch's size and
    sends it to the training epoch's means (and the next log step) or to the evaluation
    pass's; outside a batch `add` takes nothing and the value is a figure of its own.
    `samples_in_epoch` is the one count of training samples: the progress bar and the
    throughput both read it.
    """

    def __init__(self, log_every_n_steps: int = 50, device: torch.device | None = None) -> None:
        self.log_every_n_steps = log_every_n_steps
        self.train = RunningMeans()
        self.evaluation = RunningMeans()
        self.batch_size = 0
        self.samples_in_epoch = 0
        self._step: dict[str, torch.Tensor | float] = {}
        self._open: RunningMeans | None = None
        self._throughput = Throughput(device)
        self._last_logged_step = -1

    # ------------------------------------------------------------------------------ batches
    def start_epoch(self, is_resumed: bool = False) -> None:
        """Forget the previous epoch's figures (a resumed epoch keeps its own); start timing."""
        if not is_resumed:
            self.train.reset()
            self._step.clear()
        self.samples_in_epoch = 0
        self._throughput.restart()

    def start_evaluation(self) -> None:
        """An evaluation pass begins: its means start empty."""
        self.evaluation.reset()

    def open_train_batch(self, batch: Any) -> None:
        """A training batch's hooks and step are about to run; values go to the epoch's means."""
        self.batch_size = batch_size_of(batch) or 1
        self._open = self.train

    def open_eval_batch(self, batch: Any) -> None:
        """An evaluation batch's step is about to run; values go to the pass's means."""
        self.batch_size = batch_size_of(batch) or 1
        self._open = self.evaluation

    def count_samples(
        self, batch_size: int | None = None, num_items: int | torch.Tensor | None = None
    ) -> None:
        """The training step ran: its batch's samples count (`batch_size`, when the step
        reported it, is better than the size read from the batch), and its `num_items` for
        the items per second."""
        if batch_size is not None:
            self.batch_size = int(batch_size)
        self.samples_in_epoch += self.batch_size
        if num_items is not None:
            self._throughput.count_items(num_items)

    def close_batch(self) -> None:
        """The batch is done: what is logged from now on is a figure of its own."""
        self._open = None

    # -------------------------------------------------------------------------------- values
    def add(self, name: str, value: torch.Tensor | float, batch_size: int | None = None) -> bool:
        """Add a value of the open batch, weighted by `batch_size` (the batch's size by
        default); False, taking nothing, when no batch is open."""
        if self._open is None:
            return False
        if self._open is self.train:
            self._step[name] = value
        self._open.add(name, value, batch_size or self.batch_size)
        return True

    def add_step_figure(self, name: str, value: torch.Tensor | float) -> None:
        """A value for the next log step only, not averaged into the epoch (the grad norm)."""
        self._step[name] = value

    def is_log_step(self, step: int) -> bool:
        """Whether optimizer step `step` writes step figures."""
        return step % self.log_every_n_steps == 0

    def read_step(self, step: int) -> dict[str, float]:
        """The values logged since the last log step as floats, and the throughput (timed
        once the floats made the host wait); the next step starts empty."""
        figures = {name: float(value) for name, value in self._step.items()}
        figures |= self._throughput.rates(self.samples_in_epoch)
        self._step.clear()
        self._last_logged_step = step
        return figures

    def was_logged_at(self, step: int) -> bool:
        """Whether step figures were last written at optimizer step `step`."""
        return step == self._last_logged_step

    def state_dict(self) -> dict[str, Any]:
        """The epoch's running sums and the values not yet written, for a mid-epoch resume."""
        step = {name: float(value) for name, value in self._step.items()}
        return {"train": self.train.state_dict(), "step": step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()` output."""
        self.train.load_state_dict(state["train"])
        self._step = dict(state["step"])


def compute_metrics(
    metrics: Mapping[str, MetricFn | Any], outputs: Any, targets: Any
) -> dict[str, torch.Tensor]:
    """Evaluate plain metric callables on one batch; stateful metrics are only updated."""
    values: dict[str, torch.Tensor] = {}
    for name, metric in metrics.items():
        if is_stateful_metric(metric):
            metric.update(outputs, targets)
        else:
            values[name] = _as_scalar(metric(outputs, targets), f"metric {name!r}")
    return values


def _as_scalar(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, (int, float)):
        return torch.tensor(float(value))
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"{what} must return a scalar tensor, got {shape}; reduce it, e.g. with .mean()."
        )
    return value.reshape(())

