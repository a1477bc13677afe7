"""The measuring method shared by the benchmarks under experiments/ (see docs/performance.md).

All implementations of one configuration run in one process. Each round times a block of
``calls`` calls of each implementation in turn (the first call of a block dropped: it warms
caches and the allocator), the order rotated between rounds; a round's figure is the median of
its kept calls, a report's figure the median over rounds, and a ratio the median over rounds
of that round's ratio. Compilation is timed on its own, never inside a timed call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax

import jaxsep
from jaxsep import host_memory
from jaxsep._io import atomic_write
from jaxsep.sweep.speed import cpu_model as _cpu_model, time_block  # shared with sweeps


def add_host_memory_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-reuse-host-memory", action="store_true",
        help="leave glibc's malloc as it is (by default the benchmark calls "
        "jaxsep.host_memory.reuse_host_memory() first, as jaxsep train does; it affects torch "
        "in the same process too)",
    )


def apply_host_memory(args: argparse.Namespace) -> dict:
    """Applies (or not) ``reuse_host_memory`` before any JAX computation; returns the report
    fields that say how host memory was set up."""
    applied = False if args.no_reuse_host_memory else host_memory.reuse_host_memory()
    return {"reuse_host_memory": applied, "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}


def host_memory_note(report: Mapping) -> str:
    """One sentence for a report's header: how host memory was set up."""
    reuse = "on" if report.get("reuse_host_memory") else "off"
    return (f"jaxsep.host_memory.reuse_host_memory {reuse}; GLIBC_TUNABLES="
            f"`{report.get('glibc_tunables') or ''}`")


def add_compiler_options_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--default-compiler-options", action="store_true",
        help="compile the JAX programs with XLA's defaults (by default they get "
        "jaxsep.compiler_options(), as jaxsep train compiles its steps)",
    )


def compiler_options_from(args: argparse.Namespace) -> dict:
    """The XLA compiler options the benchmark compiles its JAX programs with."""
    return {} if args.default_compiler_options else jaxsep.compiler_options()


def compiler_options_text(options: Mapping) -> str:
    """Compiler options as Markdown: "`name=value`, ..." (empty for none)."""
    return ", ".join(f"`{k}={v}`" for k, v in options.items())


def compiler_options_note(report: Mapping) -> str:
    """One phrase for a report's header: the JAX programs' compiler options."""
    listed = compiler_options_text(report.get("compiler_options") or {})
    return f"XLA compiler options {listed}" if listed else "XLA's default compiler options"


def compile_timed(fn, *args, compiler_options=None):
    """``(fn.lower(*args).compile(compiler_options), seconds it took)`` for a jitted ``fn``."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile(compiler_options=compiler_options or None)
    return compiled, time.perf_counter() - start


class Rounds:
    """Per-round medians of named calls, timed by :meth:`run` with the order rotated."""

    def __init__(self, calls_by_name: Mapping[str, Callable[[], None]]):
        self.calls_by_name = dict(calls_by_name)
        self.per_round: dict[str, list[float]] = {name: [] for name in self.calls_by_name}

    def run(self, rounds: int, calls: int) -> Rounds:
        names = list(self.calls_by_name)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                self.per_round[name].append(
                    statistics.median(time_block(self.calls_by_name[name], calls))
                )
        return self

    def seconds(self, name: str) -> float:
        """The median over rounds of ``name``'s round figures."""
        return statistics.median(self.per_round[name])

    def ratio(self, numerator: str, denominator: str) -> float | None:
        """Median over rounds of ``time(numerator) / time(denominator)`` (None if absent)."""
        if numerator not in self.per_round or denominator not in self.per_round:
            return None
        return statistics.median(
            a / b for a, b in zip(self.per_round[numerator], self.per_round[denominator])
        )


def device_description() -> str:
    """JAX's first device, in words; on the CPU with the processor model, its widest vector
    extension and the core count, since results on one x86-64 CPU say little about another."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        kind = getattr(device, "device_kind", str(device))
        return f"{kind} ({jax.device_count()} {device.platform} device(s), using one)"
    return f"cpu ({_cpu_model()}, {platform.machine()}, {os.cpu_count()} cores)"


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", choices=("cpu", "gpu", "tpu"), default=None,
        help="the JAX backend to run on (default: JAX's default backend); the PyTorch "
        "yardstick runs on the CPU or, for gpu, on CUDA when torch sees a GPU",
    )


def select_device(args: argparse.Namespace) -> str:
    """Makes ``args.device`` JAX's default backend (``cpu`` is forced even where an
    accelerator exists; ``gpu``/``tpu`` must be the default already) and returns the backend.
    Call it after :func:`apply_host_memory` and before any JAX computation."""
    if args.device == "cpu":  # no effect once a backend has started: checked below
        jax.config.update("jax_platforms", "cpu")
    backend = jax.default_backend()
    if args.device is not None and backend != args.device:
        raise SystemExit(f"--device {args.device}: JAX's backend here is {backend!r} "
                         f"(devices: {jax.devices()})")
    return backend


def torch_yardstick(disabled: bool = False) -> tuple[str | None, str | None, str]:
    """``(torch device, torch version, note)``: the device matching JAX's default backend
    (``cpu``, or ``cuda`` on a GPU when torch sees one), else ``None`` and a note saying why
    the torch columns read "n/a"."""
    if disabled:
        return None, None, "torch n/a (--no-torch)"
    try:
        import torch
    except ImportError:
        return None, None, "torch n/a (not installed)"
    backend = jax.default_backend()
    if backend == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
        return "cpu", torch.__version__, f"torch {torch.__version__} on the CPU"
    if backend == "gpu" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return "cuda", torch.__version__, f"torch {torch.__version__} on CUDA ({name})"
    return None, torch.__version__, f"torch n/a (torch {torch.__version__} has no {backend} device)"


def torch_conv_calls(conv: Callable, x: Any, kernel: Any, device: str,
                     **kwargs: Any) -> dict[str, Callable[[], None]]:
    """Synchronized PyTorch calls of ``conv(x, kernel, **kwargs)`` on ``device``: "fwd"
    (without autograd), "fwd+bwd" (gradients with respect to ``x`` and ``kernel`` for a fixed
    random cotangent) and "stem" (the kernel's gradient only, as for a model's first layer)."""
    import torch

    x, kernel = x.detach().requires_grad_(True), kernel.detach().requires_grad_(True)
    cotangent = torch.randn_like(conv(x, kernel, **kwargs))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def forward() -> None:
        with torch.no_grad():
            conv(x, kernel, **kwargs)
        sync()

    def forward_backward() -> None:
        torch.autograd.grad(conv(x, kernel, **kwargs), (x, kernel), cotangent)
        sync()

    def stem() -> None:
        torch.autograd.grad(conv(x.detach(), kernel, **kwargs), (kernel,), cotangent)
        sync()

    return {"fwd": forward, "fwd+bwd": forward_backward, "stem": stem}


def report_header(backend: str, no_torch: bool) -> tuple[str | None, dict]:
    """The torch device for the yardstick (None when there is none) and a report's first
    fields: backend, device, jax, and torch's version and note (:func:`torch_yardstick`)."""
    torch_device, torch_version, torch_note = torch_yardstick(no_torch)
    return torch_device, {
        "backend": backend,
        "device": device_description(),
        "jax": jax.__version__,
        "torch": torch_version if torch_device else None,
        "torch_note": torch_note,
    }


def autotune_fields() -> dict:
    """Report fields: whether ``impl="auto"`` measures, and its cache file."""
    from jaxsep._lowering import autotune

    return {"autotune": autotune.enabled(), "autotune_cache": str(autotune.cache_file())}


def autotune_note(report: Mapping) -> str:
    """One phrase for a report's header: how ``impl="auto"`` chose."""
    if not report.get("autotune"):
        return "`auto` by the fixed rules (`JAXSEP_AUTOTUNE=0`)"
    return (f"`auto` by measurement (cache `{report.get('autotune_cache')}`; a first-time "
            "measurement is inside auto's compile time)")


def lowering_of(fn: Callable, *args) -> str:
    """The lowering a depthwise or grouped op runs inside ``fn(*args)``, read from its jaxpr:
    "taps" (the taps op), "xla" (a grouped ``conv_general_dilated``), else "split"."""
    from jaxsep._lowering.taps import TAPS_NAME

    text = str(jax.make_jaxpr(fn)(*args))
    if f"name={TAPS_NAME}" in text:
        return "taps"
    groups = [int(g) for g in re.findall(r"feature_group_count=(\d+)", text)]
    return "xla" if any(g > 1 for g in groups) else "split"


def plain_trainer(model_name: str, width: float, batch: int, *, lr: float = 0.1,
                  momentum: float = 0.9) -> tuple[float, Callable[[], None]]:
    """The training step a JAX user writes who knows none of the tricks: ``nnx.jit`` over
    ``nnx.Optimizer(optax.sgd(lr, momentum))`` and softmax cross-entropy, for
    ``jaxsep.models.create(model_name, variant="cifar", width_multiplier=width)`` on one fixed
    batch of ``batch`` standard-normal 32x32 NHWC images with random labels.

    Returns:
      (seconds of the first step, compilation included; a function running one synchronized
      step).
    """
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from jaxsep import models

    model = models.create(model_name, variant="cifar", width_multiplier=width)
    optimizer = nnx.Optimizer(model, optax.sgd(lr, momentum=momentum), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, 32, 32, 3), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch), dtype=jnp.int32)

    def step() -> None:
        train_step(model, optimizer, x, y).block_until_ready()

    start = time.perf_counter()
    step()
    return time.perf_counter() - start, step


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    """A table cell: ``value`` with ``digits`` decimals and ``suffix``, or "n/a" for None."""
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def add_write_each_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--write-each", action="store_true",
        help="rewrite the results after each row (marked partial until the run ends), so a run "
        "cut short by a time limit keeps what it measured",
    )


def partial_note(report: Mapping) -> str:
    """A line for a report's header when it holds only part of the planned rows."""
    return f"**Partial: {report['partial']} rows; the run was cut short.**\n\n" if report.get("partial") else ""


def write_report(out_dir: Path, stem: str, report: Mapping, table: str) -> None:
    """Writes ``<stem>.json`` and ``<stem>.md`` into ``out_dir``, each atomically."""
    atomic_write(out_dir / f"{stem}.json", json.dumps(report, indent=2) + "\n")
    atomic_write(out_dir / f"{stem}.md", table)
    print(f"wrote {out_dir / stem}.json and .md")
