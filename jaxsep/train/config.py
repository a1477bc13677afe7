"""``TrainConfig``: every hyperparameter of a training run, validated, JSON round-trippable,
and the source of the ``jaxsep train`` command-line flags.

Each field's metadata carries its help text (and choices), so the flags, the docs and the
checks cannot drift apart: ``add_config_arguments(parser)`` declares one flag per field
(``--max-train-examples`` for ``max_train_examples``, ``--augment/--no-augment`` for a bool)
and ``config_from_args(args)`` builds the config from the flags that were given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any

from jaxsep._choices import CONV_KINDS, IMPLS, VARIANTS
from jaxsep._validation import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_optional_int,
    check_str,
    fail,
)

__all__ = [
    "COMPUTE_DTYPES",
    "DATASETS",
    "OPTIMIZERS",
    "SCHEDULES",
    "TrainConfig",
    "add_config_arguments",
    "config_from_args",
]

DATASETS = ("cifar10", "synthetic")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "constant")
COMPUTE_DTYPES = ("float32", "bfloat16")
CONV_CHOICES = CONV_KINDS  # the name this module has always exported

# The defaults that depend on the optimizer (used when lr / weight_decay are None).
# sgd: the classic CIFAR recipe for batch 128 (lr 0.1, momentum 0.9, 5e-4); adamw: timm's and
# PyTorch's AdamW defaults for a small convnet (lr 1e-3, decoupled decay 0.05).
DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}
# Synthetic data size when max_train_examples / max_test_examples are not given.
SYNTHETIC_TRAIN = 5000
SYNTHETIC_TEST = 1000

# The jaxsep.models.create keywords that TrainConfig's own fields set (model_from_config); the
# model_args field holds any other.
SET_BY_FIELDS = frozenset(
    {"num_classes", "width_multiplier", "variant", "conv", "groups", "depth_multiplier",
     "dropout_rate", "impl", "dtype", "param_dtype", "rngs"}
)
# Fields that may differ between a run and its resumption: they change no result that has
# already been computed (epochs extends or shortens the run; see train_and_evaluate).
RESUMABLE_FIELDS = frozenset(
    {"epochs", "eval_every", "checkpoint_every_steps", "quiet", "data_dir", "out", "init_from"}
)


def _field(default: Any, help: str, choices: tuple | None = None, metavar: str | None = None):
    return dataclasses.field(
        default=default, metadata={"help": help, "choices": choices, "metavar": metavar}
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of one training run (see each field's ``help`` metadata).

    Construction validates every field and raises ``TypeError``/``ValueError`` naming the
    field, the rule and the value given. Ints are accepted for float fields and stored as
    floats, so ``TrainConfig.from_dict(config.to_dict()) == config``.

    ``lr=None`` and ``weight_decay=None`` mean the optimizer's default (``resolved_lr``,
    ``resolved_weight_decay``): 0.1 and 5e-4 for "sgd", 1e-3 and 0.05 for "adamw".
    """

    # --- model ---
    model: str = _field("mobilenet_v1", "model name (see `jaxsep info`)", metavar="NAME")
    width: float = _field(1.0, "width multiplier alpha, > 0", metavar="ALPHA")
    conv: str | None = _field(
        None, "mobilenet_v1's 3x3 layers (default separable)", choices=CONV_CHOICES
    )
    groups: int | None = _field(
        None, "groups of --conv grouped, or shufflenet_v1's g", metavar="G"
    )
    depth_multiplier: int | None = _field(
        None, "depth multiplier M of --conv factorized (depthwise 3x3 to C*M, then pointwise)",
        metavar="M",
    )
    variant: str = _field("cifar", "stem for 32x32 (cifar) or 224x224 inputs", VARIANTS)
    dropout: float | None = _field(
        None, "dropout before the classifier, in [0, 1) (default: the model's)", metavar="P"
    )
    impl: str = _field("auto", "depthwise and grouped convolution lowering", IMPLS)
    num_classes: int | None = _field(
        None,
        "classifier outputs (default: the dataset's classes; CIFAR-10 has 10; synthetic data "
        "is generated with N classes, default 10). With --init-from, a different number than "
        "the folder's gives a new, freshly initialized classifier head",
        metavar="N",
    )
    model_args: dict | None = _field(
        None,
        "more keyword arguments of jaxsep.models.create, as a JSON object (e.g. "
        "'{\"padding\": \"symmetric\"}'); --init-from of a saved model folder fills in its "
        "architecture arguments (padding, BatchNorm eps, activation, ...) not given here",
        metavar="JSON",
    )
    # --- data ---
    dataset: str = _field("cifar10", "training data (synthetic needs no files)", DATASETS)
    data_dir: str | None = _field(
        None,
        "CIFAR-10 location (archive, pickle folder or image folders); default the cache "
        "folder $JAXSEP_DATA_DIR or ~/.cache/jaxsep",
        metavar="DIR",
    )
    resolution: int | None = _field(
        None, "resize inputs to RxR on device (resolution multiplier); default as stored",
        metavar="R",
    )
    augment: bool = _field(True, "random crop (pad 4) and horizontal flip of train images")
    cutout: int = _field(
        0,
        "Cutout: side in pixels of a square set to the dataset mean at a random place in each "
        "train image, after crop, flip and resize (16: the paper's CIFAR-10 setting); 0: off",
        metavar="PX",
    )
    max_train_examples: int | None = _field(
        None,
        "train on a fixed random subset of N examples (chosen by --data-seed); for synthetic "
        f"data the number generated (default {SYNTHETIC_TRAIN})",
        metavar="N",
    )
    max_test_examples: int | None = _field(
        None,
        "evaluate on a fixed random subset of N test examples; for synthetic data the number "
        f"generated (default {SYNTHETIC_TEST})",
        metavar="N",
    )
    data_seed: int = _field(0, "seed of the subsets and of synthetic data", metavar="S")
    # --- optimization ---
    epochs: int = _field(30, "number of passes over the train set, >= 1", metavar="E")
    batch_size: int = _field(
        128, "global batch size (divisible by the number of devices)", metavar="B"
    )
    optimizer: str = _field("sgd", "SGD with (Nesterov) momentum, or AdamW", OPTIMIZERS)
    lr: float | None = _field(
        None, "peak learning rate (default 0.1 for sgd, 1e-3 for adamw)", metavar="LR"
    )
    momentum: float = _field(0.9, "SGD momentum in [0, 1)", metavar="M")
    nesterov: bool = _field(True, "Nesterov momentum (SGD)")
    adam_b1: float = _field(0.9, "AdamW beta1 in [0, 1)", metavar="B1")
    adam_b2: float = _field(0.999, "AdamW beta2 in [0, 1)", metavar="B2")
    weight_decay: float | None = _field(
        None,
        "weight decay, >= 0: L2 added to the gradient for sgd, decoupled for adamw "
        "(default 5e-4 for sgd, 0.05 for adamw)",
        metavar="WD",
    )
    decay_depthwise: bool = _field(
        False, "apply weight decay to depthwise kernels (the MobileNet paper uses little or none)"
    )
    decay_norm_and_bias: bool = _field(
        False, "apply weight decay to biases and normalization scales/offsets"
    )
    schedule: str = _field(
        "cosine",
        "learning-rate schedule: linear warm-up then cosine to 0; one-cycle (cosine up and "
        "down); or constant after warm-up",
        SCHEDULES,
    )
    warmup_epochs: float = _field(
        0.0,
        "linear warm-up length in epochs (fractions allowed), < epochs; for onecycle the "
        "rising phase (default: 30 percent of the run)",
        metavar="W",
    )
    label_smoothing: float = _field(0.0, "label smoothing in [0, 1)", metavar="EPS")
    compute_dtype: str = _field(
        "float32", "dtype of activations; parameters stay float32", COMPUTE_DTYPES
    )
    seed: int = _field(0, "seed of initialization, shuffling, augmentation, dropout", metavar="S")
    # --- bookkeeping ---
    out: str | None = _field(
        None,
        "run folder: config.json, metrics.jsonl, summary.json, checkpoints (None: write "
        "nothing, no resume)",
        metavar="DIR",
    )
    init_from: str | None = _field(
        None,
        "start from the parameters and BatchNorm statistics of a run folder's best checkpoint "
        "or of a saved model folder (jaxsep convert, jaxsep.models.save): copied by path, "
        "every shape must match except the classifier head, which is new when --num-classes "
        "differs from the folder's; the optimizer starts afresh; ignored when resuming",
        metavar="DIR",
    )
    eval_every: int = _field(1, "evaluate every N epochs (and always after the last)", metavar="N")
    checkpoint_every_steps: int | None = _field(
        None, "also checkpoint every N steps inside an epoch (default: at epoch ends only)",
        metavar="N",
    )
    quiet: bool = _field(False, "no progress bar; one log line per epoch")

    # ---------------------------------------------------------------------------------------

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def resolved_lr(self) -> float:
        """``lr``, or the optimizer's default when it is None."""
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr

    @property
    def resolved_weight_decay(self) -> float:
        """``weight_decay``, or the optimizer's default when it is None."""
        return DEFAULT_WEIGHT_DECAY[self.optimizer] if self.weight_decay is None else self.weight_decay

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-compatible dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Builds a config from ``values``; missing fields take their defaults, unknown keys
        are an error."""
        if not isinstance(values, dict):
            raise TypeError(f"TrainConfig.from_dict: expected a dict, but got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"TrainConfig: unknown field(s) {unknown}; known fields are {sorted(known)}"
            )
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def __hash__(self) -> int:
        # Explicit because model_args is a dict (stored sorted): the generated hash of a frozen
        # dataclass would raise, and configs are natural dict keys and cache keys.
        return hash(self.to_json())

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """Reads a ``config.json`` written by a run."""
        return cls.from_json(Path(path).read_text())

    def differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """``{field: (self's value, other's value)}`` for every field that differs."""
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        }


# --------------------------------------------------------------------------------------------
# Validation (the checks and their wording live in jaxsep._validation)

_WHERE = "TrainConfig"


def _validate(config: TrainConfig) -> None:
    # Imported here so that importing the config (e.g. for --help) stays cheap.
    from jaxsep import models

    def check(name: str, checker: Any, *args: Any, **kwargs: Any) -> None:
        # Each check returns the value normalized (an int for a NumPy integer, a float for an
        # int given to a float field, a str for a path), which the frozen config stores.
        value = checker(_WHERE, name, getattr(config, name), *args, **kwargs)
        object.__setattr__(config, name, value)

    def integer(name: str, minimum: int, optional: bool = False) -> None:
        check(name, check_optional_int if optional else check_int, minimum=minimum)

    def number(name: str, **bounds: Any) -> None:
        check(name, check_number, **bounds)

    check("model", check_str)
    check("model", check_choice, models.list_models())
    number("width", low=0.0, low_open=True)
    check("conv", check_choice, CONV_CHOICES, optional=True)
    integer("groups", 1, optional=True)
    integer("depth_multiplier", 1, optional=True)
    check("variant", check_choice, VARIANTS)
    number("dropout", low=0.0, high=1.0, optional=True)
    check("impl", check_choice, IMPLS)
    integer("num_classes", 2, optional=True)
    object.__setattr__(config, "model_args", check_model_args(_WHERE, config.model_args))

    check("dataset", check_choice, DATASETS)
    check("data_dir", check_str, optional=True)
    integer("resolution", 1, optional=True)
    check("augment", check_bool)
    integer("cutout", 0)
    integer("max_train_examples", 1, optional=True)
    integer("max_test_examples", 1, optional=True)
    integer("data_seed", 0)

    integer("epochs", 1)
    integer("batch_size", 1)
    check("optimizer", check_choice, OPTIMIZERS)
    number("lr", low=0.0, low_open=True, optional=True)
    number("momentum", low=0.0, high=1.0)
    check("nesterov", check_bool)
    number("adam_b1", low=0.0, high=1.0)
    number("adam_b2", low=0.0, high=1.0)
    number("weight_decay", low=0.0, optional=True)
    check("decay_depthwise", check_bool)
    check("decay_norm_and_bias", check_bool)
    check("schedule", check_choice, SCHEDULES)
    number("warmup_epochs", low=0.0)
    if config.warmup_epochs >= config.epochs:
        raise ValueError(
            f"TrainConfig: warmup_epochs must be < epochs, but got warmup_epochs="
            f"{config.warmup_epochs} and epochs={config.epochs}"
        )
    number("label_smoothing", low=0.0, high=1.0)
    check("compute_dtype", check_choice, COMPUTE_DTYPES)
    integer("seed", 0)

    check("out", check_str, optional=True)
    check("init_from", check_str, optional=True)
    integer("eval_every", 1)
    integer("checkpoint_every_steps", 1, optional=True)
    check("quiet", check_bool)


# --------------------------------------------------------------------------------------------
# Command-line flags


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parser_type(field: dataclasses.Field) -> type:
    hint = typing.get_type_hints(TrainConfig)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return args[0]
    return hint


def add_config_arguments(
    parser: argparse.ArgumentParser, *, exclude: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Declares one flag per ``TrainConfig`` field (except ``exclude``) on ``parser``, in
    four argument groups, which it returns by title ("model", "data", "optimization", "run").

    Flags that are not given stay absent from the parsed namespace, so
    :func:`config_from_args` takes the dataclass defaults for them.
    """
    titles = {"model": "model", "dataset": "data", "epochs": "optimization", "out": "run"}
    groups = {field: parser.add_argument_group(title) for field, title in titles.items()}
    group = parser
    for field in dataclasses.fields(TrainConfig):
        group = groups.get(field.name, group)
        if field.name in exclude:
            continue
        meta = field.metadata
        kind = _parser_type(field)
        default = field.default
        help_text = meta["help"]
        if kind is bool:
            group.add_argument(
                _flag(field.name),
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"{help_text} (default {'on' if default else 'off'})",
            )
            continue
        if kind is dict:
            kind = _json_object
        shown = "" if default is None else f" (default {default})"
        if meta["choices"] is None and default is None:
            shown = ""
        group.add_argument(
            _flag(field.name),
            type=kind,
            choices=meta["choices"],
            metavar=meta["metavar"],
            default=argparse.SUPPRESS,
            help=help_text + shown,
        )
    return {titles[field]: group for field, group in groups.items()}


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, but got {text!r}")
    return value


def check_model_args(where: str, value: Any) -> dict | None:
    """``model_args`` checked: None, or a dict of keyword names to JSON scalars that no other
    field sets (stored sorted; an empty dict is None)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        fail(where, "model_args", "a dict of keyword arguments (str keys)", value, TypeError)
    taken = sorted(set(value) & SET_BY_FIELDS)
    if taken:
        fail(where, "model_args", f"free of keywords that other fields set ({taken})", value)
    for key, item in value.items():
        if item is not None and not isinstance(item, (str, int, float, bool)):
            fail(where, f"model_args[{key!r}]", "a JSON scalar (str, number, bool, null)", item,
                 TypeError)
    return dict(sorted(value.items())) or None


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    """The ``TrainConfig`` of the flags given in ``args`` (others take their defaults)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    values.update(overrides)
    return TrainConfig(**values)
