"""The ``jaxsep`` command line (also ``python -m jaxsep``).

Each subcommand is a pair of small functions: ``_add_<name>(subparsers)`` declares its
arguments and ``_run_<name>(args) -> int`` runs it. ``main(argv)`` parses and dispatches, so
every subcommand can be tested by calling ``main([...])``.

  jaxsep info MODEL [--width W] [--resolution R] [--conv separable|standard|grouped]
                    [--groups G] [--variant cifar|imagenet] [--shallow]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

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
                        help="input height and width (default 224 for imagenet, 32 for cifar)")
    parser.add_argument("--conv", choices=("separable", "standard", "grouped"), default=None,
                        help="the 3x3 layers of mobilenet_v1 (default separable)")
    parser.add_argument("--groups", type=int, default=None, metavar="G",
                        help="groups of --conv grouped, or shufflenet_v1's g")
    parser.add_argument("--variant", choices=("cifar", "imagenet"), default="imagenet",
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
    resolution = args.resolution or DEFAULT_RESOLUTION[args.variant]
    try:
        model = nnx.eval_shape(lambda: models.create(args.model, **kwargs))
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


# Subcommand name -> the function that declares it. Add train/eval/sweep here.
SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "info": _add_info,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxsep",
        description="Depthwise-separable convolutions for JAX: models and tools.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS.values():
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (argparse errors exit with 2)."""
    args = build_parser().parse_args(argv)
    return args.run(args)
