"""The loop's own cost in CPU instructions, counted by valgrind: exact where timing is noisy.

    python benchmarks/bench_instructions.py                   # needs valgrind; ~10 minutes
    python benchmarks/bench_instructions.py --steps 100 300 --variants hand-written trainer-bare

Wall-clock ratios on a shared or busy machine wander by several percent; instruction
counts do not (with string hashing fixed by `PYTHONHASHSEED=0` in the workers, repeated
runs agree to about 0.1%). Each variant of the overhead-bound
workload of `bench_loop.py` (4 epochs, so 4 checkpoints for the defaults) runs in a fresh
process under callgrind with counting switched on only around training, once for each of
two step counts: the difference gives the instructions of one step, the rest the fixed
cost of a run (set-up, checkpoints, epoch lines). Instructions are not time (a cache miss
costs more than an addition, and waiting for the disk costs none), so this guides work and
catches regressions; `bench_loop.py` gives the figures to quote.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_loop  # this folder is not a package

VARIANTS = bench_loop.VARIANTS


def run_worker(variant: str, steps: int) -> None:
    """Train `steps` steps of one variant, with counting switched on by the parent."""
    import torch

    import trainer  # noqa: F401  (imported before counting, as in bench_loop)

    torch.set_num_threads(1)
    workload = dict(bench_loop.WORKLOADS["overhead"])
    settings = argparse.Namespace(device="cpu", precision="32", compile=False, threads=1)
    warm_up = dict(workload, samples=workload["batch"] * 20)
    clock = bench_loop._Clock(device="cpu")
    # Lazy set-up (allocators, dispatch tables) happens here, outside the counting.
    bench_loop._hand_written(*bench_loop._build(warm_up, settings), 1, settings, clock)
    epochs = workload["epochs"]  # as in the real run: a checkpoint and an epoch line each
    workload["samples"] = workload["batch"] * steps // epochs
    model, loader, optimizer, loss_fn = bench_loop._build(workload, settings)
    with tempfile.TemporaryDirectory() as run_dir:
        print("READY", flush=True)
        sys.stdin.readline()
        if variant.startswith("hand-written"):
            save_to = f"{run_dir}/checkpoint.pt" if variant.endswith("+save") else None
            bench_loop._hand_written(
                model, loader, optimizer, loss_fn, epochs, settings, clock, save_to
            )
        else:
            bench_loop._with_trainer(
                model, loader, optimizer, loss_fn, epochs, variant == "trainer-defaults",
                run_dir, settings, clock,
            )  # fmt: skip
        print("DONE", flush=True)
        sys.stdin.readline()


def count(variant: str, steps: int, folder: Path) -> int:
    """Instructions executed while `variant` trains `steps` steps."""
    output = folder / f"{variant}-{steps}.%p.out"
    process = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no",
         f"--callgrind-out-file={output}", sys.executable, __file__,
         "--worker", variant, "--worker-steps", str(steps)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        # String hashing is salted per process, which moves counts by ~0.5% between runs.
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None

    def wait_for(word: str) -> None:
        for line in process.stdout:
            if line.startswith(word):
                return
        raise SystemExit(f"{variant} worker ended before printing {word}")

    def control(*flags: str) -> None:
        subprocess.run(["callgrind_control", *flags, str(process.pid)], check=True,
                       capture_output=True)  # fmt: skip

    wait_for("READY")
    control("--instr=on")
    process.stdin.write("\n")
    process.stdin.flush()
    wait_for("DONE")
    control("--dump")
    control("--instr=off")
    process.stdin.write("\n")
    process.stdin.flush()
    process.wait()
    totals = [
        int(match[1])
        for dump in folder.glob(f"{variant}-{steps}.{process.pid}.out*")
        if (match := re.search(r"^totals: (\d+)", dump.read_text(), re.MULTILINE))
    ]
    return max(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, nargs=2, default=[100, 400], metavar=("FEW", "MANY"),
        help="total steps of the two runs per variant (multiples of 4)",
    )  # fmt: skip
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, default=2, help="valgrind processes at a time")
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, args.worker_steps)
        return
    few, many = args.steps
    variants = ["hand-written", *(v for v in args.variants if v != "hand-written")]
    jobs = [(variant, steps) for variant in variants for steps in (few, many)]
    with tempfile.TemporaryDirectory() as folder:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.jobs) as pool:
            results = pool.map(lambda job: count(*job, Path(folder)), jobs)
            counts = dict(zip(jobs, results, strict=True))
    workload = bench_loop.WORKLOADS["overhead"]
    full_run = workload["epochs"] * workload["samples"] // workload["batch"]
    hand_step = (counts[("hand-written", many)] - counts[("hand-written", few)]) / (many - few)
    hand_fixed = counts[("hand-written", few)] - few * hand_step
    print(f"overhead workload, 1 thread, 4 epochs of {few} and of {many} steps in all; "
          f"instructions per step and of a whole {full_run}-step run, relative to the "
          "hand-written loop")  # fmt: skip
    print(f"{'variant':17} {'per step':>10} {'ratio':>7} {'fixed':>12} {'run ratio':>9}")
    for variant in variants:
        step = (counts[(variant, many)] - counts[(variant, few)]) / (many - few)
        fixed = counts[(variant, few)] - few * step
        run_ratio = (fixed + full_run * step) / (hand_fixed + full_run * hand_step)
        print(f"{variant:17} {step:10,.0f} {step / hand_step:7.4f} {fixed - hand_fixed:12,.0f} "
              f"{run_ratio:9.4f}")  # fmt: skip
    print(
        f"(fixed: instructions beyond the hand-written loop's, once per run; {os.cpu_count()} "
        "CPUs, counts do not depend on them)"
    )


if __name__ == "__main__":
    main()
