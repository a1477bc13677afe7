"""The measured speed of a sweep point's model: its inference latency and its training
throughput, kept in its run folder and record (``speed.json``) so that a resumed sweep or a
fresh checkout never measures it again (``docs/sweeps.md``, "Speed").

Neither depends on the trained weights (what a CPU computes does not depend on their values;
``experiments/step_time.py`` measured trained against fresh weights and CIFAR-10 against
synthetic data: equal within 4%), so a point is measured apart from its training: right after
it trains, or for every point in one sitting (``jaxsep sweep FILE --measure``) on an idle
machine, while the long training runs may share the machine with other work.

Inference runs as a JAX user would run it: eval mode, split with ``nnx.split`` and a plain
``jax.jit`` of ``nnx.merge(graphdef, state)(x)`` (XLA's default compiler options), on one
device. Training runs through the harness itself (:func:`jaxsep.train.train_and_evaluate`
on synthetic data of the point's shapes, the point's recipe), timed step by step.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxsep._io import atomic_write
from jaxsep.sweep.measures import LATENCY_BATCHES
from jaxsep.sweep.spec import STORED_RESOLUTION, Point
from jaxsep.sweep.state import SPEED_FILE
from jaxsep.train import run_folder
from jaxsep.train.model_from_config import abstract_model, init_program, model_options
from jaxsep.train.runtime import describe_devices, logger as train_logger
from jaxsep.train.steps import DATA_AXIS

__all__ = [
    "LATENCY_BATCHES",
    "cpu_model",
    "ensure_speed",
    "latency_ms",
    "measure_speed",
    "measure_training",
    "read_speed",
    "step_seconds",
    "time_block",
]

ROUNDS = 5  # blocks per batch size; the figure is the median over blocks of a block's median
MIN_CALLS = 3  # timed calls per block at least (the first call of a block is dropped)
MAX_CALLS = 50
BLOCK_S = 0.5  # fast calls get longer blocks, up to MAX_CALLS, so a block lasts about this
WARMUP_STEPS = 10  # training steps run before the timed ones: the first ~8 can run 1.8x slower
# (MobileNetV1 x0.5 on the 2-core EPYC: 245 ms, then 137 ms per step) while the allocator and
# caches warm up
TIMED_STEPS = 30  # training steps timed; the figure is their median. Steps spread widely on a
# virtual machine (MobileNetV2 x1.0, 40 steps on the idle 2-core EPYC: 1.41-2.46 s after the
# first), so 12 steps gave medians 10-20% off the run's sustained speed


def time_block(call: Callable[[], None], calls: int) -> list[float]:
    """Seconds of ``calls`` synchronized calls, after one dropped warm-up call (it warms
    caches and the allocator). The measuring method of ``experiments/_timing.py``."""
    times = []
    for _ in range(calls + 1):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times[1:]


def cpu_model() -> str:
    """The CPU's model name and widest vector extension (Linux /proc/cpuinfo), else what
    ``platform`` knows."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    vectors = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    return f"{model}, {vectors}" if vectors else model


def _infer_call(point: Point, batch: int) -> tuple[Callable[[], None], float]:
    """A synchronized call of the point's jitted eval-mode model on a fixed NHWC batch of
    ``(batch, size, size, 3)``, and the seconds its compilation took."""
    config = point.config
    size = config.resolution or STORED_RESOLUTION
    # the harness's replicated sharding on one device: the same compiled init program
    sharding = NamedSharding(Mesh(np.asarray(jax.devices()[:1]), (DATA_AXIS,)), P())
    abstract = abstract_model(config)
    graphdef, *_ = nnx.split(abstract, nnx.Param, nnx.BatchStat, ...)
    params, batch_stats, rest = init_program(config, sharding)(
        jax.device_put(np.uint32(config.seed), sharding))
    model = nnx.merge(graphdef, params, batch_stats, rest)
    model.eval()
    graphdef, state = nnx.split(model)

    @jax.jit
    def infer(state: Any, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, state)(x)

    x = jax.device_put(
        np.random.default_rng(0).standard_normal((batch, size, size, 3), dtype=np.float32),
        sharding)
    start = time.perf_counter()
    compiled = infer.lower(state, x).compile()
    compile_seconds = time.perf_counter() - start
    return (lambda: compiled(state, x).block_until_ready()), compile_seconds


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


class _StepTimer:
    """A training-loop hook keeping the time of each step's hook call. The loop calls it
    right after dispatching step i and waiting for step i - 1, so in the steady state the
    interval between two calls is one step's time on the device."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, step: Any, loop: Any) -> None:
        self.times.append(time.perf_counter())


@contextlib.contextmanager
def _quiet_training_log() -> Iterator[None]:
    """Hides the harness's INFO lines (``jaxsep.train``'s logger) inside the block."""
    level = train_logger.level
    train_logger.setLevel(max(logging.WARNING, level))
    try:
        yield
    finally:
        train_logger.setLevel(level)


def measure_training(point: Point, *, warmup: int | None = None, steps: int | None = None,
                     trained: bool = False, real_data: bool = False) -> dict[str, Any]:
    """Measures the training speed of ``point``'s configuration: the harness
    (:func:`jaxsep.train.train_and_evaluate`, its jitted step with the on-device batch gather
    and augmentation, on every device of the machine as the point trains) on synthetic data
    of the point's shapes, one epoch of ``warmup + steps + 1`` steps (the last one's
    interval is not seen), evaluated on the point's ``max_test_examples`` synthetic images or
    one batch (not timed), nothing written.

    Args:
      point: the sweep point (its recipe, batch size, model and options).
      warmup: steps before the timed ones (default :data:`WARMUP_STEPS`).
      steps: timed steps (default :data:`TIMED_STEPS`).
      trained: start from the point's trained weights (its run folder's best checkpoint)
        instead of its seed's initialization; ``real_data``: train on the point's own
        dataset instead of synthetic images. Neither changes the speed (measured:
        ``experiments/step_time.py``); both are there to check that.

    Returns:
      ``{"step_ms": the median step time, "images_per_second": batch / median,
      "batch_size", "step_ms_all": each timed step, "warmup_steps", "compile_seconds"}``.
    """
    from jaxsep.train import train_and_evaluate

    warmup = WARMUP_STEPS if warmup is None else warmup
    steps = TIMED_STEPS if steps is None else steps
    config = point.config
    batch = config.batch_size
    num_classes = config.num_classes or 10  # the class count of both datasets
    timed = config.replace(
        dataset=config.dataset if real_data else "synthetic",
        data_dir=config.data_dir if real_data else None,
        max_train_examples=(warmup + steps + 1) * batch,
        max_test_examples=config.max_test_examples or batch, num_classes=num_classes,
        epochs=1, eval_every=1, checkpoint_every_steps=None, out=None,
        init_from=str(point.out) if trained else None, quiet=True,
    )
    timer = _StepTimer()
    with _quiet_training_log():  # a throwaway run: its epoch and summary lines say nothing
        summary = train_and_evaluate(timed, resume=False, hooks=[timer])
    intervals = np.diff(timer.times)[warmup:]  # interval i: the time of step i (0-based)
    median = float(np.median(intervals))
    return {
        "step_ms": 1e3 * median,
        "images_per_second": batch / median,
        "batch_size": batch,
        "step_ms_all": [1e3 * float(t) for t in intervals],
        "warmup_steps": warmup,
        "compile_seconds": summary["compile_seconds"],
        "method": "the harness's train step (jaxsep.train.train_and_evaluate) on synthetic "
                  f"data of the point's shapes: median over {len(intervals)} steps after "
                  f"{warmup} warm-up steps, on {summary['device']['count']} device(s)",
    }


def measure_speed(
    point: Point, batches: Sequence[int] = LATENCY_BATCHES, *, rounds: int | None = None
) -> dict[str, Any]:
    """Measures ``point``'s inference latency at each batch size and its training speed
    (:func:`measure_training`).

    Latency, for each batch: the compiled call's first call (timed apart), then ``rounds``
    (default :data:`ROUNDS`) blocks of calls (at least :data:`MIN_CALLS`, more for fast
    calls, so a block lasts about :data:`BLOCK_S`), each block's first call dropped; a
    block's figure is its median, the result the median over blocks. Run it only while
    nothing else heavy runs on the machine: the record keeps the load average before and
    after, for the reader to judge.

    Returns:
      The ``speed.json`` record: ``batches`` maps each batch size (as a string) to its ``ms``
      (the median), ``round_ms``, ``calls`` per block, ``first_call_ms`` and
      ``compile_seconds``; ``train`` is :func:`measure_training`'s; with the model, its
      options, the input size, the device and the load averages.
    """
    config = point.config
    rounds = ROUNDS if rounds is None else rounds
    record: dict[str, Any] = {
        "model": config.model,
        "model_options": model_options(config),
        "resolution": config.resolution or STORED_RESOLUTION,
        "method": "inference: jax.jit of the eval-mode model, XLA's default compiler options; "
                  f"median over {rounds} blocks of a block's median, its first call dropped",
        "device": describe_devices(jax.devices()[:1]),
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
        "load_average_before": _load(),
        "batches": {},
    }
    for batch in batches:
        call, compile_seconds = _infer_call(point, batch)
        start = time.perf_counter()
        call()
        first = time.perf_counter() - start
        calls = max(MIN_CALLS, min(MAX_CALLS, int(BLOCK_S / max(first, 1e-6))))
        per_round = [statistics.median(time_block(call, calls)) for _ in range(rounds)]
        record["batches"][str(batch)] = {
            "ms": 1e3 * statistics.median(per_round),
            "round_ms": [1e3 * t for t in per_round],
            "calls": calls,
            "first_call_ms": 1e3 * first,
            "compile_seconds": compile_seconds,
        }
    record["train"] = measure_training(point)
    record["load_average_after"] = _load()
    record["measured_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")
    return record


def read_speed(folder: Path | None) -> dict[str, Any] | None:
    """The ``speed.json`` record in ``folder`` (a run folder or a record), or None."""
    if folder is None:
        return None
    record = run_folder.read_json(folder / SPEED_FILE)
    return record if isinstance(record, dict) and "batches" in record else None


def latency_ms(record: dict[str, Any] | None, batch: int) -> float | None:
    """The median latency (ms) at ``batch`` in a ``speed.json`` record, or None."""
    if record is None:
        return None
    entry = record["batches"].get(str(batch))
    return None if entry is None else entry.get("ms")


def step_seconds(record: dict[str, Any] | None) -> float | None:
    """The median training step time (s) in a ``speed.json`` record, or None (none, or a
    record measured before training speed was)."""
    train = None if record is None else record.get("train")
    return None if train is None else train["step_ms"] / 1e3


def ensure_speed(point: Point, state: str, *, log: Callable[[str], None],
                 again: bool = False) -> bool:
    """Measures ``point``'s speed (:func:`measure_speed`) when it is finished (``state``
    "finished" or "recorded") and neither its run folder nor its record holds a
    ``speed.json`` (or, with ``again``, in any case); writes it (atomically) into the run
    folder, or into the record when only that has finished the point (a record's
    ``speed.json`` is copied back into a finished run folder that lacks one). Returns
    whether it measured."""
    if state not in ("finished", "recorded"):
        return False
    folder = point.out if state == "finished" else point.record
    if not again:
        if read_speed(folder) is not None:
            return False
        if state == "finished" and read_speed(point.record) is not None:
            # measured before, kept in the record; the run folder gets it back (the record
            # mirrors the run folder and would otherwise lose it)
            atomic_write(folder / SPEED_FILE, (point.record / SPEED_FILE).read_bytes())
            return False
    record = measure_speed(point)
    atomic_write(folder / SPEED_FILE, json.dumps(record, indent=2) + "\n")
    cells = ", ".join(f"batch {b}: {v['ms']:.2f} ms" for b, v in record["batches"].items())
    log(f"{point.label}: inference latency {cells}; training "
        f"{record['train']['images_per_second']:.0f} img/s")
    return True
