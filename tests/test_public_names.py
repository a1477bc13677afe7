"""Every public name stays importable from where it was (issue 18's contract for the layout
split): the ``__all__`` of each module as it stood before the harness and the lowerings moved
into packages. A name may be added anywhere; removing or moving one breaks users' imports."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "jaxsep": (
        "channel_shuffle", "compiler_options", "conv", "cost", "depthwise_conv", "factorize_conv",
        "fuse_separable", "grouped_conv", "models", "nn", "pointwise_conv", "separable_conv",
        "summary",
    ),
    "jaxsep._channel_matmul": (
        "channel_matmul", "channel_matmul_p",
    ),
    "jaxsep.algebra": (
        "Factorization", "factorize_conv", "fuse_separable",
    ),
    "jaxsep.cli": (
        "build_parser", "main",
    ),
    "jaxsep.cost": (
        "ConvCost", "MacCount", "conv_cost", "count_macs", "count_params",
    ),
    "jaxsep.data": (
        "CIFAR10_CLASSES", "CIFAR10_MD5", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_URL", "Dataset",
        "augment", "batch_key", "cutout", "data_cache_dir", "epoch_permutation", "load_cifar10",
        "normalize", "num_batches", "resize", "subset", "synthetic_cifar10",
    ),
    "jaxsep.host_memory": (
        "GLIBC_TUNABLES", "reuse_host_memory", "reuse_host_memory_from_env",
    ),
    "jaxsep.models._registry": (
        "create", "list_models", "register_model",
    ),
    "jaxsep.models.blocks": (
        "BN_EPSILON", "BN_MOMENTUM", "ConvNormAct", "DepthwiseSeparableBlock", "InvertedResidual",
        "ShuffleUnit", "batch_norm", "classifier", "conv_norm_act", "depthwise_norm_act",
        "global_average_pool", "make_divisible",
    ),
    "jaxsep.models.mobilenet_v1": (
        "CONV_CHOICES", "LAYERS", "MobileNetV1", "factorize_mobilenet_v1", "mobilenet_v1",
        "v1_channels",
    ),
    "jaxsep.models.mobilenet_v2": (
        "MobileNetV2", "STAGES", "mobilenet_v2",
    ),
    "jaxsep.models.shufflenet": (
        "STAGE_CHANNELS", "STAGE_REPEATS", "ShuffleNetV1", "shufflenet_v1",
    ),
    "jaxsep.nn": (
        "ChannelShuffle", "Conv", "DepthwiseConv", "GroupedConv", "PointwiseConv", "SeparableConv",
    ),
    "jaxsep.ops": (
        "channel_shuffle", "conv", "depthwise_conv", "grouped_conv", "pointwise_conv",
        "separable_conv",
    ),
    "jaxsep.reference": (
        "channel_shuffle", "conv", "depthwise_conv", "grouped_conv", "pointwise_conv",
        "resolve_padding", "separable_conv",
    ),
    "jaxsep.summary": (
        "LayerRow", "ModelSummary", "Totals", "summary",
    ),
    "jaxsep.sweep": (
        "CSV_FIELDS", "Collected", "Outcome", "Point", "Sweep", "SweepError",
        "add_sweep_arguments", "collect", "convert_point", "dry_run_table", "load_sweep",
        "model_options", "point_costs", "point_state", "run_sweep", "run_sweep_command", "select",
        "sweep_from_dict",
    ),
    "jaxsep.train": (
        "EPOCH_FIELDS", "NonFiniteLossError", "SIGTERM_HOOK_ENV", "StepSpec", "TIMING_FIELDS",
        "TrainConfig", "TrainingInterrupted", "add_config_arguments", "add_eval_arguments",
        "add_train_arguments", "config_from_args", "direction_transform", "eval_step",
        "evaluate_run", "learning_rate_schedule", "load_checkpoint",
        "maybe_initialize_distributed", "parameter_kinds", "restore_best", "run_eval", "run_train",
        "save_best", "train_and_evaluate", "train_step", "weight_decay_mask",
    ),
    "jaxsep.train.command": (
        "add_eval_arguments", "add_train_arguments", "run_eval", "run_train",
    ),
    "jaxsep.train.config": (
        "COMPUTE_DTYPES", "DATASETS", "OPTIMIZERS", "SCHEDULES", "TrainConfig",
        "add_config_arguments", "config_from_args",
    ),
    "jaxsep.train.loop": (
        "EPOCH_FIELDS", "NonFiniteLossError", "SIGTERM_HOOK_ENV", "TIMING_FIELDS",
        "TrainingInterrupted", "evaluate_run", "load_checkpoint", "maybe_initialize_distributed",
        "train_and_evaluate",
    ),
    "jaxsep.train.optim": (
        "PARAM_KINDS", "direction_transform", "learning_rate_schedule", "parameter_kinds",
        "weight_decay_mask",
    ),
    "jaxsep.train.steps": (
        "DATA_AXIS", "StepSpec", "eval_step", "init_optimizer_state", "jit_eval_step",
        "jit_train_step", "to_device", "train_inputs", "train_step", "zero_sums",
    ),
    "jaxsep.xla_options": (
        "compiler_options",
    ),
}


# SIGTERM_HOOK_ENV stays importable but warns that nothing reads it any more
@pytest.mark.filterwarnings("ignore:SIGTERM_HOOK_ENV is deprecated:DeprecationWarning")
@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_stay_importable(module):
    imported = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(imported, name)]
    assert not missing, f"{module} no longer provides {missing}"
