"""`benchmarks/bench_loop.py` really runs: both loops train to the same loss, and it reports
the per-step cost and the start-up cost separately (figures themselves are not checked)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_loop_reports_per_step_and_start_up_and_equal_losses() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_loop.py", "--workload", "overhead", "--rounds", "1",
         "--threads", "1", "--variants", "hand-written,trainer-bare", "--skip-imports"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "per step: the slope from the end of epoch 1 to the end of epoch 4 (1500 steps)" in out
    steps, startups = table(out, "us/step"), table(out, "start-up s")
    assert steps.keys() == startups.keys() == {"hand-written", "trainer-bare"}, out
    assert all(0 < float(row[1]) < 1e5 for row in steps.values()), out  # microseconds
    assert all(0 < float(row[1]) < 120 for row in startups.values()), out  # seconds
    losses = re.search(r"final loss trainer-bare vs hand-written: \[(.*)\] vs \[(.*)\]", out)
    assert losses is not None and losses[1] == losses[2], out
    target = r"overhead trainer-bare per step, paired ratio to hand-written: [\d.]+ <= 1.02"
    assert re.search(target, out), out


def table(out: str, column: str) -> dict[str, list[str]]:
    """The rows, by variant, of the table whose header names `column`."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("variant") and column in line)
    rows = {}
    for line in lines[start + 1 :]:
        if not line.startswith(("hand-written", "trainer-")) or " against " in line:
            break
        rows[line.split()[0]] = line.split()
    return rows
