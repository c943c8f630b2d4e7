"""`benchmarks/gpu_check.sh` on a machine without CUDA: every CUDA step is a clean SKIP."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
CUDA_STEPS = ("gpu-tests", "resume", "precision", "benchmark", "sync-debug")


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs the whole check")
def test_without_cuda_the_gpu_check_skips_every_cuda_step_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "out"
    environment = {**os.environ, "OUT": str(out), "GPU_CHECK_PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(SCRIPT)], cwd=tmp_path, env=environment, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert f"SKIP  {'install':<11}    0s  GPU_CHECK_PYTHON={sys.executable}" in lines
    for step in CUDA_STEPS:
        reason = "no CUDA device: torch.cuda.is_available() is False"
        assert f"SKIP  {step:<11}    0s  {reason}" in lines, result.stdout
    summary = (out / "summary.txt").read_text()
    assert summary.splitlines()[2].split() == ["step", "status", "seconds", "note"]
    assert [line.split()[:2] for line in summary.splitlines()[3:9]] == [
        [step, "SKIP"] for step in ("install", *CUDA_STEPS)
    ]
    assert "0 step(s) failed" in summary
    assert summary in result.stdout
    assert sorted(path.name for path in out.iterdir()) == ["summary.txt"]  # nothing else ran


def test_the_precision_check_reads_the_default_config_alike_without_omegaconf(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GPU machine with torch but no package index may lack OmegaConf: same config then."""
    path = REPO / "benchmarks" / "digits_precision.py"
    spec = importlib.util.spec_from_file_location("digits_precision", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    options = {"precision": "16-mixed", "device": "cuda", "run_dir": "somewhere"}
    with_omegaconf = module.load_digits_config(7, options)
    monkeypatch.setitem(sys.modules, "omegaconf", None)  # what a missing package looks like
    without = module.load_digits_config(7, options)
    assert without == with_omegaconf
    assert without["scheduler"]["T_max"] == 7
    assert without["trainer"]["precision"] == "16-mixed"
