"""The ``jaxsep`` command line (also ``python -m jaxsep``).

Each subcommand is a pair of small functions: ``_add_<name>(subparsers)`` declares its
arguments and ``_run_<name>(args) -> int`` runs it. ``main(argv)`` parses and dispatches, so
every subcommand can be tested by calling ``main([...])``.

  jaxsep info MODEL [--width W] [--resolution R] [--conv separable|standard|grouped]
                    [--groups G] [--variant cifar|imagenet] [--shallow]
  jaxsep train --out DIR [--model NAME] [--width W] [--epochs E] [--batch-size B] ...
               [--resume]   (one flag per jaxsep.train.TrainConfig field)
  jaxsep eval --run DIR [--which best|last] [--data-dir DIR] [--json]
  jaxsep sweep FILE [--preset cpu|full] [--dry-run] [--only LABEL ...] [--collect-only]
               [--runs-dir DIR] [--results-dir DIR] [--keep-going] [--quiet] [--no-plot]
  jaxsep convert --from timm:NAME|torchvision:NAME --checkpoint FILE --out DIR
  jaxsep predict --run DIR IMAGE... [--top K]

train, eval and sweep first call :func:`jaxsep.host_memory.reuse_host_memory_from_env` (glibc
keeps freed host memory for the next step; ``JAXSEP_REUSE_HOST_MEMORY=0`` opts out) and
:func:`jaxsep.compilation_cache.enable_compilation_cache` (compiled steps are kept on disk for
the next run; ``JAXSEP_COMPILATION_CACHE=0`` opts out).

When CIFAR-10 is neither on the machine nor downloadable (``jaxsep.data.DataUnavailableError``),
``main`` prints the loader's message as one line with the offline alternatives and returns 2;
``--verbose`` (before or after the subcommand) adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence

from jaxsep._choices import CONV_KINDS, VARIANTS

__all__ = ["build_parser", "main"]

# variant -> default square input resolution
DEFAULT_RESOLUTION = {"cifar": 32, "imagenet": 224}


def _add_info(subparsers: argparse._SubParsersAction) -> None:
    from jaxsep import models

    parser = subparsers.add_parser(
        "info",
        help="print a model's per-layer table: output shapes, parameters, multiply-adds",
        description="Print a model's per-layer table (shapes, parameters, multiply-adds for "
        "one image) without allocating it.",
    )
    parser.add_argument("model", choices=models.list_models(), metavar="MODEL",
                        help=f"one of {', '.join(models.list_models())}")
    parser.add_argument("--width", type=float, default=None, metavar="W",
                        help="width multiplier (default 1.0)")
    parser.add_argument("--resolution", type=int, default=None, metavar="R",
                        help="input height and width (default the model's: 224 for imagenet, "
                        "EfficientNet's per scale, 32 for cifar)")
    parser.add_argument("--conv", choices=CONV_KINDS[:3], default=None,
                        help="the 3x3 layers of mobilenet_v1 (default separable)")
    parser.add_argument("--groups", type=int, default=None, metavar="G",
                        help="groups of --conv grouped, or shufflenet_v1's g")
    parser.add_argument("--variant", choices=VARIANTS, default="imagenet",
                        help="stem and default resolution (default imagenet)")
    parser.add_argument("--shallow", action="store_true", default=None,
                        help="mobilenet_v1 without the five 14x14x512 layers")
    parser.set_defaults(run=_run_info)


# info's model options: flag -> keyword of models.create
_INFO_FLAGS = {
    "width": "width_multiplier",
    "conv": "conv",
    "groups": "groups",
    "shallow": "shallow",
}


def _run_info(args: argparse.Namespace) -> int:
    from flax import nnx

    from jaxsep import models
    from jaxsep.summary import summary

    kwargs = {
        key: getattr(args, flag)
        for flag, key in _INFO_FLAGS.items()
        if getattr(args, flag) is not None
    }
    kwargs["variant"] = args.variant
    try:
        model = nnx.eval_shape(lambda: models.create(args.model, **kwargs))
        # EfficientNet's resolution grows with its scale (240 for B1 ... 600 for B7).
        resolution = args.resolution or getattr(
            model, "default_resolution", DEFAULT_RESOLUTION[args.variant]
        )
        summary(model, (1, resolution, resolution, 3))
    except TypeError as error:
        print(
            f"jaxsep info: error: {args.model}: {error} (--conv and --shallow apply to "
            "mobilenet_v1, --groups to mobilenet_v1 and shufflenet_v1)",
            file=sys.stderr,
        )
        return 2
    except ValueError as error:
        print(f"jaxsep info: error: {error}", file=sys.stderr)
        return 2
    return 0


def _prepare_process() -> None:
    # Before the first computation: XLA:CPU's threads must not have made arenas of their own,
    # and only compilations after enable_compilation_cache() are cached.
    from jaxsep import compilation_cache, host_memory

    host_memory.reuse_host_memory_from_env()
    compilation_cache.enable_compilation_cache()


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    from jaxsep import train

    parser = subparsers.add_parser(
        "train",
        help="train a model on CIFAR-10 (or synthetic data) and evaluate it",
        description="Train a model and write config.json, metrics.jsonl, summary.json and "
        "checkpoints to --out. Rerunning on an existing --out resumes it (or, when it stopped "
        "before its first step, starts it afresh). Exit status: 0 done, 2 bad configuration, "
        "1 non-finite loss, 130/143 stopped by SIGINT/SIGTERM (a checkpoint of the last step "
        "was saved; stopped before the first step, nothing was saved).",
    )
    train.add_train_arguments(parser)
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from jaxsep import train

    _prepare_process()
    return train.run_train(args)


def _add_eval(subparsers: argparse._SubParsersAction) -> None:
    from jaxsep import train

    parser = subparsers.add_parser(
        "eval",
        help="test accuracy of a trained run's best (or last) checkpoint",
        description="Reload a run's best checkpoint (or --which last) and report its test "
        "accuracy.",
    )
    train.add_eval_arguments(parser)
    parser.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from jaxsep import train

    _prepare_process()
    return train.run_eval(args)


def _add_sweep(subparsers: argparse._SubParsersAction) -> None:
    from jaxsep import sweep

    parser = subparsers.add_parser(
        "sweep",
        help="train every point of a sweep file (experiments/*.toml) and collect the results",
        description="Run every point of a sweep file through the training harness into "
        "RUNS/<sweep>_<preset>/<point>/ (finished points are skipped, interrupted ones "
        "resumed), then write RESULTS/<sweep>_<preset>.csv, .md and .png. Exit status: 0 done, "
        "2 bad sweep file or a run folder of another configuration, 1 a point failed, 130/143 "
        "stopped by SIGINT/SIGTERM (rerun the same command to resume).",
    )
    sweep.add_sweep_arguments(parser)
    parser.set_defaults(run=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> int:
    from jaxsep import sweep

    _prepare_process()
    return sweep.run_sweep_command(args)


def _add_convert(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert timm or torchvision weights into a jaxsep model folder",
        description="Convert a timm or torchvision checkpoint (.safetensors; .pth/.bin need "
        "torch) into DIR: config.json (model, arguments, the source's preprocessing) and an "
        "Orbax checkpoint, which jaxsep.models.load(DIR) and jaxsep predict read. Exit "
        "status: 0 done, 2 bad name, file or state dict. See docs/convert.md.",
    )
    parser.add_argument("--from", dest="source", required=True, metavar="LIBRARY:NAME",
                        help="timm:NAME or torchvision:NAME, e.g. timm:mobilenetv3_large_100")
    parser.add_argument("--checkpoint", required=True, metavar="FILE",
                        help="the source model's weights (its state_dict)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="the folder to write (must not exist, or be empty)")
    parser.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from jaxsep import convert

    try:
        state = convert.load_state_dict(args.checkpoint)
        converted = convert.convert_source(args.source, state)
        out = convert.save(converted, args.out)
    except (ValueError, TypeError, ImportError, OSError) as error:
        print(f"jaxsep convert: error: {error}", file=sys.stderr)
        return 2
    kwargs = ", ".join(f"{k}={v!r}" for k, v in converted.model_kwargs.items())
    print(f"{args.source} -> {converted.name}({kwargs}) in {out}")
    return 0


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="print the top classes of images with a converted model",
        description="Classify images with a folder written by jaxsep convert, preprocessed as "
        "the source model's (resize, centre crop, normalization); needs Pillow. Exit status: "
        "0 done, 2 bad folder or image.",
    )
    parser.add_argument("--run", dest="run_dir", required=True, metavar="DIR",
                        help="a folder written by jaxsep convert")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--top", type=int, default=5, metavar="K",
                        help="classes printed per image (default 5)")
    parser.set_defaults(run=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from jaxsep.convert import predict

    try:
        results = predict.predict(args.run_dir, args.images, top=args.top)
    except (ValueError, TypeError, ImportError, OSError) as error:
        print(f"jaxsep predict: error: {error}", file=sys.stderr)
        return 2
    for image, classes in zip(args.images, results):
        print(image)
        for index, name, probability in classes:
            print(f"  {probability:7.2%}  {name} ({index})")
    return 0


# Subcommand name -> the function that declares it. Add train/eval/sweep here.
SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "info": _add_info,
    "train": _add_train,
    "eval": _add_eval,
    "sweep": _add_sweep,
    "convert": _add_convert,
    "predict": _add_predict,
}


VERBOSE_HELP = "when CIFAR-10 can be neither found nor downloaded, also print the traceback"

# What each subcommand that loads data can do when CIFAR-10 is not on the machine and cannot be
# downloaded.
_OFFLINE_HINTS = {
    "train": "offline, --dataset synthetic needs no data and --data-dir DIR points at a local "
    "copy",
    "eval": "--data-dir DIR points at a local copy",
    "sweep": 'offline, data_dir = "DIR" in the sweep file\'s [base] points at a local copy',
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxsep",
        description="Depthwise-separable convolutions for JAX: models and tools.",
    )
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS.values():
        add(subparsers)
    for name in _OFFLINE_HINTS:  # the subcommands that load data
        # SUPPRESS: unless given here, the subcommand leaves `jaxsep --verbose CMD` as it is.
        subparsers.choices[name].add_argument(
            "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (argparse errors exit with 2)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except RuntimeError as error:
        # Only the data package raises this, so it is loaded by now: the import is free.
        from jaxsep.data import DataUnavailableError

        if not isinstance(error, DataUnavailableError):
            raise
        if args.verbose:
            traceback.print_exception(error, file=sys.stderr)
        message = str(error).replace("\n", " ")
        hint = _OFFLINE_HINTS.get(args.command)
        print(
            f"jaxsep {args.command}: error: {message}" + (f" ({hint})" if hint else ""),
            file=sys.stderr,
        )
        return 2
