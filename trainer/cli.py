"""The `trainer` command: fit, validate, test or predict with a job described by YAML configs.

argparse reads the subcommand and its few flags; every other argument is a config override
(`--trainer.max_epochs 3`, `--trainer.max_epochs=3` or `trainer.max_epochs=3`) handed to
`trainer.config`, which merges, checks and builds the objects; `trainer.commands` runs the
command. `trainer plot RUN_DIR` draws a finished run from its CSV and needs no config. A
mistake in the input ends with one `error: ...` line on stderr and exit status 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from trainer import commands
from trainer.callbacks.monitor import MissingMetricError
from trainer.checkpoint import CheckpointError
from trainer.config import ConfigError, build_job, config_to_yaml, load_config
from trainer.preemption import TrainingInterrupted
from trainer.report import executable
from trainer.run_files import NoCheckpointError
from trainer.trainer import NonFiniteLossError

__all__ = ["build_parser", "main", "overrides_to_dotlist"]

_COMMANDS = {
    "fit": "train the model, or resume a run with --ckpt_path last",
    "validate": "report validation metrics of a checkpoint on data.val_loader()",
    "test": "report test metrics of a checkpoint on data.test_loader()",
    "predict": "save predictions on data.predict_loader() to <run_dir>/predictions.pt",
    "lr-find": "sweep the learning rate over training batches, plot the loss, suggest a value",
}
_OVERRIDES_HELP = """\
Any config key can be overridden after the flags, in any of these forms:
  --trainer.max_epochs 3    --trainer.max_epochs=3    trainer.max_epochs=3
  --model.hidden [256,128]  --optimizer.lr 1e-3       --scheduler null
Values are read as YAML; lists use their index: --callbacks.0.patience 5.

example:
  trainer fit --config configs/digits_mlp.yaml --trainer.max_epochs 3
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; overrides are not declared here, `main` collects them."""
    parser = argparse.ArgumentParser(
        prog="trainer",
        description="Train and evaluate PyTorch models described by YAML configs.",
        epilog="Run `trainer COMMAND --help` for the flags and override syntax of a command.",
        allow_abbrev=False,
    )
    # Not required: `trainer` alone gets the list of commands and our one-line error.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in _COMMANDS.items():
        command = commands.add_parser(
            name,
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}.",
            epilog=_OVERRIDES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,  # so `--c...` overrides are never taken for `--config`
        )
        command.add_argument(
            "-c",
            "--config",
            action="append",
            default=[],
            metavar="FILE",
            help="YAML config file; repeat it to merge later files over earlier ones",
        )
        command.add_argument(
            "--ckpt_path",
            metavar="last|best|PATH",
            help="checkpoint to start from: the run_dir's newest (last), its best by the "
            "monitored metric (best), or a file",
        )
        command.add_argument(
            "--print_config",
            action="store_true",
            help="print the merged config, overrides and interpolation applied, and exit",
        )
        if name == "lr-find":
            _add_lr_find_flags(command)
    plot = commands.add_parser(
        "plot",
        help="draw a run's losses, metrics and learning rate from its metrics.csv into a PNG",
        description="Draw train vs validation loss, the metrics and the learning rate of a "
        "run from RUN_DIR/metrics.csv into a PNG (needs matplotlib: the [plot] extra).",
        allow_abbrev=False,
    )
    plot.add_argument("run_dir", metavar="RUN_DIR", help="the run's folder (its trainer.run_dir)")
    plot.add_argument(
        "-o", "--output", metavar="PNG", help="where to write the image [RUN_DIR/metrics.png]"
    )
    return parser


def _add_lr_find_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--min_lr", type=float, default=1e-7, help="first learning rate")
    command.add_argument("--max_lr", type=float, default=10.0, help="last learning rate")
    command.add_argument(
        "--num_steps", type=int, default=100, help="training batches in the sweep, one per rate"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run `trainer COMMAND ...`; returns the exit status: 0 done, 1 the run failed, 2 bad
    input, 128 + the signal when stopped by one (130 Ctrl-C, 143 SIGTERM).

    Mistakes in the input are reported as one line without a traceback: the user needs the
    key and the fix, not the frames of our code. A run stopped by a signal prints the
    command that resumes exactly it.
    """
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        print(
            f"\nerror: no command; choose one of {', '.join([*_COMMANDS, 'plot'])}, e.g. "
            "trainer fit --config configs/digits_mlp.yaml",
            file=sys.stderr,
        )
        return 2
    # As with `python -m trainer`: a config's class_path may name a module of the current
    # directory (your models.py, the repository's examples/), even from the console script.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return _run(args, extras)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except CheckpointError as error:  # what --ckpt_path names cannot be used
        print(f"error: {_checkpoint_problem(args, error)}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, MissingMetricError) as error:  # the run's own verdicts
        print(f"error: {error}", file=sys.stderr)
        return 1
    except TrainingInterrupted as stop:  # saved a checkpoint first
        command = _resume_command(args, extras, stop.checkpoint_path)
        print(f"interrupted; resume this run with:\n  {command}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("interrupted; `trainer fit ... --ckpt_path last` resumes the run", file=sys.stderr)
        return 130


def _checkpoint_problem(args: argparse.Namespace, error: CheckpointError) -> str:
    """The checkpoint error under the flag that chose the file, with what to run first."""
    message = str(error)
    if args.ckpt_path is None:
        return message
    if isinstance(error, NoCheckpointError):  # nothing trained there yet
        message += (
            " Train first with `trainer fit` and the same config and run_dir, or pass the "
            "path of a .ckpt file."
        )
    return f"--ckpt_path {args.ckpt_path}: {message}"


def _resume_command(args: argparse.Namespace, extras: list[str], checkpoint: Path) -> str:
    """`trainer fit` with the same configs and overrides, from exactly `checkpoint`."""
    configs = [part for path in args.config for part in ("--config", path)]
    words = ["fit", *configs, *extras, "--ckpt_path", str(checkpoint)]
    return f"{executable('trainer')} {shlex.join(words)}"


def overrides_to_dotlist(args: Sequence[str]) -> list[str]:
    """Turn `--key value`, `--key=value` and `key=value` into OmegaConf dotlist entries.

    The first two are what argparse users type, the last what Hydra and OmegaConf users type.
    """
    dotlist: list[str] = []
    position = 0
    while position < len(args):
        arg = args[position]
        position += 1
        if arg.startswith("--"):
            key, has_value, value = arg[2:].partition("=")
            if not has_value:
                if position == len(args) or args[position].startswith("--"):
                    raise ConfigError(f"--{key} has no value; write --{key} VALUE.")
                value = args[position]
                position += 1
        elif "=" in arg:
            key, _, value = arg.partition("=")
        else:
            raise ConfigError(
                f"unexpected argument {arg!r}; overrides look like --trainer.max_epochs 3, "
                "--trainer.max_epochs=3 or trainer.max_epochs=3."
            )
        if not key:
            raise ConfigError(f"override {arg!r} has no key; write --section.key VALUE.")
        dotlist.append(f"{key}={value}")
    return dotlist


def _run(args: argparse.Namespace, extras: list[str]) -> int:
    if args.command == "plot":
        if extras:
            raise ConfigError(f"trainer plot takes RUN_DIR and --output only; got {extras}.")
        commands.plot(args.run_dir, args.output)
        return 0
    if not args.config and not extras:
        raise ConfigError(
            f"no config given; pass --config FILE, e.g. "
            f"trainer {args.command} --config configs/digits_mlp.yaml"
        )
    config = load_config(args.config, overrides_to_dotlist(extras))
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    ckpt_path = args.ckpt_path
    if ckpt_path not in (None, "last", "best") and not Path(ckpt_path).is_file():
        raise ConfigError(
            f"--ckpt_path: no file {ckpt_path!r}; pass last, best or the path of a checkpoint."
        )
    if args.command == "lr-find":
        commands.lr_find(
            build_job(config), ckpt_path, args.config,
            min_lr=args.min_lr, max_lr=args.max_lr, num_steps=args.num_steps,
        )
        return 0
    if ckpt_path is None and args.command != "fit":
        print(
            f"note: no --ckpt_path; {args.command} uses the model as initialised. "
            "Pass --ckpt_path last (or best, or a file) to use a trained run.",
            file=sys.stderr,
        )
    commands.RUNNERS[args.command](build_job(config), ckpt_path)
    return 0
