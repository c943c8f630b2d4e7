"""The default digits job once per precision: does mixed precision learn as well as float32?

    python benchmarks/digits_precision.py --device cuda      # "32", "16-mixed", "bf16-mixed"
    python benchmarks/digits_precision.py --device cpu --precisions 32 bf16-mixed --max-epochs 5

Each run is `configs/digits_mlp.yaml` as `trainer fit` builds it (same seed, so the same
initial weights and data order), with only the precision, the device and the run folder
overridden. It prints the final and best `val/acc` of every run and exits 1 when a mode
other than "32" ends more than `--max-drop` (default 0.02, two points) below "32".

The config is read through `trainer.config` when OmegaConf is installed. A machine that has
PyTorch but not the project's own install (a GPU box that cannot reach a package index) may
lack OmegaConf; the YAML is then read with PyYAML and its `${section.key}` references are
filled in here, which is all that this config uses.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # this checkout's trainer, not an installed one

CONFIG = REPO_ROOT / "configs" / "digits_mlp.yaml"
_REFERENCE = re.compile(r"\$\{([\w.]+)\}")


def load_digits_config(max_epochs: int | None, trainer_options: dict[str, Any]) -> dict[str, Any]:
    """The default job's config, resolved (`T_max` follows `max_epochs`), with
    `trainer_options` set in its `trainer:` section."""
    try:
        from trainer.config import load_config

        overrides = [f"trainer.max_epochs={max_epochs}"] if max_epochs else []
        config = load_config([CONFIG], overrides)
    except ModuleNotFoundError as error:
        if error.name != "omegaconf":
            raise
        import yaml

        config = yaml.safe_load(CONFIG.read_text())
        config["trainer"] |= {"max_epochs": max_epochs} if max_epochs else {}
        config = _resolve(config, config)
    config["trainer"] |= trainer_options
    return config


def _resolve(value: Any, root: dict[str, Any]) -> Any:
    """Replace every whole-value `${a.b}` reference by the value it names."""
    if isinstance(value, dict):
        return {key: _resolve(item, root) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item, root) for item in value]
    match = _REFERENCE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return value
    target: Any = root
    for part in match[1].split("."):
        target = target[part]
    return _resolve(target, root)


def train(precision: str, device: str, run_dir: Path, max_epochs: int | None) -> dict[str, float]:
    """Fit the default job at `precision`; return its final and best validation accuracy."""
    from trainer.config import build_job

    options = {"precision": precision, "device": device, "run_dir": str(run_dir)}
    job = build_job(load_digits_config(max_epochs, options | {"progress_bar": False}))
    trainer = job.make_trainer(
        train_loader=job.data.train_loader(), val_loader=job.data.val_loader()
    )
    history = trainer.fit()
    accuracies = [epoch["val/acc"] for epoch in history]
    return {"final": accuracies[-1], "best": max(accuracies), "epochs": len(accuracies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="a Trainer device [cuda]")
    parser.add_argument(
        "--precisions", nargs="+", default=["32", "16-mixed", "bf16-mixed"],
        help='the modes to train, "32" first as the reference [32 16-mixed bf16-mixed]',
    )  # fmt: skip
    parser.add_argument("--max-drop", type=float, default=0.02, help="allowed val/acc loss")
    parser.add_argument("--max-epochs", type=int, help="override the config's 30 epochs")
    parser.add_argument("--run-root", type=Path, help="keep the runs here [a temporary folder]")
    settings = parser.parse_args()
    if settings.precisions[0] != "32":
        parser.error('--precisions: put "32" first; the other modes are compared with it')
    with tempfile.TemporaryDirectory() as scratch:
        root = settings.run_root or Path(scratch)
        results = {}
        for precision in settings.precisions:
            start = time.perf_counter()
            results[precision] = train(
                precision, settings.device, root / precision, settings.max_epochs
            )
            figures = results[precision]
            print(
                f"{precision:>10}: val/acc {figures['final']:.4f} (best {figures['best']:.4f}) "
                f"after {figures['epochs']} epochs, {time.perf_counter() - start:.1f} s",
                flush=True,
            )
    reference = results["32"]["final"]
    behind = {name: reference - figures["final"] for name, figures in results.items()}
    failed = [name for name, drop in behind.items() if drop > settings.max_drop]
    for name in failed:
        print(f'FAIL: {name} ends {behind[name]:.4f} below "32" (allowed {settings.max_drop})')
    if failed:
        raise SystemExit(1)
    print(f'every mode ends within {settings.max_drop} of "32" ({reference:.4f})')


if __name__ == "__main__":
    main()
