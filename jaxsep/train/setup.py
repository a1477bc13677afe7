"""What a run builds before its first step, shared by training and ``evaluate_run``: the
checks that need no compute (:func:`preflight`), then the data, the device mesh, the step
specs and the initial parameters (:func:`setup`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxsep import cost, data as jdata
from jaxsep.train import init_from, run_folder, steps as S
from jaxsep.train.config import SYNTHETIC_TEST, SYNTHETIC_TRAIN, TrainConfig
from jaxsep.train.model_from_config import NUM_CLASSES, abstract_model, init_program
from jaxsep.train.optim import weight_decay_mask
from jaxsep.train.runtime import config_errors, logger

__all__ = ["Setup", "count_macs", "preflight", "setup"]


@dataclasses.dataclass
class Setup:
    """Everything a run builds before its first step."""

    config: TrainConfig
    dataset: jdata.Dataset
    mesh: Mesh
    spec: S.StepSpec
    eval_spec: S.StepSpec
    train_graphdef: Any
    eval_graphdef: Any
    params: Any
    batch_stats: Any
    rest: Any
    steps_per_epoch: int
    padded_test: int


def load_dataset(config: TrainConfig) -> jdata.Dataset:
    """The config's data: synthetic, or CIFAR-10 (downloaded when no ``data_dir``) cut to
    its ``max_*_examples``."""
    if config.dataset == "synthetic":
        return jdata.synthetic_cifar10(
            num_train=config.max_train_examples or SYNTHETIC_TRAIN,
            num_test=config.max_test_examples or SYNTHETIC_TEST,
            num_classes=config.num_classes or NUM_CLASSES,
            seed=config.data_seed,
        )
    dataset = jdata.load_cifar10(config.data_dir, download=config.data_dir is None)
    return jdata.subset(
        dataset,
        max_train=config.max_train_examples,
        max_test=config.max_test_examples,
        seed=config.data_seed,
    )


def check_devices(config: TrainConfig, devices: Sequence[Any]) -> None:
    count = len(devices)
    if config.batch_size % count:
        suggestion = -(-config.batch_size // count) * count
        raise ValueError(
            f"TrainConfig: batch_size must be divisible by the number of devices, but "
            f"{config.batch_size} is not divisible by {count} (the batch is split evenly over "
            f"the devices); use e.g. --batch-size {suggestion}"
        )


def preflight(config: TrainConfig, resume: bool | None, devices: Sequence[Any] | None):
    """Every check that needs no compute: the model builds, out is usable (the resume rule
    of :func:`jaxsep.train.run_folder.prepare`), the devices fit, ``init_from`` holds this
    model's parameters. Its errors are marked as
    bad configuration. Returns ``(abstract model, devices, out, resuming)``."""
    with config_errors():
        return _checks(config, resume, devices)


def _checks(config: TrainConfig, resume: bool | None, devices: Sequence[Any] | None):
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, but got {type(config).__name__}")
    if resume not in (None, True, False):
        raise ValueError(f"resume must be None, True or False, but got {resume!r}")
    abstract = abstract_model(config)
    if config.dataset == "cifar10" and config.data_dir is not None:
        if not Path(config.data_dir).expanduser().exists():
            raise FileNotFoundError(
                f"TrainConfig: data_dir {config.data_dir!r} does not exist (pass the CIFAR-10 "
                "archive or the folder holding it, or --dataset synthetic)"
            )
    devices = list(devices) if devices is not None else jax.devices()
    if not devices:
        raise ValueError("devices must not be empty")
    check_devices(config, devices)
    out, resuming = run_folder.prepare(config, resume)
    if config.init_from is not None and not resuming:
        init_from.check(config, abstract)
    return abstract, devices, out, resuming


def setup(config: TrainConfig, abstract: nnx.Module, devices: Sequence[Any]) -> Setup:
    """Loads the data and builds the mesh, the step specs and the initial parameters."""
    with config_errors():
        dataset = load_dataset(config)
        steps_per_epoch = dataset.num_train // config.batch_size
        if steps_per_epoch < 1:
            raise ValueError(
                f"TrainConfig: batch_size must be at most the number of train examples, but "
                f"{config.batch_size} > {dataset.num_train} ({dataset.name})"
            )
    mesh = Mesh(np.asarray(devices), (S.DATA_AXIS,))
    replicated = NamedSharding(mesh, P())
    abstract.train()
    train_graphdef, _ = nnx.split(abstract)
    abstract.eval()
    eval_graphdef, _ = nnx.split(abstract)
    abstract.train()
    mask = weight_decay_mask(
        abstract,
        decay_depthwise=config.decay_depthwise,
        decay_norm_and_bias=config.decay_norm_and_bias,
    )
    num_classes = int(abstract.num_classes) if hasattr(abstract, "num_classes") else 10
    if num_classes != dataset.num_classes:
        with config_errors():
            raise ValueError(
                f"TrainConfig: num_classes must be the data's number of classes, but the model "
                f"has {num_classes} outputs and {dataset.name} has {dataset.num_classes} classes "
                f"(pass --num-classes {dataset.num_classes})"
            )
    spec = S.StepSpec(
        batch_size=config.batch_size,
        num_classes=num_classes,
        seed=config.seed,
        augment=config.augment,
        cutout=config.cutout,
        resolution=config.resolution,
        compute_dtype=config.compute_dtype,
        label_smoothing=config.label_smoothing,
        optimizer=config.optimizer,
        weight_decay=config.resolved_weight_decay,
        momentum=config.momentum,
        nesterov=config.nesterov,
        adam_b1=config.adam_b1,
        adam_b2=config.adam_b2,
        decay_mask=tuple(bool(b) for b in jax.tree.leaves(mask)),
        mesh=mesh,
    )
    count = len(devices)
    eval_batch = min(config.batch_size, -(-dataset.num_test // count) * count)
    eval_spec = dataclasses.replace(spec, batch_size=eval_batch, augment=False, cutout=0)
    padded_test = -(-dataset.num_test // eval_batch) * eval_batch

    init = init_program(config, replicated)
    params, batch_stats, rest = init(S.to_device(np.uint32(config.seed), replicated))
    return Setup(
        config=config,
        dataset=dataset,
        mesh=mesh,
        spec=spec,
        eval_spec=eval_spec,
        train_graphdef=train_graphdef,
        eval_graphdef=eval_graphdef,
        params=params,
        batch_stats=batch_stats,
        rest=rest,
        steps_per_epoch=steps_per_epoch,
        padded_test=padded_test,
    )


def count_macs(setup: Setup) -> int | None:
    """Multiply-adds of one example through the model (None, with a warning, if they
    cannot be counted: a report field never stops a run)."""
    size = setup.config.resolution or setup.dataset.train_images.shape[1]
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.dtype(setup.config.compute_dtype))
    graphdef = setup.eval_graphdef

    def forward(params: Any, batch_stats: Any, rest: Any, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params, batch_stats, rest, copy=True)(x)

    try:
        return int(cost.count_macs(forward, setup.params, setup.batch_stats, setup.rest, x).total)
    except Exception as error:  # a report field must never stop a run
        logger.warning("could not count multiply-adds: %s", error)
        return None
