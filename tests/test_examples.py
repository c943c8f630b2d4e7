"""Every example of `examples/` runs briefly here, and the lesson it teaches is asserted.

The examples are imported as the package `examples` (as configs name them) and their
`main(argv)` is called with fewer epochs or less data where the full run would be slow;
the figures each returns are the ones it prints. Every config of `configs/` is run
through the real command line for an epoch.
"""

from __future__ import annotations

import importlib
import math
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer import cli
from trainer.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(path.stem for path in (REPO / "examples").glob("*.py") if path.stem != "__init__")
CONFIGS = sorted(path.name for path in (REPO / "configs").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _examples_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))


def run_example(name: str, *argv: str) -> Any:
    """Call `examples/<name>.py`'s main with `argv`, in this test's working folder."""
    return importlib.import_module(f"examples.{name}").main(list(argv))


def test_linear_regression_learns_the_slope_two(capsys: pytest.CaptureFixture[str]) -> None:
    figures = run_example("linear_regression")
    assert figures["weight"] == pytest.approx(2.0, abs=0.01)
    assert figures["bias"] == pytest.approx(0.0, abs=0.01)
    assert figures["prediction_at_5"] == pytest.approx(10.0, abs=0.05)
    assert "learned weight 2.00" in capsys.readouterr().out


def test_two_features_and_four_examples_classify_a_new_object() -> None:
    figures = run_example("glasses_vs_rings")
    assert figures["label"] == "glasses"
    assert figures["probability"] > 0.9


def test_the_hand_written_loop_and_trainer_reach_identical_weights() -> None:
    figures = run_example("linear_random_data", "--epochs", "2", "--samples", "1000")
    assert figures["weight_difference"] == 0.0
    assert figures["hand_loss"] == pytest.approx(figures["trainer_loss"], rel=1e-6)
    assert figures["iterations_per_epoch"] == 32  # ceil(1000 / 32)
    assert figures["optimizer_steps"] == 2 * 32
    assert figures["trainer_loss"] < 0.02 < figures["first_loss"]  # down to the noise, 0.1**2


def test_dropout_is_active_in_training_and_off_in_evaluation() -> None:
    figures = run_example("mlp_dropout", "--epochs", "15")
    assert figures["train_outputs_differ"] == 1.0
    assert figures["val_outputs_differ"] == 0.0
    assert figures["val_acc"] >= 0.9
    without = run_example("mlp_dropout", "--epochs", "1", "--dropout", "0", "--run-dir", "off")
    assert without["train_outputs_differ"] == 0.0  # the check itself can tell the difference


def test_the_default_digits_job_learns_and_generalises_to_the_test_set() -> None:
    figures = run_example("digits_mlp", "--epochs", "3")
    assert figures["val_acc"] >= 0.85
    assert figures["test_acc"] >= 0.85


def test_the_cnn_learns_from_torchvision_augmented_digits() -> None:
    figures = run_example("digits_cnn", "--epochs", "3")
    assert "torchvision.transforms.v2" in sys.modules
    data = importlib.import_module("examples.digits_cnn").DigitImages(augment=True)
    first, second = data.train_set[0][0], data.train_set[0][0]
    assert first.shape == (1, 8, 8) and not first.equal(second)  # a new random view each time
    assert figures["val_acc"] >= 0.75


def test_transfer_learning_trains_the_head_and_leaves_the_frozen_backbone_alone() -> None:
    figures = run_example(
        "transfer_learning", "--epochs", "2", "--train-size", "256", "--batch-size", "16"
    )
    assert figures["backbone_change"] == 0.0  # weights and BatchNorm running statistics
    assert figures["batches_with_backbone_training"] == 0
    assert figures["head_change"] > 0
    assert figures["last_loss"] < figures["first_loss"]
    assert figures["val_acc"] > 0.3  # random features, a linear head: well above chance (0.1)


def test_too_small_a_learning_rate_crawls_and_too_large_diverges() -> None:
    curves = run_example("learning_rates", "--epochs", "3")
    too_small, good, too_large = curves[0.001], curves[0.1], curves[1.5]
    assert good[-1] < 0.02
    assert too_small[-1] > 0.5 * too_small[0] and too_small[-1] > 100 * good[-1]
    assert too_large[-1] == math.inf and len(too_large) < len(good)  # stopped by the error


def test_the_lr_finder_suggests_a_rate_that_trains_and_restores_the_model() -> None:
    figures = run_example("lr_finder", "--epochs", "2")
    assert figures["restored"] == 1.0
    assert 1e-3 < figures["suggestion"] < 2.0
    assert figures["suggested_acc"] > figures["slow_acc"] + 0.2
    assert Path("runs/lr_finder/lr_find.png").read_bytes().startswith(b"\x89PNG")


def test_overfitting_opens_a_gap_and_each_fix_narrows_it() -> None:
    overfitting = importlib.import_module("examples.overfitting")
    results = run_example("overfitting", "--epochs", "40", "--plot", "curves.png")
    no_fix = results["no fix"]
    assert no_fix["train_loss"] < 0.01
    assert no_fix["val_loss"] > no_fix["best_val_loss"] + 0.25  # the validation loss turned
    assert no_fix["gap"] > 1.0
    for fix in overfitting.FIXES:
        assert results[fix]["val_loss"] < no_fix["val_loss"] - 0.2, fix
    stopped = results["early stopping"]
    assert stopped["epochs"] < 40
    assert stopped["val_loss"] == pytest.approx(stopped["best_val_loss"], abs=1e-4)
    for folder in ("no_fix", "more_data", "dropout", "early_stopping", "augmentation"):
        steps, values = overfitting.read_scalars(Path("runs/overfitting") / folder, "val/loss")
        assert len(values) == len(steps) >= 20  # the curves TensorBoard shows
    assert Path("curves.png").read_bytes().startswith(b"\x89PNG")


def test_adam_is_ahead_of_plain_sgd_after_a_few_epochs() -> None:
    histories = run_example("adam_vs_sgd", "--epochs", "3")
    sgd, adam = histories["SGD (lr 0.01)"][-1], histories["Adam (lr 0.001)"][-1]
    assert adam["train/loss"] < sgd["train/loss"] - 0.5
    assert adam["val/acc"] > sgd["val/acc"] + 0.3


def test_the_character_language_model_learns_the_text() -> None:
    figures = run_example("char_lm", "--epochs", "3")
    assert figures["first_bits"] < figures["chance_bits"]
    assert figures["last_bits"] < figures["first_bits"] - 1.0
    assert figures["sample"].startswith("Beautiful is ") and len(figures["sample"]) == 73


def test_contrastive_training_pulls_pairs_together_and_pushes_others_apart() -> None:
    figures = run_example("contrastive", "--epochs", "3")
    assert figures["loss_after"] < figures["loss_before"]
    assert figures["other_similarity_after"] < figures["other_similarity_before"] - 0.3
    pair_gap_before = figures["pair_similarity_before"] - figures["other_similarity_before"]
    pair_gap_after = figures["pair_similarity_after"] - figures["other_similarity_after"]
    assert pair_gap_after > pair_gap_before + 0.4
    assert figures["twin_found_after"] > 2 * figures["twin_found_before"]


def test_the_gan_networks_compete_and_samples_are_written() -> None:
    figures = run_example("gan_digits", "--epochs", "8")
    assert figures["generator_change"] > 0 and figures["discriminator_change"] > 0
    # Neither side has won: the discriminator still catches some fakes and misses others.
    assert 0.05 < figures["d_acc_fake"] < 0.95
    assert 0.05 < figures["d_acc_real"] < 1.0
    assert figures["sample_files"] == 8
    grid = Path("runs/gan_digits/version_0/samples_epoch007.png")
    assert grid.read_bytes().startswith(b"\x89PNG")


def test_the_vae_bound_improves_and_only_validation_draws_reconstructions() -> None:
    figures = run_example("vae_digits", "--epochs", "3")
    assert figures["last_train_neg_elbo"] < figures["first_train_neg_elbo"] - 5
    assert figures["last_val_neg_elbo"] < figures["first_val_neg_elbo"] - 3
    assert figures["pictures_after_fit"] == 3  # one per validation
    assert figures["pictures_added_by_test"] == 0  # test_step ran validation_step: no picture
    pictures = sorted(path.name for path in Path("runs/vae_digits/version_0").glob("*.png"))
    assert pictures == [f"reconstructions_epoch{epoch:03d}.png" for epoch in range(3)]


def test_tbptt_resumes_exactly_with_its_hidden_state_and_drifts_without_it() -> None:
    figures = run_example("tbptt", "--epochs", "3", "--resume-at", "30")
    assert figures["batches_per_epoch"] == 20  # step 30 is mid-epoch: the state matters there
    assert figures["loss"] < 0.05  # the sine is learnt (the noise alone is 0.05**2)
    assert figures["resumed_identical"] == 1.0  # torch.equal, every parameter
    assert figures["forgetful_identical"] == 0.0 and figures["forgetful_difference"] > 1e-4
    (checkpoint,) = Path("runs/tbptt/straight").glob("version_0/checkpoints/*step=30.ckpt")
    hidden, cell = load_checkpoint(checkpoint)["trainer"]["hidden"]
    assert hidden.shape == cell.shape == (1, 16, 32)  # (layers, streams, features)


def test_lbfgs_reaches_the_least_squares_fit_that_sgd_does_not_in_as_many_steps() -> None:
    figures = run_example("lbfgs_regression", "--steps", "10")
    best = figures["least_squares_loss"]
    assert figures["lbfgs_loss"] == pytest.approx(best, rel=1e-3)
    assert figures["sgd_loss"] > 10 * best  # the same 10 steps
    assert figures["sgd_same_evaluations_loss"] > 3 * best  # as many gradients as LBFGS took
    assert 10 < figures["evaluations"] <= 10 * 20


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_is_a_script_with_help(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", [f"examples/{name}.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "examples" / f"{name}.py"), run_name="__main__")
    assert exit_info.value.code == 0
    assert f"usage: {name}.py" in capsys.readouterr().out


def test_an_example_runs_as_python_examples_name(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "linear_regression.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "learned weight 2.00" in result.stdout
    run = tmp_path / "runs" / "linear_regression" / "version_0"
    assert list(run.glob("events.out.tfevents.*"))


# Overrides that keep each config's run to a second or two; the lesson is checked above.
QUICK = {
    "transfer_learning.yaml": ["--data.train_size", "64"],
    "digits_cnn.yaml": ["--data.augment", "false"],
    "char_lm_steps.yaml": ["--trainer.max_steps", "30", "--trainer.val_check_interval", "10"],
}
# A config that trains by steps on an endless stream ends inside its first epoch.
BY_STEPS = {"char_lm_steps.yaml": "0 epochs and 60 batches of epoch 1, 30 optimizer steps "
                                  "(max_steps 30 reached)"}  # fmt: skip


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_trains_through_the_command_line(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "fit", "--config", str(REPO / "configs" / config),
        "--trainer.max_epochs", "1", "--trainer.run_dir", str(tmp_path / "run"),
        "--trainer.progress_bar", "false", *QUICK.get(config, []),
    ]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"trained:       {BY_STEPS.get(config, '1 epochs')}" in printed
    if config in BY_STEPS:  # its record carries the validation at its last step
        assert "final metrics: " in printed and "val/loss" in printed.split("final metrics:")[1]


def test_the_linear_regression_config_prints_the_weight_reaching_two(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(REPO / "configs" / "linear_regression.yaml")
    assert cli.main(["fit", "-c", config, "--trainer.run_dir", str(tmp_path)]) == 0
    assert "epoch  29  loss 0.000000  weight 2.0000" in capsys.readouterr().out


def test_a_config_names_classes_of_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The console script, unlike `python -m`, would not find ./my_models.py by itself."""
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n\ndef tiny():\n    return nn.Linear(1, 1)\n"
    )
    (tmp_path / "job.yaml").write_text(
        "model: {class_path: my_models.tiny}\n"
        "data: {class_path: examples.linear_regression.LineData}\n"
        "loss_fn: {class_path: torch.nn.MSELoss}\n"
        "optimizer: {class_path: torch.optim.SGD, lr: 0.1}\n"
        "trainer: {max_epochs: 1, progress_bar: false, logger: false, checkpoint: false}\n"
    )
    monkeypatch.setattr(sys, "path", [path for path in sys.path if path not in ("", ".")])
    monkeypatch.chdir(tmp_path)
    assert cli.main(["fit", "--config", "job.yaml"]) == 0, capsys.readouterr().err
    assert "trained:       1 epochs" in capsys.readouterr().out


def test_an_average_of_the_weights_validates_better_than_the_weights() -> None:
    figures = run_example("ema_digits", "--epochs", "4")
    assert figures["ema_val_loss"] < figures["plain_val_loss"]
    assert figures["ema_val_acc"] >= figures["plain_val_acc"]


def test_the_stream_language_model_trains_by_steps_and_resumes_the_stream_exactly() -> None:
    straight = run_example(
        "char_lm_stream", "--max-steps", "40", "--val-every", "10", "--run-dir", "runs/straight"
    )
    assert straight["steps"] == 40
    assert straight["metrics"]["val/bits_per_char"] < straight["chance_bits"] - 1.0
    assert straight["metrics"]["train/items_per_sec"] > 0  # characters per second
    stopped = run_example(
        "char_lm_stream", "--max-steps", "40", "--val-every", "10", "--run-dir", "runs/cut",
        "--max-time", "0.5",
    )  # fmt: skip
    assert 0 < stopped["steps"] < 40, "the time budget did not stop the run"
    resumed = run_example(
        "char_lm_stream", "--max-steps", "40", "--val-every", "10", "--run-dir", "runs/cut",
        "--ckpt-path", "last",
    )  # fmt: skip
    assert resumed["steps"] == 40
    for name, tensor in straight["weights"].items():
        assert torch.equal(tensor, resumed["weights"][name]), name
