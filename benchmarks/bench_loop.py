"""Trainer against a hand-written loop: same model, data, seed and data order, fresh processes.

    python benchmarks/bench_loop.py                           # both workloads, 5 rounds
    python benchmarks/bench_loop.py --workload overhead --rounds 9
    python benchmarks/bench_loop.py --workload compute --device cuda --precision bf16-mixed \
        --compile
    python benchmarks/bench_loop.py --workload gpu-compute --device cuda --precision bf16-mixed \
        --compile --variants hand-written,trainer-bare --warmup-epochs 1 --fail-above 1.02

Each measurement runs in a new Python process, and the variants are interleaved (A B C,
then B C A, ...) so drift in the machine's speed hits them alike. Printed per workload:
the median, min and max training time of each variant (wall clock; then the process's CPU
time, which a busy shared machine disturbs less), the ratio of medians to the hand-written
loop, the median of each round's own ratio ("paired"), peak memory, and the final loss of
each (they must agree: same seed, same data order). Then the import time of `trainer`
over `torch`.

Variants: `hand-written` (the loop a researcher writes), `hand-written+save` (the same
loop with the PyTorch tutorial's `torch.save` of model and optimizer state at every epoch
end: what a researcher's own checkpointing costs, not flushed to disk), `trainer-bare`
(Trainer with progress bar, logger and checkpoints off) and `trainer-defaults` (all three
on: a progress line per epoch, TensorBoard events every 50 steps, a durable checkpoint at
every epoch end).

`--warmup-epochs N` starts the clock at the end of epoch N instead of at the start (both
loops synchronise the device there), so `torch.compile`'s compilation and CUDA's start-up
stay out of the figure; `--fail-above R` makes the run exit 1 when trainer-bare's paired
ratio to the hand-written loop is above R (how `benchmarks/gpu_check.sh` uses it).
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
        "features": 512, "hidden": [2048, 2048], "samples": 6_400, "batch": 256, "epochs": 2
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
    """Where the timed span starts: at `begin`, or at the end of the first `warmup_epochs`."""

    def __init__(self, warmup_epochs: int, device: str) -> None:
        self.warmup_epochs = warmup_epochs
        self.device = device
        self.epochs_done = 0
        self.start = self.start_cpu = 0.0

    def begin(self) -> None:
        if self.warmup_epochs == 0:
            self._mark()

    def epoch_end(self) -> None:
        self.epochs_done += 1
        if self.epochs_done == self.warmup_epochs:
            self._mark()

    def _mark(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()  # the warm-up's queued kernels belong to the warm-up
        self.start, self.start_cpu = time.perf_counter(), time.process_time()


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
    model: Any, loader: Any, optimizer: Any, loss_fn: Any, epochs: int, settings: Any,
    clock: _Clock, save_to: str | None = None,
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

    # Only with a warm-up: a bare run stays bare (no callback of ours at all) otherwise.
    callbacks = [EpochClock()] if clock.warmup_epochs else []
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
        callbacks=callbacks,
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
    import torch  # imported before timing: start-up is measured separately

    import trainer  # noqa: F401  (same imports in every variant)

    torch.set_num_threads(settings.threads)
    model, loader, optimizer, loss_fn = _build(workload, settings)
    clock = _Clock(settings.warmup_epochs, settings.device)
    epochs = workload["epochs"]
    with tempfile.TemporaryDirectory() as run_dir:
        clock.begin()
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
        seconds = time.perf_counter() - clock.start
        cpu_seconds = time.process_time() - clock.start_cpu
    figures = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "loss": _final_loss(model, loader, loss_fn),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
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
    result = subprocess.run(
        [sys.executable, __file__, *arguments], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"worker {' '.join(arguments)} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _settings_arguments(settings: argparse.Namespace) -> list[str]:
    arguments = ["--threads", str(settings.threads), "--device", settings.device]
    arguments += ["--warmup-epochs", str(settings.warmup_epochs)]
    arguments += ["--precision", settings.precision] + (["--compile"] if settings.compile else [])
    return arguments


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.3f} {min(values):7.3f} {max(values):7.3f}"


def compare(workload: str, settings: argparse.Namespace) -> dict[str, float]:
    """Measure each chosen variant `settings.rounds` times, interleaved, and print the table;
    return each variant's paired ratio to the hand-written loop."""
    variants = settings.variants
    results: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    for round_index in range(settings.rounds):
        shift = round_index % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            arguments = ["--worker", variant, "--workload", workload]
            results[variant].append(_run_json(arguments + _settings_arguments(settings)))
    spec = WORKLOADS[workload]
    steps = spec["epochs"] * -(-spec["samples"] // spec["batch"])
    timed = f", timed after {settings.warmup_epochs} warm-up epochs" * bool(settings.warmup_epochs)
    print(f"\n{workload}: {spec}, {steps} optimizer steps{timed}, {settings.rounds} rounds")
    print(
        f"{'variant':17} {'wall s: median':>14} {'min':>7} {'max':>7} {'ratio':>6} {'paired':>6}"
        f"   {'cpu s: median':>13} {'ratio':>6} {'peak MiB':>9}"
    )
    hand = results["hand-written"]
    base = {key: statistics.median(r[key] for r in hand)
            for key in ("seconds", "cpu_seconds", "peak_mib")}  # fmt: skip
    ratios = {}
    for variant, runs in results.items():
        wall, cpu = [r["seconds"] for r in runs], [r["cpu_seconds"] for r in runs]
        # Each round's own ratio: neighbours in time share the machine's mood of the moment.
        pairs = zip(runs, hand, strict=True)
        paired = ratios[variant] = statistics.median(r["seconds"] / h["seconds"] for r, h in pairs)
        memory = statistics.median(r["peak_mib"] for r in runs)
        print(
            f"{variant:17} {_spread(wall):>30} {statistics.median(wall) / base['seconds']:6.3f}"
            f" {paired:6.3f}   {statistics.median(cpu):13.3f}"
            f" {statistics.median(cpu) / base['cpu_seconds']:6.3f}"
            f" {memory:6.0f} ({memory / base['peak_mib']:5.3f}x)"
            + (f" gpu {statistics.median(r['peak_gpu_mib'] for r in runs):.0f} MiB"
               if "peak_gpu_mib" in runs[0] else "")
        )  # fmt: skip
    _print_defaults_against_saving(results)
    _print_final_losses(results)
    return ratios


def _print_defaults_against_saving(results: dict[str, list[dict[str, Any]]]) -> None:
    if "hand-written+save" not in results or "trainer-defaults" not in results:
        return
    saving, defaults = results["hand-written+save"], results["trainer-defaults"]
    paired = statistics.median(
        d["seconds"] / h["seconds"] for d, h in zip(defaults, saving, strict=True)
    )
    median_ratio = statistics.median(d["seconds"] for d in defaults) / statistics.median(
        h["seconds"] for h in saving
    )
    print(
        f"trainer-defaults against hand-written+save (both checkpoint every epoch): "
        f"ratio {median_ratio:.3f}, paired {paired:.3f}"
    )


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
        help="start the clock at the end of this many epochs (leaves compilation out) [0]",
    )  # fmt: skip
    parser.add_argument(
        "--fail-above", type=float, metavar="RATIO",
        help="exit 1 when trainer-bare's paired ratio to the hand-written loop is above RATIO",
    )  # fmt: skip
    parser.add_argument("--skip-imports", action="store_true", help="skip the start-up figures")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--import-worker", action="store_true", help=argparse.SUPPRESS)
    settings = parser.parse_args()
    workloads = CPU_WORKLOADS if settings.workload == "all" else [settings.workload]
    if any(settings.warmup_epochs >= WORKLOADS[name]["epochs"] for name in workloads):
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
    ratios = [compare(workload, settings) for workload in settings.workloads]
    if not settings.skip_imports:
        report_imports(settings.rounds)
    if settings.fail_above is not None:
        worst = max(ratio["trainer-bare"] for ratio in ratios)
        verdict = "met" if worst <= settings.fail_above else "NOT met"
        print(f"\ntarget: trainer-bare paired {worst:.3f} <= {settings.fail_above}: {verdict}")
        if worst > settings.fail_above:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
