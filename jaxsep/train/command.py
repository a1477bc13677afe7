"""The ``jaxsep train`` and ``jaxsep eval`` subcommands: their arguments and runners, for
:mod:`jaxsep.cli` to declare (``add_*_arguments(parser)``) and dispatch (``run_*(args)``).

Exit status: 0 done; 2 bad configuration (reported before any compute); 1 the loss became
non-finite; 128 + signal number (130 for SIGINT, 143 for SIGTERM) when a signal stopped the
run (after saving a checkpoint; before the first step there is none to save). See
``docs/harness.md``.
"""

from __future__ import annotations

import argparse
import json
import sys

from jaxsep.train.config import add_config_arguments, config_from_args

__all__ = ["add_eval_arguments", "add_train_arguments", "run_eval", "run_train"]

TRAIN_EXAMPLE = (
    "example: jaxsep train --model mobilenet_v1 --width 0.5 --conv separable --epochs 30 "
    "--batch-size 128 --data-dir DIR --out runs/NAME --seed 0"
)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Declares ``jaxsep train``'s flags: one per TrainConfig field, ``--out`` required, and
    ``--resume``."""
    run = add_config_arguments(parser, exclude=("out",))["run"]
    run.add_argument(
        "--out", required=True, metavar="DIR",
        help="run folder: config.json, metrics.jsonl, summary.json, checkpoints/, best/. "
        "Rerunning on an existing folder continues it",
    )
    run.add_argument(
        "--resume", action="store_true",
        help="continue from the last checkpoint in --out; an error if there is none (as "
        "after a run stopped before its first step: rerun without --resume to start it "
        "afresh). Without --resume a run with checkpoints continues too",
    )
    if parser.epilog is None:
        parser.epilog = TRAIN_EXAMPLE


def _error(prog: str, error: BaseException) -> int:
    print(f"{prog}: error: {error}", file=sys.stderr)
    return 2


def run_train(args: argparse.Namespace) -> int:
    """Runs ``jaxsep train``; returns the exit status."""
    from jaxsep.train.loop import train_and_evaluate

    prog = "jaxsep train"
    try:
        config = config_from_args(args)
    except (TypeError, ValueError) as error:
        return _error(prog, error)
    try:
        train_and_evaluate(config, resume=True if getattr(args, "resume", False) else None)
    except Exception as error:
        return run_error_status(prog, error)
    return 0


def run_error_status(prog: str, error: Exception) -> int:
    """Reports an error a training run raised and returns the command's exit status, or
    re-raises it when it is a bug rather than an outcome: 128 + signal number for a run
    stopped by SIGINT/SIGTERM (its checkpoint saved, if a step had run), 1 for a diverged
    run, 2 for a bad configuration found once the run started (e.g. an unreadable data
    folder)."""
    from jaxsep.train.loop import NonFiniteLossError, TrainingInterrupted

    if isinstance(error, TrainingInterrupted):
        print(f"{prog}: {error}", file=sys.stderr)
        return error.exit_code
    if isinstance(error, NonFiniteLossError):
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    if isinstance(error, (TypeError, ValueError, OSError)) and getattr(
        error, "jaxsep_config_error", False
    ):
        return _error(prog, error)
    raise error


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Declares ``jaxsep eval``'s flags."""
    parser.add_argument(
        "--run", dest="run_dir", required=True, metavar="DIR",
        help="a run folder (--out of train), or a saved model folder (--out of jaxsep "
        "convert, jaxsep.models.save): then top-1 and top-5 accuracy on --data-dir",
    )
    parser.add_argument(
        "--which", choices=("best", "last"), default="best",
        help="the best test accuracy's checkpoint (default) or the last one (run folders)",
    )
    parser.add_argument(
        "--data-dir", default=None, metavar="DIR",
        help="a run folder: where the data is now, if not where the run found it. A saved "
        "model folder: the images, one subfolder per class; integer names are class indices, "
        "other names are sorted and numbered from 0 (as torchvision's ImageFolder; "
        "CIFAR-10's names take CIFAR-10's order); each image preprocessed as jaxsep predict "
        "does",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _run_eval_model(prog: str, args: argparse.Namespace) -> int:
    from jaxsep.convert.evaluate import evaluate_model

    if args.which != "best":
        return _error(prog, ValueError("--which applies to run folders; a saved model folder "
                                       "holds one set of weights"))
    if args.data_dir is None:
        return _error(prog, ValueError("a saved model folder needs --data-dir (a folder of "
                                       "images, one subfolder per class)"))
    try:
        result = evaluate_model(args.run_dir, args.data_dir)
    except (ValueError, OSError, ImportError) as error:
        return _error(prog, error)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        n = result["num_images"]
        print(
            f"{args.run_dir}: top-1 {100 * result['top1']:.2f}% "
            f"({round(result['top1'] * n)}/{n}), top-5 {100 * result['top5']:.2f}% "
            f"({round(result['top5'] * n)}/{n}) on {result['data_dir']}"
        )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Runs ``jaxsep eval``; returns the exit status."""
    from jaxsep.train.init_from import is_saved_model
    from jaxsep.train.loop import evaluate_run

    prog = "jaxsep eval"
    if is_saved_model(args.run_dir):
        return _run_eval_model(prog, args)
    try:
        result = evaluate_run(args.run_dir, which=args.which, data_dir=args.data_dir)
    except (TypeError, ValueError, OSError) as error:
        if getattr(error, "jaxsep_config_error", False) or isinstance(error, FileNotFoundError):
            return _error(prog, error)
        raise
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        correct = round(result["test_accuracy"] * result["num_test"])
        print(
            f"{args.run_dir}: test accuracy {100 * result['test_accuracy']:.2f}% "
            f"({correct}/{result['num_test']}), test loss {result['test_loss']:.4f} "
            f"({args.which} checkpoint, epoch {result['epoch']}, {result['dataset']})"
        )
    return 0
