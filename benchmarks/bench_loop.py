"""Trainer against a hand-written loop: same model, data, seed and data order, fresh processes.

    python benchmarks/bench_loop.py                           # both workloads, 5 rounds
    python benchmarks/bench_loop.py --workload overhead --rounds 9
    python benchmarks/bench_loop.py --workload compute --device cuda --precision bf16-mixed \
        --compile
    python benchmarks/bench_loop.py --workload gpu-compute --device cuda --precision bf16-mixed \
        --compile --variants hand-written,trainer-bare --warmup-epochs 1 --fail-above 1.02

Each measurement runs in a new Python process, and the variants are interleaved (A B C,
then B C A, ...) so drift in the machine's speed hits them alike. Two costs are kept apart:
per step (the slope of time against steps from the end of the first epoch to the end of the
last) and start-up (from launching the process to the first forward pass). Printed per
workload: the per-step median, min and max of each variant (wall clock; then CPU time, which
a busy shared machine disturbs less), the ratio of medians to the hand-written loop and the
median of each round's own ratio ("paired"); then start-up with its paired difference,
wind-down, the whole run, peak memory, and the final loss of each (they must agree: same
seed, same data order). Then the import time of `trainer` over `torch`, and the targets.

Variants: `hand-written` (the loop a researcher writes), `hand-written+save` (the same
loop with the PyTorch tutorial's `torch.save` of model and optimizer state at every epoch
end: what a researcher's own checkpointing costs, not flushed to disk), `trainer-bare`
(Trainer with progress bar, logger and checkpoints off) and `trainer-defaults` (all three
on: a progress line per epoch, TensorBoard events every 50 steps, a durable checkpoint at
every epoch end).

`--warmup-epochs N` starts the per-step slope at the end of epoch N instead of epoch 1
(both loops synchronise the device at each epoch end), so `torch.compile`'s compilation and
CUDA's start-up stay out of the figure; `--fail-above R` makes the run exit 1 when
trainer-bare's paired per-step ratio to the hand-written loop is above R (how
`benchmarks/gpu_check.sh` uses it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # measure this checkout's trainer, not an installed one

WORKLOADS: dict[str, dict[str, Any]] = {
    # Many tiny steps: the cost of the loop's own Python work is what shows.
    "overhead": {"features": 64, "hidden": [64], "samples": 32_000, "batch": 64, "epochs": 4},
    # Few big steps: the matrix multiplications dominate.
    "compute": {
        "features": 512, "hidden": [2048, 2048], "samples": 6_400, "batch": 256, "epochs": 4
    },
    # For one large GPU: the compute workload's MLP is so small there that the host's Python,
    # not the GPU, sets the pace. Three 8192-wide layers (138M parameters, about 1.7 TFLOP
    # per step) keep an H200 busy for milliseconds a step, and six loader workers keep the
    # host's per-sample collation off the critical path. Sized by arithmetic, not yet timed.
    "gpu-compute": {
        "features": 512, "hidden": [8192, 8192, 8192], "samples": 98_304, "batch": 2048,
        "epochs": 4, "workers": 6,
    },
}  # fmt: skip
CPU_WORKLOADS = ("overhead", "compute")  # what `--workload all` runs
VARIANTS = ("hand-written", "hand-written+save", "trainer-bare", "trainer-defaults")


# --------------------------------------------------------------------------------- one process
class _Clock:
    """The moments a run is measured by: its first step and each epoch's end."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.first_step: float | None = None
        self.first_step_cpu = 0.0
        self.epoch_ends: list[tuple[float, float]] = []  # (wall, cpu) after each epoch

    def watch_first_step(self, model: Any) -> None:
        """Note when the first forward pass begins, then remove the hook (no per-step cost)."""

        def note(module: Any, inputs: Any) -> None:
            self.first_step = time.perf_counter()
            self.first_step_cpu = time.process_time()  # this process's CPU time since it began
            handle.remove()

        handle = model.register_forward_pre_hook(note)

    def epoch_end(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()  # queued kernels belong to the epoch they were queued in
        self.epoch_ends.append((time.perf_counter(), time.process_time()))


def _build(workload: dict[str, Any], settings: argparse.Namespace) -> tuple:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(workload["samples"], workload["features"], generator=generator)
    targets = torch.randint(0, 10, (workload["samples"],), generator=generator)
    layers: list[nn.Module] = []
    width = workload["features"]
    for hidden in workload["hidden"]:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    model = nn.Sequential(*layers, nn.Linear(width, 10)).to(settings.device)
    workers = workload.get("workers", 0)
    loader = DataLoader(
        TensorDataset(inputs, targets),
        batch_size=workload["batch"],
        shuffle=True,
        pin_memory=settings.device == "cuda",
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, loader, optimizer, nn.CrossEntropyLoss()


def _hand_written(
    model: Any,
    loader: Any,
    optimizer: Any,
    loss_fn: Any,
    epochs: int,
    settings: Any,
    clock: _Clock,
    save_to: str | None = None,
) -> None:
    """The loop a researcher writes by hand, with the same precision and compile settings;
    with `save_to`, it also saves model and optimizer state at every epoch end."""
    import torch

    device = torch.device(settings.device)
    input_dtype = torch.bfloat16 if settings.precision == "bf16-true" else None
    if input_dtype is not None:
        model.to(input_dtype)
    if settings.compile:
        model.compile()
    model.train()

    def end_epoch(epoch: int) -> None:
        clock.epoch_end()
        if save_to is not None:  # the PyTorch tutorial's general checkpoint
            state = {"epoch": epoch, "model": model.state_dict()}
            torch.save(state | {"optimizer": optimizer.state_dict()}, save_to)

    if settings.precision in ("16-mixed", "bf16-mixed"):
        _mixed_precision_loop(
            model, loader, optimizer, loss_fn, epochs, device, settings.precision, end_epoch
        )
        return
    for epoch in range(epochs):
        for inputs, targets in loader:
            if device.type != "cpu" or input_dtype is not None:
                inputs = inputs.to(device, input_dtype, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        end_epoch(epoch)


def _mixed_precision_loop(
    model: Any, loader: Any, optimizer: Any, loss_fn: Any, epochs: int, device: Any,
    precision: str, end_epoch: Any,
) -> None:  # fmt: skip
    """The automatic mixed precision recipe of the PyTorch documentation."""
    import torch

    dtype = torch.float16 if precision == "16-mixed" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    for epoch in range(epochs):
        for inputs, targets in loader:
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype):
                loss = loss_fn(model(inputs), targets)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        end_epoch(epoch)


def _with_trainer(
    model: Any, loader: Any, optimizer: Any, loss_fn: Any, epochs: int, defaults: bool,
    run_dir: str, settings: Any, clock: _Clock,
) -> None:  # fmt: skip
    from trainer import Trainer
    from trainer.callbacks import Callback

    class EpochClock(Callback):
        def on_train_epoch_end(self, trainer: Trainer) -> None:
            clock.epoch_end()

    # Its only hook is the epoch end: callbacks are dispatched per hook, so no step pays for it.
    trainer = Trainer(
        model,
        optimizer=optimizer,
        loss_fn=loss_fn,
        train_loader=loader,
        max_epochs=epochs,
        device=settings.device,
        precision=settings.precision,
        compile=settings.compile,
        run_dir=run_dir,
        progress_bar=defaults,
        logger=defaults,
        checkpoint=defaults,
        callbacks=[EpochClock()],
    )
    trainer.fit()


def _final_loss(model: Any, loader: Any, loss_fn: Any) -> float:
    """Loss of the trained model on the first 1,024 samples: equal weights give equal losses."""
    import torch

    parameter = next(model.parameters())
    inputs, targets = loader.dataset[:1024]
    with torch.no_grad():
        model.eval()
        outputs = model(inputs.to(parameter.device, parameter.dtype))
        return float(loss_fn(outputs.float(), targets.to(parameter.device)))


def run_worker(variant: str, workload_name: str, settings: argparse.Namespace) -> None:
    """Time one variant in this process and print a JSON line with the figures."""
    workload = WORKLOADS[workload_name]
    import torch

    if variant.startswith("trainer"):  # a hand-written script imports no trainer
        import trainer  # noqa: F401

    torch.set_num_threads(settings.threads)
    model, loader, optimizer, loss_fn = _build(workload, settings)
    clock = _Clock(settings.device)
    if not settings.compile:  # a hook on a module that gets compiled would be traced
        clock.watch_first_step(model)
    epochs = workload["epochs"]
    with tempfile.TemporaryDirectory() as run_dir:
        if variant.startswith("hand-written"):
            save_to = str(Path(run_dir) / "checkpoint.pt") if variant.endswith("+save") else None
            _hand_written(model, loader, optimizer, loss_fn, epochs, settings, clock, save_to)
        else:
            defaults = variant == "trainer-defaults"
            _with_trainer(
                model, loader, optimizer, loss_fn, epochs, defaults, run_dir, settings, clock
            )
        if settings.device == "cuda":
            torch.cuda.synchronize()
        end = time.perf_counter()
    # Steady state: the slope from the end of the first timed epoch to the last epoch's end;
    # the first epoch's start-up effects and the run's wind-down stay outside it.
    first = _first_timed_epoch(settings)
    steps = (epochs - first) * len(loader)
    (wall_from, cpu_from), (wall_to, cpu_to) = clock.epoch_ends[first - 1], clock.epoch_ends[-1]
    figures = {
        "step_us": (wall_to - wall_from) / steps * 1e6,
        "step_cpu_us": (cpu_to - cpu_from) / steps * 1e6,
        "wind_down": end - wall_to,
        "whole": end - settings.launched_at,
        "loss": _final_loss(model, loader, loss_fn),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if clock.first_step is not None:
        figures["startup"] = clock.first_step - settings.launched_at
        figures["startup_cpu"] = clock.first_step_cpu
    if settings.device == "cuda":
        figures["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(figures))


def import_worker() -> None:
    """Time `import torch`, then `import trainer` on top of it, in this fresh process."""
    start, start_cpu = time.perf_counter(), time.process_time()
    import torch  # noqa: F401

    middle, middle_cpu = time.perf_counter(), time.process_time()
    import trainer  # noqa: F401

    end, end_cpu = time.perf_counter(), time.process_time()
    print(json.dumps({
        "torch": middle - start, "torch_cpu": middle_cpu - start_cpu,
        "trainer": end - middle, "trainer_cpu": end_cpu - middle_cpu,
    }))  # fmt: skip


# ----------------------------------------------------------------------------------- the driver
def _run_json(arguments: list[str]) -> dict[str, Any]:
    # perf_counter is CLOCK_MONOTONIC, one clock for every process on Linux: the worker
    # counts its start-up from this moment, interpreter start and imports included.
    launched = ["--launched-at", repr(time.perf_counter())]
    result = subprocess.run(
        [sys.executable, __file__, *arguments, *launched], capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"worker {' '.join(arguments)} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _settings_arguments(settings: argparse.Namespace) -> list[str]:
    arguments = ["--threads", str(settings.threads), "--device", settings.device]
    arguments += ["--warmup-epochs", str(settings.warmup_epochs)]
    arguments += ["--precision", settings.precision] + (["--compile"] if settings.compile else [])
    return arguments


def _first_timed_epoch(settings: argparse.Namespace) -> int:
    """The epoch whose end starts the per-step slope: the first, or the end of the warm-up."""
    return max(1, settings.warmup_epochs)


def _spread(values: list[float], digits: int = 3) -> str:
    low, middle, high = min(values), statistics.median(values), max(values)
    return f"{middle:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def _paired_difference(runs: list[dict[str, Any]], hand: list[dict[str, Any]], key: str) -> float:
    """Median of each round's own difference to the hand-written loop."""
    return statistics.median(r[key] - h[key] for r, h in zip(runs, hand, strict=True))


def _paired(runs: list[dict[str, Any]], hand: list[dict[str, Any]], key: str) -> float:
    """Median of each round's own ratio: neighbours in time share the machine's mood."""
    return statistics.median(r[key] / h[key] for r, h in zip(runs, hand, strict=True))


def compare(workload: str, settings: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Measure each chosen variant `settings.rounds` times, interleaved, and print two tables:
    the steady per-step cost, then the one-time costs. Return each variant's paired figures."""
    variants = settings.variants
    results: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    for round_index in range(settings.rounds):
        shift = round_index % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            arguments = ["--worker", variant, "--workload", workload]
            results[variant].append(_run_json(arguments + _settings_arguments(settings)))
    spec = WORKLOADS[workload]
    per_epoch = -(-spec["samples"] // spec["batch"])
    first = _first_timed_epoch(settings)
    print(
        f"\n{workload}: {spec}, {spec['epochs'] * per_epoch} optimizer steps, {settings.rounds}"
        f" rounds; per step: the slope from the end of epoch {first} to the end of epoch"
        f" {spec['epochs']} ({(spec['epochs'] - first) * per_epoch} steps)"
    )
    hand = results["hand-written"]
    figures: dict[str, dict[str, float]] = {}
    print(
        f"{'variant':17}  {'us/step median (min-max)':>26} {'ratio':>6} {'paired':>6}"
        f"  {'cpu us/step':>11} {'ratio':>6}"
    )
    hand_step = statistics.median(r["step_us"] for r in hand)
    hand_cpu = statistics.median(r["step_cpu_us"] for r in hand)
    for variant, runs in results.items():
        step = [r["step_us"] for r in runs]
        cpu = [r["step_cpu_us"] for r in runs]
        figures[variant] = {"step": _paired(runs, hand, "step_us")}
        print(
            f"{variant:17}  {_spread(step, digits=1):>26}"
            f" {statistics.median(step) / hand_step:6.3f} {figures[variant]['step']:6.3f}"
            f"  {statistics.median(cpu):11.1f} {statistics.median(cpu) / hand_cpu:6.3f}"
        )
    has_startup = "startup" in hand[0]
    print(
        f"{'variant':17}  {'start-up s (min-max)':>22} {'+paired':>8} {'cpu +paired':>11}"
        f"  {'wind-down s':>11}  {'whole run s':>11} {'paired':>6}  {'peak MiB':>15}"
    )
    hand_memory = statistics.median(r["peak_mib"] for r in hand)
    for variant, runs in results.items():
        if has_startup:
            startup = _spread([r["startup"] for r in runs])
            figures[variant]["startup"] = _paired_difference(runs, hand, "startup")
            cpu_startup = _paired_difference(runs, hand, "startup_cpu")
            startup_text = f"{startup:>22} {figures[variant]['startup']:+8.3f} {cpu_startup:+11.3f}"
        else:  # under --compile the first step is not observed
            startup_text = f"{'-':>22} {'-':>8} {'-':>11}"
        memory = statistics.median(r["peak_mib"] for r in runs)
        print(
            f"{variant:17}  {startup_text}"
            f"  {statistics.median(r['wind_down'] for r in runs):11.3f}"
            f"  {statistics.median(r['whole'] for r in runs):11.3f}"
            f" {_paired(runs, hand, 'whole'):6.3f}"
            f"  {memory:6.0f} ({memory / hand_memory:5.3f}x)"
            + (f" gpu {statistics.median(r['peak_gpu_mib'] for r in runs):.0f} MiB"
               if "peak_gpu_mib" in runs[0] else "")
        )  # fmt: skip
    if "hand-written+save" in results and "trainer-defaults" in results:
        saving, defaults = results["hand-written+save"], results["trainer-defaults"]
        figures["trainer-defaults"]["step_vs_save"] = _paired(defaults, saving, "step_us")
        print(
            f"trainer-defaults against hand-written+save (both checkpoint every epoch): per step"
            f" paired {figures['trainer-defaults']['step_vs_save']:.3f}"
        )
    _print_final_losses(results)
    return figures


def _print_final_losses(results: dict[str, list[dict[str, Any]]]) -> None:
    hand_losses = [r["loss"] for r in results["hand-written"]]
    for variant in list(results)[1:]:
        losses = [r["loss"] for r in results[variant]]
        difference = max(abs(a - b) / abs(b) for a in losses for b in hand_losses)
        print(
            f"final loss {variant} vs hand-written: {sorted(set(losses))} vs "
            f"{sorted(set(hand_losses))} (largest relative difference {difference:.1e})"
        )


def report_imports(rounds: int) -> None:
    """Median start-up of `import torch` and of `import trainer` on top of it."""
    runs = [_run_json(["--import-worker"]) for _ in range(rounds)]
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(
        f"\nimport torch {median['torch']:.3f} s wall ({median['torch_cpu']:.3f} s cpu); "
        f"import trainer adds {median['trainer']:.3f} s wall ({median['trainer_cpu']:.3f} s "
        f"cpu); medians of {rounds} fresh processes"
    )


# (workload, variant, figure, limit): the project's speed targets on 2 CPU cores. "step" is
# the paired per-step ratio to the hand-written loop, "step_vs_save" to the loop that also
# saves every epoch (like for like: the defaults checkpoint every epoch), "startup" the
# paired start-up difference in seconds.
TARGETS = (
    ("overhead", "trainer-bare", "step", 1.02),
    ("overhead", "trainer-defaults", "step", 1.03),
    ("overhead", "trainer-defaults", "startup", 0.3),
    ("compute", "trainer-bare", "step", 1.01),
    ("compute", "trainer-defaults", "step_vs_save", 1.01),
)
_TARGET_WORDS = {
    "step": "per step, paired ratio to hand-written",
    "step_vs_save": "per step, paired ratio to hand-written+save",
    "startup": "start-up over hand-written, paired, s",
}


def _print_targets(figures: dict[str, dict[str, dict[str, float]]]) -> None:
    lines = []
    for workload, variant, figure, limit in TARGETS:
        value = figures.get(workload, {}).get(variant, {}).get(figure)
        if value is None:
            continue
        verdict = "met" if value <= limit else "NOT met"
        lines.append(f"  {workload} {variant} {_TARGET_WORDS[figure]}: {value:.3f} <= {limit}:"
                     f" {verdict}")  # fmt: skip
    if lines:
        print("\ntargets:\n" + "\n".join(lines))


def _variant_list(text: str) -> list[str]:
    variants = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown or not variants or variants[0] != "hand-written":
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list starting with hand-written, from "
            f"{', '.join(VARIANTS)}; got {text!r}"
        )
    return variants


def _parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workload", choices=[*WORKLOADS, "all"], default="all",
        help=f"all: {', '.join(CPU_WORKLOADS)}",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5, help="measurements per variant")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--precision", choices=["32", "16-mixed", "bf16-mixed", "bf16-true"], default="32"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile in both loops")
    parser.add_argument(
        "--variants", type=_variant_list, default=list(VARIANTS),
        help="comma-separated, hand-written first [all four]",
    )  # fmt: skip
    parser.add_argument(
        "--warmup-epochs", type=int, default=0,
        help="start the per-step slope at the end of this many epochs, not 1 (leaves"
        " compilation out) [0]",
    )  # fmt: skip
    parser.add_argument(
        "--fail-above", type=float, metavar="RATIO",
        help="exit 1 when trainer-bare's paired per-step ratio to the hand-written loop is"
        " above RATIO",
    )  # fmt: skip
    parser.add_argument("--skip-imports", action="store_true", help="skip the start-up figures")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--import-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--launched-at", type=float, help=argparse.SUPPRESS)
    settings = parser.parse_args()
    workloads = CPU_WORKLOADS if settings.workload == "all" else [settings.workload]
    if any(_first_timed_epoch(settings) >= WORKLOADS[name]["epochs"] for name in workloads):
        parser.error(f"--warmup-epochs {settings.warmup_epochs} leaves no epoch to time")
    if settings.fail_above is not None and "trainer-bare" not in settings.variants:
        parser.error("--fail-above compares trainer-bare: add it to --variants")
    settings.workloads = workloads
    return settings


def main() -> None:
    settings = _parse_arguments()
    if settings.import_worker:
        import_worker()
        return
    if settings.worker:
        run_worker(settings.worker, settings.workload, settings)
        return
    import torch

    accelerator = torch.cuda.get_device_name() if settings.device == "cuda" else "none"
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), accelerator: {accelerator}; "
        f"threads={settings.threads} device={settings.device} precision={settings.precision} "
        f"compile={settings.compile}"
    )
    figures = {workload: compare(workload, settings) for workload in settings.workloads}
    if not settings.skip_imports:
        report_imports(settings.rounds)
    _print_targets(figures)
    if settings.fail_above is not None:
        worst = max(by_variant["trainer-bare"]["step"] for by_variant in figures.values())
        verdict = "met" if worst <= settings.fail_above else "NOT met"
        limit = settings.fail_above
        print(f"\ntarget: trainer-bare per step, paired {worst:.3f} <= {limit}: {verdict}")
        if worst > settings.fail_above:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
