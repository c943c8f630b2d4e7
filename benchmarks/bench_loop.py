"""Trainer against a hand-written loop: same model, data, seed and data order, fresh processes.

    python benchmarks/bench_loop.py                      # both workloads, 5 rounds
    python benchmarks/bench_loop.py --workload overhead --rounds 7

Each measurement runs in a new Python process, and the variants are interleaved (A B C A B
C ...) so drift in the machine's speed hits them alike. Printed per workload: the median,
min and max training time of each variant, the ratio of medians to the hand-written loop,
peak memory, and the final loss of each (they must agree: same seed, same data order).
Then the import time of `trainer` over `torch`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

WORKLOADS = {
    # Many tiny steps: the cost of the loop's own Python work is what shows.
    "overhead": {"features": 64, "hidden": [64], "samples": 32_000, "batch": 64, "epochs": 4},
    # Few big steps: the matrix multiplications dominate.
    "compute": {
        "features": 512, "hidden": [2048, 2048], "samples": 6_400, "batch": 256, "epochs": 2
    },
}
VARIANTS = ("hand-written", "trainer-bare", "trainer-defaults")


# --------------------------------------------------------------------------------- one process
def _build(workload: dict) -> tuple:
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
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=workload["batch"], shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, loader, optimizer, nn.CrossEntropyLoss()


def _hand_written(model, loader, optimizer, loss_fn, workload: dict) -> None:
    """The loop a researcher writes by hand."""
    model.train()
    for _ in range(workload["epochs"]):
        for inputs, targets in loader:
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def _with_trainer(model, loader, optimizer, loss_fn, workload: dict, defaults: bool,
                  run_dir: str) -> None:
    from trainer import Trainer

    trainer = Trainer(
        model,
        optimizer=optimizer,
        loss_fn=loss_fn,
        train_loader=loader,
        max_epochs=workload["epochs"],
        device="cpu",
        run_dir=run_dir,
        progress_bar=defaults,
        logger=defaults,
        checkpoint=defaults,
    )
    trainer.fit()


def _final_loss(model, loader, loss_fn) -> float:
    """Loss of the trained model on the first 1,024 samples: equal weights give equal losses."""
    import torch

    dataset = loader.dataset
    with torch.no_grad():
        model.eval()
        inputs, targets = dataset[:1024]
        return float(loss_fn(model(inputs), targets))


def run_worker(variant: str, workload_name: str) -> None:
    """Time one variant in this process and print a JSON line with the figures."""
    workload = WORKLOADS[workload_name]
    import torch  # imported before timing: start-up is measured separately

    import trainer  # noqa: F401  (same imports in every variant)

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    model, loader, optimizer, loss_fn = _build(workload)
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        if variant == "hand-written":
            _hand_written(model, loader, optimizer, loss_fn, workload)
        else:
            defaults = variant == "trainer-defaults"
            _with_trainer(model, loader, optimizer, loss_fn, workload, defaults, run_dir)
        seconds = time.perf_counter() - start
    loss = _final_loss(model, loader, loss_fn)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "loss": loss, "peak_mib": peak_mib}))


# ----------------------------------------------------------------------------------- the driver
def _measure(variant: str, workload: str) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--worker", variant, "--workload", workload],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


def _import_seconds(module: str, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(workload: str, rounds: int) -> None:
    results: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            results[variant].append(_measure(variant, workload))
    spec = WORKLOADS[workload]
    steps = spec["epochs"] * -(-spec["samples"] // spec["batch"])
    print(f"\n{workload}: {spec}, {steps} optimizer steps, {rounds} rounds")
    print(f"{'variant':18} {'median s':>9} {'min':>7} {'max':>7} {'ratio':>6} {'peak MiB':>9} loss")
    base = statistics.median(r["seconds"] for r in results["hand-written"])
    base_memory = statistics.median(r["peak_mib"] for r in results["hand-written"])
    for variant, runs in results.items():
        seconds = [r["seconds"] for r in runs]
        median = statistics.median(seconds)
        memory = statistics.median(r["peak_mib"] for r in runs)
        losses = sorted({round(r["loss"], 6) for r in runs})
        print(
            f"{variant:18} {median:9.3f} {min(seconds):7.3f} {max(seconds):7.3f} "
            f"{median / base:6.3f} {memory:7.0f} ({memory / base_memory:4.2f}x) {losses}"
        )
    hand_loss = {round(r["loss"], 6) for r in results["hand-written"]}
    bare_loss = {round(r["loss"], 6) for r in results["trainer-bare"]}
    print("same final loss as the hand-written loop:", hand_loss == bare_loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--rounds", type=int, default=5, help="measurements per variant")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, args.workload)
        return
    import platform

    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.processor()}")
    for workload in WORKLOADS if args.workload == "all" else [args.workload]:
        compare(workload, args.rounds)
    torch_seconds = _import_seconds("torch", args.rounds)
    trainer_seconds = _import_seconds("trainer", args.rounds)
    print(
        f"\nimport torch {torch_seconds:.3f} s, import trainer {trainer_seconds:.3f} s "
        f"(+{trainer_seconds - torch_seconds:.3f} s)"
    )


if __name__ == "__main__":
    main()
