"""``train_and_evaluate(config)``: the training loop, its files, checkpoints and resume; and
``evaluate_run(run)``: test accuracy of a finished run's best checkpoint.

Files of a run (``config.out``)::

    config.json        the TrainConfig, as given (``TrainConfig.load`` reads it back)
    metrics.jsonl      one JSON object per finished epoch (see EPOCH_FIELDS)
    summary.json       final and best test accuracy, params, multiply-adds, times, device
    checkpoints/<n>/   Orbax checkpoints after n optimizer steps: the whole train state and
                       the loop's position (epoch, step inside it, metrics so far)
    best/<epoch>/      parameters and BatchNorm statistics of the best test accuracy

Resume: running again with the same ``out`` continues from the last checkpoint (a finished
run just rewrites its summary; a run that stopped before its first checkpoint starts afresh). Everything that decides the future is in the checkpoint and
all randomness is derived from ``(seed, epoch, step)`` (shuffling by ``epoch_permutation``,
augmentation and dropout by ``batch_key``), so a resumed run computes exactly what an
uninterrupted one computes: same parameters, same metrics (timing fields aside). Only
the fields in ``config.RESUMABLE_FIELDS`` may change between the two; a longer ``epochs``
extends a run (with a schedule that depends on the run's length, such as cosine, the learning
rates of the remaining steps then follow the new length).

SIGINT/SIGTERM: the loop finishes the current step, saves a checkpoint (with the position
inside the epoch) and raises :class:`TrainingInterrupted` (the CLI exits with 130 / 143). A
second Ctrl-C quits at once without saving. Checkpoints are written synchronously into a
temporary folder and renamed into place by Orbax, so a save cut short is never taken for a
checkpoint.

A non-finite loss (or parameter) raises :class:`NonFiniteLossError`; nothing is saved after
it, so the last checkpoint is the last good state.

Test hook: with ``JAXSEP_TEST_SIGTERM_AT_STEP=k`` in the environment the loop sends itself
SIGTERM right after global optimizer step ``k`` (1-based), to test interruption and resume.

Devices: the batch is sharded over a ``Mesh`` of all devices (axis ``"data"``) and the state
replicated; ``batch_size`` must be divisible by the number of devices. For several hosts,
``jax.distributed.initialize()`` is called first when ``JAX_COORDINATOR_ADDRESS`` (with
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``) is set, or a SLURM / Open MPI job with more
than one task is detected; every process then runs the same command, and only process 0
writes files other than checkpoints and shows progress.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxsep import cost, data as jdata, models
from jaxsep._io import atomic_write
from jaxsep.xla_options import compiler_options
from jaxsep.train import steps as S
from jaxsep.train.config import (
    RESUMABLE_FIELDS,
    SYNTHETIC_TEST,
    SYNTHETIC_TRAIN,
    TrainConfig,
)
from jaxsep.train.optim import learning_rate_schedule, weight_decay_mask

__all__ = [
    "EPOCH_FIELDS",
    "NonFiniteLossError",
    "SIGTERM_HOOK_ENV",
    "TIMING_FIELDS",
    "TrainingInterrupted",
    "evaluate_run",
    "load_checkpoint",
    "maybe_initialize_distributed",
    "train_and_evaluate",
]

logger = logging.getLogger("jaxsep.train")

SIGTERM_HOOK_ENV = "JAXSEP_TEST_SIGTERM_AT_STEP"
CHECKPOINT_FORMAT = 1
KEEP_CHECKPOINTS = 2
NUM_CLASSES = 10  # CIFAR-10 and the synthetic stand-in
# One metrics.jsonl line: these keys, in this order.
EPOCH_FIELDS = (
    "epoch",
    "global_step",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "learning_rate",
    "images_per_second",
    "epoch_seconds",
    "eval_seconds",
    "elapsed_seconds",
)
# The fields that measure time (they differ between otherwise identical runs).
TIMING_FIELDS = ("images_per_second", "epoch_seconds", "eval_seconds", "elapsed_seconds")
# XLA's optimizer takes ~20 s on the one-off initialization program (threefry random numbers
# for every parameter) on a 2-core CPU, and saves nothing on a program run once.
_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


class NonFiniteLossError(FloatingPointError):
    """The loss (or a parameter) became NaN or infinite. Attributes: ``epoch`` (1-based),
    ``step`` (1-based, inside the epoch), ``global_step``, ``learning_rate``, ``checkpoint``
    (the last good checkpoint's folder, or None)."""

    def __init__(self, message: str, *, epoch: int, step: int, global_step: int,
                 learning_rate: float, checkpoint: str | None):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.global_step = global_step
        self.learning_rate = learning_rate
        self.checkpoint = checkpoint


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run after saving a checkpoint. Attributes: ``signum``,
    ``checkpoint`` (its folder, or None without ``out``), ``exit_code`` (128 + signum)."""

    def __init__(self, message: str, *, signum: int, checkpoint: str | None):
        super().__init__(message)
        self.signum = signum
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


# --------------------------------------------------------------------------------------------
# Small helpers


def maybe_initialize_distributed() -> bool:
    """Calls ``jax.distributed.initialize()`` when a multi-process environment is configured:
    ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), or a SLURM
    or Open MPI job with more than one task (JAX detects those itself). Returns whether it
    initialized. Safe to call twice."""
    env = os.environ
    explicit = bool(env.get("JAX_COORDINATOR_ADDRESS"))
    slurm = int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env
    mpi = int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1
    if not (explicit or slurm or mpi):
        return False
    if jax.distributed.is_initialized():
        return True
    kwargs: dict[str, Any] = {}
    if explicit:
        kwargs["coordinator_address"] = env["JAX_COORDINATOR_ADDRESS"]
        if env.get("JAX_NUM_PROCESSES"):
            kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
        if env.get("JAX_PROCESS_ID"):
            kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
    try:
        jax.distributed.initialize(**kwargs)
    except RuntimeError as error:
        raise RuntimeError(
            f"jax.distributed.initialize() failed ({error}); it must run before anything "
            "else uses JAX in this process"
        ) from error
    return True


def _model_kwargs(config: TrainConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "num_classes": NUM_CLASSES,  # also for variant="imagenet": the classifier fits the data
        "width_multiplier": config.width,
        "variant": config.variant,
        "param_dtype": jnp.float32,
    }
    if config.compute_dtype == "bfloat16":
        kwargs["dtype"] = jnp.bfloat16
    if config.conv is not None:
        kwargs["conv"] = config.conv
    if config.groups is not None:
        kwargs["groups"] = config.groups
    if config.depth_multiplier is not None:
        kwargs["depth_multiplier"] = config.depth_multiplier
    if config.dropout is not None:
        kwargs["dropout_rate"] = config.dropout
    if config.impl != "auto":
        kwargs["impl"] = config.impl
    return kwargs


def _abstract_model(config: TrainConfig) -> nnx.Module:
    """The model's structure (nothing allocated); a bad combination of model options is a
    ValueError naming the model."""
    kwargs = _model_kwargs(config)
    try:
        return nnx.eval_shape(lambda: models.create(config.model, rngs=nnx.Rngs(0), **kwargs))
    except (TypeError, ValueError) as error:
        given = {k: v for k, v in kwargs.items() if k not in ("param_dtype", "num_classes")}
        raise ValueError(
            f"TrainConfig: cannot build model {config.model!r} with {given}: {error}"
        ) from error


def _init_program(name: str, kwargs_items: tuple, sharding: NamedSharding):
    """The compiled program ``seed -> (params, batch_stats, rest)`` of a model; cached."""
    key = (name, kwargs_items, sharding)
    compiled = _INIT_CACHE.get(key)
    if compiled is None:

        def init(seed: jax.Array) -> tuple[Any, Any, Any]:
            model = models.create(name, rngs=nnx.Rngs(jax.random.key(seed)), **dict(kwargs_items))
            _, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
            return params, batch_stats, rest

        lowered = jax.jit(init, out_shardings=sharding).lower(
            jax.ShapeDtypeStruct((), jnp.uint32, sharding=sharding)
        )
        compiled = lowered.compile(compiler_options=_INIT_COMPILER_OPTIONS)
        _INIT_CACHE[key] = compiled
    return compiled


_INIT_CACHE: dict[Any, Any] = {}


def _load_dataset(config: TrainConfig) -> jdata.Dataset:
    if config.dataset == "synthetic":
        return jdata.synthetic_cifar10(
            num_train=config.max_train_examples or SYNTHETIC_TRAIN,
            num_test=config.max_test_examples or SYNTHETIC_TEST,
            seed=config.data_seed,
        )
    dataset = jdata.load_cifar10(config.data_dir, download=config.data_dir is None)
    return jdata.subset(
        dataset,
        max_train=config.max_train_examples,
        max_test=config.max_test_examples,
        seed=config.data_seed,
    )


class _StdErrHandler(logging.StreamHandler):
    """Writes to the *current* sys.stderr (rich's progress display redirects it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


@contextlib.contextmanager
def _visible_logs() -> Iterator[None]:
    """Makes the run's INFO lines visible when nobody configured logging."""
    if logger.hasHandlers() and logger.getEffectiveLevel() <= logging.INFO:
        yield  # the application configured logging to show INFO
        return
    handler = _StdErrHandler()
    logger.addHandler(handler)
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (a second SIGINT
    raises KeyboardInterrupt at once). Handlers are installed only in the main thread."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning(
            "received %s: saving a checkpoint after this step, then stopping "
            "(Ctrl-C again quits without saving)",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]} img/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )


# --------------------------------------------------------------------------------------------
# Checkpoints


def _checkpoint_manager(directory: Path, keep: int):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=False, create=True
    )
    return ocp.CheckpointManager(directory.absolute(), options=options)


def _save(manager, step: int, tree: Any, meta: dict) -> None:
    import orbax.checkpoint as ocp

    if step in manager.all_steps():
        manager.delete(step)
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)),
        force=True,
    )
    manager.wait_until_finished()


def _restore(manager, step: int, abstract_tree: Any) -> tuple[Any, dict]:
    import orbax.checkpoint as ocp

    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_tree), meta=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], restored["meta"]


def _abstract(tree: Any) -> Any:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
    )


def restore_best(run: str | os.PathLike, target: Any) -> tuple[Any, dict]:
    """A run's best checkpoint (``run/best/``), restored into the structure, dtypes and
    shardings of ``target`` (``{"params", "batch_stats"}``), and its metadata (``epoch``,
    ``test_accuracy``, ...). For code that builds on a finished run, as ``init_from`` does."""
    folder = Path(run) / "best"
    if not folder.is_dir():  # checked first: the manager would create the folder
        raise FileNotFoundError(f"restore_best: no checkpoint folder {str(folder)!r}")
    manager = _checkpoint_manager(folder, 1)
    try:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"restore_best: no checkpoint in {str(folder)!r}")
        return _restore(manager, step, _abstract(target))
    finally:
        manager.close()


def save_best(run: str | os.PathLike, tree: Any, meta: dict) -> None:
    """Writes ``tree`` (``{"params", "batch_stats"}``) as ``run``'s best checkpoint, in the
    harness's format, at step ``meta["epoch"]``; ``init_from`` and ``jaxsep eval`` read it."""
    manager = _checkpoint_manager(Path(run) / "best", 1)
    try:
        _save(manager, int(meta["epoch"]), tree, {"format": CHECKPOINT_FORMAT, **meta})
    finally:
        manager.close()


# --------------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass
class _Setup:
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


def _check_devices(config: TrainConfig, devices: Sequence[Any]) -> None:
    count = len(devices)
    if config.batch_size % count:
        suggestion = -(-config.batch_size // count) * count
        raise ValueError(
            f"TrainConfig: batch_size must be divisible by the number of devices, but "
            f"{config.batch_size} is not divisible by {count} (the batch is split evenly over "
            f"the devices); use e.g. --batch-size {suggestion}"
        )


def _check_out(config: TrainConfig, resume: bool | None) -> tuple[Path | None, bool]:
    """Creates ``out`` (or checks it) and decides whether to resume. Touches no JAX."""
    if config.out is None:
        if resume:
            raise ValueError("resume=True needs a run folder, but config.out is None")
        return None, False
    out = Path(config.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"TrainConfig: out must be a folder, but {str(out)!r} is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ValueError(
            f"TrainConfig: out must be a writable folder, but {str(out)!r} is not: "
            f"{error.strerror or error}"
        ) from error
    config_file = out / "config.json"
    has_checkpoint = (out / "checkpoints").is_dir() and any(
        p.name.isdigit() for p in (out / "checkpoints").iterdir()
    )
    if config_file.exists() and not has_checkpoint and resume is not True:
        # A run that stopped before its first checkpoint: start it afresh, dropping what it
        # wrote (a metrics line or best parameters saved just before it stopped).
        for stale in ("metrics.jsonl", "summary.json"):
            (out / stale).unlink(missing_ok=True)
        shutil.rmtree(out / "best", ignore_errors=True)
    elif config_file.exists():
        try:
            saved = TrainConfig.load(config_file)
        except (ValueError, TypeError) as error:
            raise ValueError(f"cannot read the existing {config_file}: {error}") from error
        differences = {
            k: v for k, v in saved.differences(config).items() if k not in RESUMABLE_FIELDS
        }
        if differences:
            listed = ", ".join(f"{k}: {a!r} (saved) vs {b!r} (given)" for k, (a, b) in
                               sorted(differences.items()))
            raise ValueError(
                f"{str(out)!r} already holds a run with a different configuration ({listed}); "
                "choose a new --out, or delete the folder to start over"
            )
    elif has_checkpoint:
        raise ValueError(
            f"{str(out)!r} has checkpoints but no config.json, so it cannot be resumed safely; "
            "choose a new --out"
        )
    if resume is True and not has_checkpoint:
        raise ValueError(f"resume: there is no checkpoint in {str(out / 'checkpoints')!r} to resume from")
    if resume is False and has_checkpoint:
        raise ValueError(
            f"{str(out)!r} already holds checkpoints; resume it (the default) or choose a new --out"
        )
    return out, has_checkpoint


@contextlib.contextmanager
def _config_errors() -> Iterator[None]:
    """Marks errors raised inside as bad configuration (the CLI prints them without a
    traceback and exits with 2)."""
    try:
        yield
    except (TypeError, ValueError, OSError) as error:
        error.jaxsep_config_error = True  # type: ignore[attr-defined]
        raise


def _preflight(config: TrainConfig, resume: bool | None, devices: Sequence[Any] | None):
    """Every check that needs no compute: the model builds, out is usable, devices fit."""
    with _config_errors():
        return _checks(config, resume, devices)


def _checks(config: TrainConfig, resume: bool | None, devices: Sequence[Any] | None):
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, but got {type(config).__name__}")
    if resume not in (None, True, False):
        raise ValueError(f"resume must be None, True or False, but got {resume!r}")
    abstract = _abstract_model(config)
    if config.dataset == "cifar10" and config.data_dir is not None:
        if not Path(config.data_dir).expanduser().exists():
            raise FileNotFoundError(
                f"TrainConfig: data_dir {config.data_dir!r} does not exist (pass the CIFAR-10 "
                "archive or the folder holding it, or --dataset synthetic)"
            )
    devices = list(devices) if devices is not None else jax.devices()
    if not devices:
        raise ValueError("devices must not be empty")
    _check_devices(config, devices)
    out, resuming = _check_out(config, resume)
    if config.init_from is not None and not resuming:
        best = Path(config.init_from).expanduser() / "best"
        if not (best.is_dir() and any(p.name.isdigit() for p in best.iterdir())):
            raise FileNotFoundError(
                f"TrainConfig: init_from must be a run folder with a best checkpoint, but "
                f"{str(best)!r} holds none"
            )
    return abstract, devices, out, resuming


def _setup(config: TrainConfig, abstract: nnx.Module, devices: Sequence[Any]) -> _Setup:
    with _config_errors():
        dataset = _load_dataset(config)
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
        raise ValueError(
            f"the model has {num_classes} outputs but the data has {dataset.num_classes} classes"
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

    kwargs_items = tuple(sorted(_model_kwargs(config).items()))
    init = _init_program(config.model, kwargs_items, replicated)
    params, batch_stats, rest = init(S.to_device(np.uint32(config.seed), replicated))
    return _Setup(
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


def _count_macs(setup: _Setup) -> int | None:
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


class _Evaluator:
    def __init__(self, setup: _Setup):
        self.setup = setup
        dataset = setup.dataset
        replicated = setup.eval_spec.replicated
        pad = setup.padded_test - dataset.num_test
        images = np.concatenate(
            [dataset.test_images, np.zeros((pad, *dataset.test_images.shape[1:]), np.uint8)]
        )
        labels = np.concatenate([dataset.test_labels, np.zeros((pad,), np.int32)])
        self.images = S.to_device(images, replicated)
        self.labels = S.to_device(labels, replicated)
        self.num_valid = S.to_device(np.int32(dataset.num_test), replicated)
        self.starts = [
            S.to_device(np.int32(start), replicated)
            for start in range(0, setup.padded_test, setup.eval_spec.batch_size)
        ]
        self.compiled = None
        self.compile_seconds = 0.0

    def compile(self, params: Any, batch_stats: Any) -> None:
        start = time.perf_counter()
        self.compiled = S.jit_eval_step.lower(
            self.setup.eval_graphdef, self.setup.eval_spec, params, batch_stats,
            self.setup.rest, self.images, self.labels, self.starts[0], self.num_valid,
        ).compile(compiler_options=compiler_options())
        self.compile_seconds = time.perf_counter() - start

    def __call__(self, params: Any, batch_stats: Any) -> tuple[float, float]:
        """(mean test loss, test accuracy) over exactly the test split's examples."""
        if self.compiled is None:
            self.compile(params, batch_stats)
        sums = [
            self.compiled(params, batch_stats, self.setup.rest, self.images, self.labels,
                          start, self.num_valid)
            for start in self.starts
        ]
        sums = jax.device_get(sums)
        count = self.setup.dataset.num_test
        loss = math.fsum(float(s["loss"]) for s in sums) / count
        correct = sum(int(s["correct"]) for s in sums)
        return loss, correct / count


def _device_description(devices: Sequence[Any]) -> dict[str, Any]:
    kinds = sorted({getattr(d, "device_kind", str(d)) for d in devices})
    return {
        "platform": devices[0].platform,
        "kind": ", ".join(kinds),
        "count": len(devices),
        "processes": jax.process_count(),
    }


def _format_epoch(line: dict, epochs: int) -> str:
    text = (
        f"epoch {line['epoch']}/{epochs}  train loss {line['train_loss']:.4f} "
        f"acc {100 * line['train_accuracy']:.2f}%"
    )
    if line["test_accuracy"] is not None:
        text += f"  test loss {line['test_loss']:.4f} acc {100 * line['test_accuracy']:.2f}%"
    return text + (
        f"  lr {line['learning_rate']:.4g}  {line['images_per_second']:.0f} img/s  "
        f"{line['epoch_seconds']:.1f} s"
    )


def train_and_evaluate(
    config: TrainConfig,
    *,
    resume: bool | None = None,
    devices: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Trains ``config.model`` on ``config.dataset`` and evaluates it; the library entry point
    of ``jaxsep train``.

    Args:
      config: every hyperparameter (see :class:`TrainConfig`).
      resume: None (default): continue from the last checkpoint in ``config.out`` when there
        is one, else start; True: there must be a checkpoint to continue from; False: start,
        and refuse a folder that already holds checkpoints.
      devices: the devices of the data-parallel mesh (default ``jax.devices()``).

    Returns:
      The summary dict (also written to ``out/summary.json``): final and best test accuracy,
      parameters, multiply-adds per example, times, throughput and device.

    Raises:
      ValueError / TypeError / FileNotFoundError: bad configuration, before any compute.
      NonFiniteLossError: the loss diverged (the last good checkpoint is kept).
      TrainingInterrupted: SIGINT/SIGTERM; a checkpoint was saved.
    """
    maybe_initialize_distributed()
    started = time.perf_counter()
    abstract, devices, out, resuming = _preflight(config, resume, devices)
    with _visible_logs():
        trainer = _Trainer(_setup(config, abstract, devices), devices, out, started)
        try:
            if resuming:
                trainer.restore()
            elif config.init_from is not None:
                with _config_errors():
                    trainer.initialize_from(Path(config.init_from).expanduser())
            trainer.compile()
            with _StopRequest() as stop:
                while trainer.position["epoch"] < config.epochs:
                    trainer.train_epoch(stop)
                    trainer.finish_epoch()
            return trainer.summary()
        finally:
            trainer.close()


class _Trainer:
    """The state of one run between steps, and the steps of the loop over it."""

    def __init__(self, setup: _Setup, devices: Sequence[Any], out: Path | None, started: float):
        config, spec, dataset = setup.config, setup.spec, setup.dataset
        self.config, self.setup, self.spec, self.devices, self.out = config, setup, spec, devices, out
        self.started = started
        self.lead = jax.process_index() == 0
        self.schedule = learning_rate_schedule(config, setup.steps_per_epoch)
        self.state = {
            "params": setup.params,
            "batch_stats": setup.batch_stats,
            "opt_state": S.init_optimizer_state(spec, setup.params),
            "sums": S.zero_sums(spec),
        }
        # Everything below, with the state, is what a checkpoint holds.
        self.position = {"epoch": 0, "step_in_epoch": 0, "global_step": 0}
        self.metrics: list[dict] = []
        self.best: dict[str, Any] = {"test_accuracy": None, "epoch": None}
        # Seconds of earlier sessions (and of the current epoch before a mid-epoch resume).
        self.carried = {"elapsed_seconds": 0.0, "train_seconds": 0.0, "epoch_seconds": 0.0}
        self.session_train_seconds = 0.0
        self.compile_seconds = 0.0
        self.manager = self.best_manager = None
        if out is not None:
            if self.lead:  # (re)written: resumable fields such as epochs may have changed
                atomic_write(out / "config.json", config.to_json())
            self.manager = _checkpoint_manager(out / "checkpoints", KEEP_CHECKPOINTS)
            self.best_manager = _checkpoint_manager(out / "best", 1)
        replicated = spec.replicated
        self.images = S.to_device(dataset.train_images, replicated)
        self.labels = S.to_device(dataset.train_labels, replicated)
        self.used = setup.steps_per_epoch * config.batch_size  # the last partial batch is dropped
        self.evaluator = _Evaluator(setup)
        hook = os.environ.get(SIGTERM_HOOK_ENV)
        self.sigterm_at = int(hook) if hook else None
        self.train_step = None
        logger.info(
            "%s: %s x%s (%s), %d train / %d test examples, %d steps per epoch, %d device(s) %s",
            out if out is not None else "(no out)", config.model, config.width,
            config.compute_dtype, dataset.num_train, dataset.num_test, setup.steps_per_epoch,
            len(devices), devices[0].device_kind,
        )

    def _scalar(self, value: Any, dtype: Any) -> jax.Array:
        return S.to_device(np.asarray(value, dtype), self.spec.replicated)

    def _order(self, epoch: int) -> jax.Array:
        """This epoch's example order (its first ``used`` entries) on device."""
        permutation = jdata.epoch_permutation(
            self.setup.dataset.num_train, seed=self.config.seed, epoch=epoch
        )
        return S.to_device(permutation[: self.used].astype(np.int32), self.spec.replicated)

    # ---- checkpoints --------------------------------------------------------------------

    def restore(self) -> None:
        step = self.manager.latest_step()
        self.state, meta = _restore(self.manager, step, _abstract(self.state))
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint {self.out / 'checkpoints' / str(step)} has an unknown format")
        self.position = {key: int(meta[key]) for key in self.position}
        self.metrics = list(meta["metrics"])
        self.best = dict(meta["best"])
        self.carried = {key: float(meta[key]) for key in self.carried}
        logger.info(
            "resuming from %s: epoch %d, step %d of %d", self.out / "checkpoints" / str(step),
            self.position["epoch"] + 1, self.position["step_in_epoch"],
            self.setup.steps_per_epoch,
        )

    def initialize_from(self, run: Path) -> None:
        """Replaces the initial parameters and BatchNorm statistics by those of ``run``'s best
        checkpoint (the optimizer state stays fresh)."""
        target = {"params": self.state["params"], "batch_stats": self.state["batch_stats"]}
        saved = _stored_shapes(run / "best")
        wanted = sorted(tuple(leaf.shape) for leaf in jax.tree.leaves(target))
        if saved != wanted:
            raise ValueError(
                f"TrainConfig: init_from {str(run)!r} holds the parameters of another model "
                f"({len(saved)} arrays, {sum(math.prod(s) for s in saved)} numbers) than this "
                f"{self.config.model} x{self.config.width} ({len(wanted)} arrays, "
                f"{sum(math.prod(s) for s in wanted)} numbers)"
            )
        tree, meta = restore_best(run, target)
        self.state["params"], self.state["batch_stats"] = tree["params"], tree["batch_stats"]
        self.state["opt_state"] = S.init_optimizer_state(self.spec, tree["params"])
        logger.info("initialized from %s (epoch %s)", run / "best", meta.get("epoch"))

    def save(self) -> str | None:
        """Checkpoints the state and the loop's position; returns the folder (None without
        ``out``)."""
        if self.manager is None:
            return None
        meta = {
            "format": CHECKPOINT_FORMAT,
            **self.position,
            "metrics": self.metrics,
            "best": self.best,
            "elapsed_seconds": self.carried["elapsed_seconds"] + time.perf_counter() - self.started,
            "train_seconds": self.carried["train_seconds"] + self.session_train_seconds,
            "epoch_seconds": self.carried["epoch_seconds"],
            "config": self.config.to_dict(),
        }
        step = self.position["global_step"]
        _save(self.manager, step, self.state, meta)
        return str(self.out / "checkpoints" / str(step))

    def last_checkpoint(self) -> str | None:
        if self.manager is None or self.manager.latest_step() is None:
            return None
        return str(self.out / "checkpoints" / str(self.manager.latest_step()))

    def close(self) -> None:
        for manager in (self.manager, self.best_manager):
            if manager is not None:
                manager.close()

    # ---- steps ----------------------------------------------------------------------------

    def compile(self) -> None:
        """Compiles the train and eval steps ahead of the first step (timed on their own)."""
        start = time.perf_counter()
        setup, replicated = self.setup, self.spec.replicated
        self.train_step = S.jit_train_step.lower(
            setup.train_graphdef, self.spec, self.state, setup.rest, self.images, self.labels,
            jax.ShapeDtypeStruct((self.used,), jnp.int32, sharding=replicated),
            self._scalar(0, np.int32), self._scalar(0, np.int32), self._scalar(0.0, np.float32),
        ).compile(compiler_options=compiler_options())
        self.evaluator.compile(self.state["params"], self.state["batch_stats"])
        self.compile_seconds = time.perf_counter() - start
        logger.info("compiled the train and eval steps in %.1f s", self.compile_seconds)

    def check(self, pending: tuple | None) -> None:
        """Raises NonFiniteLossError if the step in ``pending`` had a non-finite loss or
        produced a non-finite parameter (waits for that step)."""
        if pending is None:
            return
        result, epoch, step, global_step, lr = pending
        if bool(result["finite"]):
            return
        checkpoint = self.last_checkpoint()
        raise NonFiniteLossError(
            f"training stopped: the loss became {float(result['loss'])} (or a parameter "
            f"became non-finite) at epoch {epoch + 1}, step {step + 1} (global step "
            f"{global_step}) with learning rate {lr:.4g}. "
            + (f"The last good checkpoint is {checkpoint}; " if checkpoint else
               "There is no checkpoint; ")
            + "lower --lr, add --warmup-epochs, or check the data.",
            epoch=epoch + 1, step=step + 1, global_step=global_step, learning_rate=lr,
            checkpoint=checkpoint,
        )

    def train_epoch(self, stop: _StopRequest) -> None:
        """Runs the remaining steps of the current epoch. Each step is dispatched before the
        previous one's loss is read, so the host never idles the device."""
        config, position = self.config, self.position
        steps_per_epoch = self.setup.steps_per_epoch
        epoch, first_step = position["epoch"], position["step_in_epoch"]
        if first_step == 0:
            self.state["sums"] = S.zero_sums(self.spec)
            self.carried["epoch_seconds"] = 0.0
        order, epoch_array = self._order(epoch), self._scalar(epoch, np.int32)
        progress = _progress(self.lead and not config.quiet)
        task = None
        if progress is not None:
            progress.start()
            task = progress.add_task(
                f"epoch {epoch + 1}/{config.epochs}", total=steps_per_epoch,
                completed=first_step, loss="-", speed="-",
            )
        started = time.perf_counter()

        def account() -> None:  # moves the time since `started` into the epoch's seconds
            nonlocal started
            now = time.perf_counter()
            self.session_train_seconds += now - started
            self.carried["epoch_seconds"] += now - started
            started = now

        pending = None
        try:
            for step in range(first_step, steps_per_epoch):
                lr = self.schedule(position["global_step"])
                self.state, result = self.train_step(
                    self.state, self.setup.rest, self.images, self.labels, order, epoch_array,
                    self._scalar(step, np.int32), self._scalar(lr, np.float32),
                )
                position["global_step"] += 1
                position["step_in_epoch"] = step + 1
                self.check(pending)  # the previous step's: finished by now, or soon
                if progress is not None and pending is not None:
                    images = (step + 1 - first_step) * config.batch_size
                    progress.update(
                        task, completed=step + 1, loss=f"{float(pending[0]['loss']):.4f}",
                        speed=f"{images / (time.perf_counter() - started):.0f}",
                    )
                pending = (result, epoch, step, position["global_step"], lr)
                if self.sigterm_at == position["global_step"]:  # the test hook
                    os.kill(os.getpid(), signal.SIGTERM)
                every = config.checkpoint_every_steps
                periodic = every is not None and position["global_step"] % every == 0
                if stop.signum is not None or (periodic and step + 1 < steps_per_epoch):
                    self.check(pending)  # never save a state that is not finite
                    account()
                    path = self.save()
                    if stop.signum is not None:
                        raise TrainingInterrupted(
                            f"{signal.Signals(stop.signum).name}: stopped at epoch {epoch + 1}, "
                            f"step {step + 1} of {steps_per_epoch}"
                            + (f"; checkpoint saved to {path}; rerun the same command to "
                               "resume" if path else " (no out: nothing saved)"),
                            signum=stop.signum, checkpoint=path,
                        )
            self.check(pending)
            account()
        finally:
            if progress is not None:
                progress.stop()

    def finish_epoch(self) -> None:
        """Evaluates (every eval_every epochs and after the last), appends the epoch's metrics
        line, keeps the best parameters and checkpoints the end of the epoch."""
        config, position = self.config, self.position
        epoch = position["epoch"]
        sums = jax.device_get(self.state["sums"])
        test_loss = test_accuracy = None
        eval_start = time.perf_counter()
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            test_loss, test_accuracy = self.evaluator(
                self.state["params"], self.state["batch_stats"]
            )
        steps = int(sums["steps"])
        line = {
            "epoch": epoch + 1,
            "global_step": position["global_step"],
            "train_loss": float(sums["loss"]) / steps,
            "train_accuracy": int(sums["correct"]) / (steps * config.batch_size),
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "learning_rate": self.schedule(position["global_step"] - 1),  # the epoch's last
            "images_per_second": steps * config.batch_size / self.carried["epoch_seconds"],
            "epoch_seconds": self.carried["epoch_seconds"],
            "eval_seconds": time.perf_counter() - eval_start,
            "elapsed_seconds": self.carried["elapsed_seconds"] + time.perf_counter() - self.started,
        }
        self.metrics.append(line)
        logger.info("%s", _format_epoch(line, config.epochs))
        if test_accuracy is not None and (
            self.best["test_accuracy"] is None or test_accuracy > self.best["test_accuracy"]
        ):
            self.best = {"test_accuracy": test_accuracy, "epoch": epoch + 1}
            if self.best_manager is not None:
                _save(
                    self.best_manager, epoch + 1,
                    {"params": self.state["params"], "batch_stats": self.state["batch_stats"]},
                    {"format": CHECKPOINT_FORMAT, "epoch": epoch + 1,
                     "test_accuracy": test_accuracy, "test_loss": test_loss,
                     "global_step": position["global_step"]},
                )
        position["epoch"], position["step_in_epoch"] = epoch + 1, 0
        if self.out is not None and self.lead:
            text = "".join(json.dumps(m) + "\n" for m in self.metrics)
            atomic_write(self.out / "metrics.jsonl", text)
        self.save()

    # ---- the report -------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """The run's summary (written to summary.json)."""
        config, setup, dataset, metrics = self.config, self.setup, self.setup.dataset, self.metrics
        final = next((m for m in reversed(metrics) if m["test_accuracy"] is not None), None)
        train_seconds = self.carried["train_seconds"] + self.session_train_seconds
        images = sum(round(m["images_per_second"] * m["epoch_seconds"]) for m in metrics)
        summary = {
            "model": config.model,
            "width": config.width,
            "conv": config.conv,
            "resolution": config.resolution or int(dataset.train_images.shape[1]),
            "dataset": dataset.name,
            "num_train": dataset.num_train,
            "num_test": dataset.num_test,
            "epochs": len(metrics),
            "seed": config.seed,
            "final_test_accuracy": final["test_accuracy"] if final else None,
            "final_test_loss": final["test_loss"] if final else None,
            "best_test_accuracy": self.best["test_accuracy"],
            "best_epoch": self.best["epoch"],
            "final_train_loss": metrics[-1]["train_loss"] if metrics else None,
            "params": cost.count_params(setup.params),
            "macs": _count_macs(setup),
            "learning_rate": config.resolved_lr,
            "weight_decay": config.resolved_weight_decay,
            "images_per_second": images / train_seconds if train_seconds > 0 else None,
            "train_seconds": train_seconds,
            "compile_seconds": self.compile_seconds,
            "wall_seconds": self.carried["elapsed_seconds"] + time.perf_counter() - self.started,
            "device": _device_description(self.devices),
            "jax_version": jax.__version__,
            "out": str(self.out) if self.out is not None else None,
        }
        if self.out is not None and self.lead:
            atomic_write(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        logger.info(
            "done: final test accuracy %s, best %s (epoch %s), %.0f s",
            _percent(summary["final_test_accuracy"]), _percent(summary["best_test_accuracy"]),
            summary["best_epoch"], summary["wall_seconds"],
        )
        return summary


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


# --------------------------------------------------------------------------------------------
# Evaluation of a saved run


def evaluate_run(
    run: str | os.PathLike,
    *,
    which: str = "best",
    data_dir: str | None = None,
    devices: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Reloads a run's checkpoint and measures its test accuracy (``jaxsep eval``).

    Args:
      run: the run folder (``config.out`` of :func:`train_and_evaluate`).
      which: "best" (the best test accuracy's parameters) or "last" (the last checkpoint).
      data_dir: where the data is now, if it moved (default: the run's ``data_dir``).
      devices: as in :func:`train_and_evaluate`.

    Returns:
      ``{"test_accuracy", "test_loss", "num_test", "epoch", "checkpoint", "dataset"}``.
    """
    maybe_initialize_distributed()
    run = Path(run).expanduser()
    if which not in ("best", "last"):
        raise ValueError(f"evaluate_run: which must be 'best' or 'last', but got {which!r}")
    config_file = run / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"evaluate_run: {str(run)!r} is not a run folder (no config.json)")
    config = TrainConfig.load(config_file)
    if data_dir is not None:
        config = config.replace(data_dir=str(data_dir))
    config = config.replace(out=None)
    folder = run / ("best" if which == "best" else "checkpoints")
    steps = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
    if not steps:
        hint = " (no evaluation has finished yet; try which='last')" if which == "best" else ""
        raise FileNotFoundError(f"evaluate_run: no checkpoint in {str(folder)!r}{hint}")
    abstract = _abstract_model(config)
    devices = list(devices) if devices is not None else jax.devices()
    count = len(devices)
    if config.batch_size % count:  # eval only: any batch the devices divide will do
        config = config.replace(batch_size=-(-config.batch_size // count) * count)
    with _visible_logs():
        setup = _setup(config, abstract, devices)
        manager = _checkpoint_manager(folder, 1 if which == "best" else KEEP_CHECKPOINTS)
        step = manager.latest_step()
        target: dict[str, Any] = {"params": setup.params, "batch_stats": setup.batch_stats}
        if which == "last":
            target["opt_state"] = S.init_optimizer_state(setup.spec, setup.params)
            target["sums"] = S.zero_sums(setup.spec)
        restored, meta = _restore(manager, step, _abstract(target))
        manager.close()
        loss, accuracy = _Evaluator(setup)(restored["params"], restored["batch_stats"])
    return {
        "test_accuracy": accuracy,
        "test_loss": loss,
        "num_test": setup.dataset.num_test,
        # best: the epoch it was measured after; last: the epochs finished before it
        "epoch": int(meta["epoch"]),
        "step_in_epoch": 0 if which == "best" else int(meta["step_in_epoch"]),
        "checkpoint": str(folder / str(step)),
        "dataset": setup.dataset.name,
    }


def _stored_shapes(folder: Path, step: int | None = None) -> list[tuple[int, ...]]:
    """The sorted shapes of the arrays in a checkpoint (read from its metadata only)."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(
        folder.absolute(),
        options=ocp.CheckpointManagerOptions(create=False),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
    )
    try:
        step = manager.latest_step() if step is None else step
        metadata = manager.item_metadata(step)["state"]
    finally:
        manager.close()
    metadata = getattr(metadata, "tree", metadata)
    return sorted(tuple(leaf.shape) for leaf in jax.tree.leaves(metadata))


def load_checkpoint(
    run: str | os.PathLike, *, which: str = "last", step: int | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run's checkpoint as host (NumPy) arrays, for inspection: ``(tree, meta)``.

    ``tree`` is ``{"params", "batch_stats", "opt_state", "sums"}`` for ``which="last"`` (the
    train state) and ``{"params", "batch_stats"}`` for ``which="best"``, with nested dicts in
    place of ``nnx.State``; ``meta`` holds the loop's position, metrics and best accuracy
    ("last") or the epoch and accuracy ("best"). ``step`` picks a checkpoint (default the
    latest).
    """
    import orbax.checkpoint as ocp

    if which not in ("best", "last"):
        raise ValueError(f"load_checkpoint: which must be 'best' or 'last', but got {which!r}")
    folder = Path(run).expanduser() / ("best" if which == "best" else "checkpoints")
    if not folder.is_dir():
        raise FileNotFoundError(f"load_checkpoint: no checkpoint folder {str(folder)!r}")
    manager = ocp.CheckpointManager(
        folder.absolute(),
        options=ocp.CheckpointManagerOptions(create=False),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
    )
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"load_checkpoint: no checkpoint in {str(folder)!r}")
        metadata = manager.item_metadata(step)["state"]
        metadata = getattr(metadata, "tree", metadata)
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(restore_args=as_numpy), meta=ocp.args.JsonRestore()
            ),
        )
    finally:
        manager.close()
    tree = jax.tree.map(np.asarray, restored["state"])
    return tree, restored["meta"]
