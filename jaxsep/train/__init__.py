"""Training and evaluation of jaxsep models on CIFAR-10 (``jaxsep train`` / ``jaxsep eval``).

>>> from jaxsep.train import TrainConfig, train_and_evaluate
>>> config = TrainConfig(model="mobilenet_v1", width=0.5, epochs=30, out="runs/v1-0.5")
>>> summary = train_and_evaluate(config)  # doctest: +SKIP

Modules: :mod:`~jaxsep.train.config` (``TrainConfig`` and its command-line flags),
:mod:`~jaxsep.train.optim` (schedules, the weight-decay mask, the optimizer),
:mod:`~jaxsep.train.steps` (the jitted train and eval steps),
:mod:`~jaxsep.train.loop` (the loop), :mod:`~jaxsep.train.hooks` (per-step hooks),
:mod:`~jaxsep.train.run_folder` (a run's files and the resume rule),
:mod:`~jaxsep.train.checkpoints`, :mod:`~jaxsep.train.evaluate` (``evaluate_run``),
:mod:`~jaxsep.train.model_from_config`, :mod:`~jaxsep.train.setup`,
:mod:`~jaxsep.train.runtime` (signals, logs, multi-host) and :mod:`~jaxsep.train.command`
(the ``train``/``eval`` subcommands' arguments and runners). See ``docs/harness.md``.
"""

from jaxsep.train.command import (
    add_eval_arguments as add_eval_arguments,
    add_train_arguments as add_train_arguments,
    run_eval as run_eval,
    run_train as run_train,
)
from jaxsep.train.config import (
    TrainConfig as TrainConfig,
    add_config_arguments as add_config_arguments,
    config_from_args as config_from_args,
)
from jaxsep.train.loop import (
    EPOCH_FIELDS as EPOCH_FIELDS,
    NonFiniteLossError as NonFiniteLossError,
    TIMING_FIELDS as TIMING_FIELDS,
    TrainingInterrupted as TrainingInterrupted,
    evaluate_run as evaluate_run,
    load_checkpoint as load_checkpoint,
    maybe_initialize_distributed as maybe_initialize_distributed,
    restore_best as restore_best,
    save_best as save_best,
    train_and_evaluate as train_and_evaluate,
)
from jaxsep.train.optim import (
    direction_transform as direction_transform,
    learning_rate_schedule as learning_rate_schedule,
    parameter_kinds as parameter_kinds,
    weight_decay_mask as weight_decay_mask,
)
from jaxsep.train.steps import (
    StepSpec as StepSpec,
    eval_step as eval_step,
    train_step as train_step,
)

__all__ = [
    "EPOCH_FIELDS",
    "NonFiniteLossError",
    "StepSpec",
    "TIMING_FIELDS",
    "TrainConfig",
    "TrainingInterrupted",
    "add_config_arguments",
    "add_eval_arguments",
    "add_train_arguments",
    "config_from_args",
    "direction_transform",
    "eval_step",
    "evaluate_run",
    "learning_rate_schedule",
    "load_checkpoint",
    "maybe_initialize_distributed",
    "restore_best",
    "parameter_kinds",
    "run_eval",
    "run_train",
    "save_best",
    "train_and_evaluate",
    "train_step",
    "weight_decay_mask",
]


def __getattr__(name: str):
    if name == "SIGTERM_HOOK_ENV":  # deprecated: nothing reads it; see hooks.StopAtStep
        from jaxsep.train.hooks import deprecated_sigterm_hook_env

        return deprecated_sigterm_hook_env()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
