"""The README's main job, exactly as configured: it must learn the digits and log its dashboards."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainer.config import build_job, load_config

CONFIG = Path(__file__).parents[1] / "configs" / "digits_mlp.yaml"


def test_the_default_job_reaches_97_percent_and_logs_its_dashboards(tmp_path: Path) -> None:
    config = load_config([CONFIG], [f"trainer.run_dir={tmp_path}", "trainer.progress_bar=false"])
    job = build_job(config)
    trainer = job.make_trainer(
        train_loader=job.data.train_loader(), val_loader=job.data.val_loader()
    )
    history = trainer.fit()
    assert max(record["val/acc"] for record in history) >= 0.97
    assert history[-1]["val/acc"] >= 0.97

    assert trainer.log_dir == tmp_path / "version_0"
    events = EventAccumulator(str(trainer.log_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/acc", "lr"} <= tags
    assert len(events.Scalars("val/acc")) == len(history)
    assert list(trainer.checkpoint_dir.glob("last-*.ckpt"))
    # The best epoch by val/acc keeps its checkpoint, for `--ckpt_path best`.
    best = max(history, key=lambda record: record["val/acc"])  # the first of equals
    assert [path.name for path in trainer.checkpoint_dir.glob("epoch=*.ckpt")] == [
        f"epoch={int(best['epoch'])}-step={20 * (int(best['epoch']) + 1)}.ckpt"
    ]
