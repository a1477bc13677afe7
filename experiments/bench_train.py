"""Benchmark of the whole training step: MobileNetV1-CIFAR, batch 128, separable convolutions.

Measures training images/s and the train step's compile time on the default JAX backend for
the CIFAR MobileNetV1 (the paper's layer table, 32x32 inputs, stem stride 1) at each width,
built three ways:

* ``jaxsep``: ``jaxsep.models.mobilenet_v1(impl="auto")``, trained by the very step that
  ``jaxsep train`` runs (``jaxsep.train.steps.train_step``: on-device batch gather and
  augmentation, forward, loss, gradients, SGD with Nesterov momentum and weight decay,
  BatchNorm statistics);
* ``flax grouped``: the same architecture written with plain Flax layers, the depthwise
  layers as ``nnx.Conv(feature_group_count=C)`` (and 1x1 ``nnx.Conv`` pointwise layers),
  trained by the same step function;
* ``torch CL``: the same architecture in PyTorch on channels-last tensors, SGD with Nesterov
  momentum and weight decay, when ``import torch`` works (``--no-torch`` skips it). It trains
  on a fixed batch (no gather or augmentation), so it is, if anything, flattered.

Method (see docs/performance.md): everything runs in one process; each round times a block of
``--steps`` steps of each implementation in turn (one step per call, the first call of each
block dropped), the order rotated between rounds; a round's figure is the median of its
kept calls, and the report the median over rounds. Ratios are taken per round, then the
median. Compilation (``jit(...).lower(...).compile()``) is timed on its own, never inside a
timed call. Run it on an otherwise idle machine. Both JAX steps are compiled with
``jaxsep.compiler_options()``, as ``jaxsep train`` compiles its step (on the CPU: 512-bit
vectors; ``--default-compiler-options`` compiles with XLA's defaults). Like ``jaxsep train``,
it first calls
``jaxsep.host_memory.reuse_host_memory()`` (glibc keeps freed host memory for the next step;
process-wide, so torch runs under it too); ``--no-reuse-host-memory`` measures without.

    python experiments/bench_train.py                 # widths 1.0 and 0.5; writes results/
    python experiments/bench_train.py --quick --no-torch --out /tmp/b   # smoke test

Results: ``experiments/results/bench_train_<backend>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsep import data as jdata
from jaxsep import models
from jaxsep.models.mobilenet_v1 import LAYERS, STEM_CHANNELS, v1_channels
from jaxsep.train import steps as S
from jaxsep.train.optim import weight_decay_mask

from _timing import (
    device_description,
    Rounds,
    write_report,
    add_host_memory_flag,
    apply_host_memory,
    host_memory_note,
    add_compiler_options_flag,
    compiler_options_from,
    compiler_options_note,
)

RESULTS = Path(__file__).resolve().parent / "results"
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5  # as jaxsep's models (PyTorch's defaults)
# Building a model compiles its initialization; XLA's optimizer is wasted on a one-off program.
_INIT_OPTIONS = {"xla_backend_optimization_level": 0}
NUM_BATCHES = 4  # distinct batches the JAX steps cycle through


# --------------------------------------------------------------------------------------------
# The baseline: MobileNetV1-CIFAR from plain Flax layers


class FlaxMobileNetV1(nnx.Module):
    """MobileNetV1-CIFAR (same layer table and widths as jaxsep's) from ``nnx.Conv`` layers:
    depthwise ``nnx.Conv(C, C, (3, 3), feature_group_count=C)``, pointwise
    ``nnx.Conv(C, O, (1, 1))``, each followed by BatchNorm and ReLU."""

    def __init__(self, width: float, *, num_classes: int = 10, rngs: nnx.Rngs):
        def conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1):
            conv = nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding="SAME",
                            feature_group_count=groups, use_bias=False, rngs=rngs)
            norm = nnx.BatchNorm(cout, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)
            return nnx.List([conv, norm])

        features = v1_channels(STEM_CHANNELS, width)
        layers = [conv_bn(3, features, 3, 1)]
        for channels, stride in LAYERS:
            out = v1_channels(channels, width)
            layers.append(conv_bn(features, features, 3, stride, groups=features))
            layers.append(conv_bn(features, out, 1, 1))
            features = out
        self.layers = nnx.List(layers)
        self.classifier = nnx.Linear(features, num_classes, rngs=rngs)
        self.num_classes = num_classes

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv, norm in self.layers:
            x = jax.nn.relu(norm(conv(x)))
        return self.classifier(jnp.mean(x, axis=(1, 2)))


# --------------------------------------------------------------------------------------------
# JAX: the jaxsep.train step over either model


def _jax_trainer(
    make: Callable[[], nnx.Module], batch: int, data: jdata.Dataset, mesh, compiler_options=None
):
    """(compile seconds, a function running one synchronized train step)."""
    abstract = nnx.eval_shape(make)
    graphdef, _ = nnx.split(abstract)
    mask = weight_decay_mask(abstract)  # depthwise kernels, biases and norms are not decayed
    spec = S.StepSpec(
        batch_size=batch, num_classes=10, seed=0, augment=True, cutout=0, resolution=None,
        compute_dtype="float32", label_smoothing=0.0, optimizer="sgd",
        weight_decay=WEIGHT_DECAY, momentum=MOMENTUM, nesterov=True, adam_b1=0.9,
        adam_b2=0.999, decay_mask=tuple(bool(b) for b in jax.tree.leaves(mask)), mesh=mesh,
    )
    replicated = spec.replicated

    def init():
        return nnx.split(make(), nnx.Param, nnx.BatchStat, ...)[1:]

    params, batch_stats, rest = (
        jax.jit(init, out_shardings=replicated).lower().compile(compiler_options=_INIT_OPTIONS)()
    )
    state = {
        "params": params,
        "batch_stats": batch_stats,
        "opt_state": S.init_optimizer_state(spec, params),
        "sums": S.zero_sums(spec),
    }
    images = S.to_device(data.train_images, replicated)
    labels = S.to_device(data.train_labels, replicated)
    order = S.to_device(np.arange(batch * NUM_BATCHES, dtype=np.int32), replicated)
    scalars = {
        (name, value): S.to_device(np.asarray(value, dtype), replicated)
        for name, dtype, values in (("epoch", np.int32, [0]), ("lr", np.float32, [LR]),
                                    ("step", np.int32, range(NUM_BATCHES)))
        for value in values
    }
    start = time.perf_counter()
    compiled = S.jit_train_step.lower(
        graphdef, spec, state, rest, images, labels, order, scalars["epoch", 0],
        scalars["step", 0], scalars["lr", LR],
    ).compile(compiler_options=compiler_options or None)
    compile_seconds = time.perf_counter() - start
    counter = iter(range(1 << 62))

    def step() -> None:
        nonlocal state
        index = next(counter) % NUM_BATCHES
        state, result = compiled(state, rest, images, labels, order, scalars["epoch", 0],
                                 scalars["step", index], scalars["lr", LR])
        jax.block_until_ready((state, result))

    return compile_seconds, step


# --------------------------------------------------------------------------------------------
# PyTorch, channels-last


def _torch_trainer(width: float, batch: int):
    import torch
    from torch import nn

    def conv_bn(cin, cout, kernel, stride, groups=1):
        return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    features = v1_channels(STEM_CHANNELS, width)
    layers = conv_bn(3, features, 3, 1)
    for channels, stride in LAYERS:
        out = v1_channels(channels, width)
        layers += conv_bn(features, features, 3, stride, groups=features)
        layers += conv_bn(features, out, 1, 1)
        features = out
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(features, 10))
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True,
                                weight_decay=WEIGHT_DECAY)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=generator).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, 10, (batch,), generator=generator)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        loss.item()

    start = time.perf_counter()
    step()
    return time.perf_counter() - start, step


def _torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


# --------------------------------------------------------------------------------------------
# Timing


def bench_width(
    width: float, *, batch: int, steps: int, rounds: int, torch: bool, compiler_options=None
) -> dict:
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), (S.DATA_AXIS,))
    data = jdata.synthetic_cifar10(num_train=batch * NUM_BATCHES, num_test=1)
    trainers, compile_s = {}, {}
    compile_s["jaxsep"], trainers["jaxsep"] = _jax_trainer(
        lambda: models.create("mobilenet_v1", variant="cifar", width_multiplier=width),
        batch, data, mesh, compiler_options,
    )
    compile_s["flax grouped"], trainers["flax grouped"] = _jax_trainer(
        lambda: FlaxMobileNetV1(width, rngs=nnx.Rngs(0)), batch, data, mesh, compiler_options
    )
    if torch:
        compile_s["torch CL"], trainers["torch CL"] = _torch_trainer(width, batch)

    timed = Rounds(trainers).run(rounds, steps)
    return {
        "width": width,
        "images_per_second": {n: batch / timed.seconds(n) for n in trainers},
        "step_ms": {n: 1e3 * timed.seconds(n) for n in trainers},
        "compile_s": compile_s,
        "per_round_step_ms": {n: [1e3 * t for t in v] for n, v in timed.per_round.items()},
        # images/s ratios (step time of the other over jaxsep's): jaxsep over the baseline
        # (>= 3 wanted), jaxsep over torch (>= 0.7)
        "jaxsep_vs_flax_grouped": timed.ratio("flax grouped", "jaxsep"),
        "jaxsep_vs_torch_cl": timed.ratio("torch CL", "jaxsep"),
    }


# --------------------------------------------------------------------------------------------
# Report


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    has_torch = report["torch"] is not None
    lines = [
        f"# Training-step benchmark ({report['backend']}: {report['device']})",
        "",
        f"MobileNetV1-CIFAR (separable), batch {report['batch']}, float32, SGD (Nesterov "
        f"momentum {MOMENTUM}, weight decay {WEIGHT_DECAY}); jax {report['jax']}, flax "
        f"{report['flax']}, torch {report['torch'] or 'not installed'}; medians of "
        f"{report['rounds']} rounds x {report['steps']} steps; {host_memory_note(report)}; "
        f"{compiler_options_note(report)}. "
        f"Command: `{report['command']}`.",
        "",
        "| width | jaxsep img/s | flax grouped img/s | jaxsep / flax grouped |"
        + (" torch CL img/s | jaxsep / torch CL |" if has_torch else "")
        + " jaxsep compile s | flax grouped compile s |",
        "|---" * (6 + (2 if has_torch else 0)) + "|",
    ]
    for row in report["widths"]:
        ips, comp = row["images_per_second"], row["compile_s"]
        line = (
            f"| {row['width']} | {_fmt(ips['jaxsep'])} | {_fmt(ips['flax grouped'])} | "
            f"{_fmt(row['jaxsep_vs_flax_grouped'], 2)}x |"
        )
        if has_torch:
            line += f" {_fmt(ips.get('torch CL'))} | {_fmt(row['jaxsep_vs_torch_cl'], 2)}x |"
        line += f" {_fmt(comp['jaxsep'])} | {_fmt(comp['flax grouped'])} |"
        lines.append(line)
    lines += [
        "",
        "Targets: jaxsep / flax grouped >= 3x; jaxsep / torch CL >= 0.7x (same process, same "
        "run). A ratio is the median over rounds of that round's ratio. The JAX steps include "
        "the on-device batch gather and augmentation; torch trains on a fixed batch.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per block")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="width 0.25, batch 8, 2 steps, 1 round: a smoke test")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default experiments/results; --quick writes "
                        "only with --out)")
    add_host_memory_flag(parser)
    add_compiler_options_flag(parser)
    args = parser.parse_args(argv)
    memory = apply_host_memory(args)  # before the first JAX computation
    if args.quick:
        args.widths, args.batch_size, args.steps, args.rounds = [0.25], 8, 2, 1
    torch_version = None if args.no_torch else _torch_version()
    report = {
        "backend": jax.default_backend(),
        "device": device_description(),
        "jax": jax.__version__,
        "flax": __import__("flax").__version__,
        "torch": torch_version,
        "batch": args.batch_size,
        "steps": args.steps,
        "rounds": args.rounds,
        **memory,
        "compiler_options": compiler_options_from(args),
        "command": "python experiments/bench_train.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "widths": [],
    }
    for width in args.widths:
        row = bench_width(width, batch=args.batch_size, steps=args.steps, rounds=args.rounds,
                          torch=torch_version is not None,
                          compiler_options=report["compiler_options"])
        report["widths"].append(row)
        ips = row["images_per_second"]
        print(
            f"width {width}: jaxsep {ips['jaxsep']:.1f} img/s, flax grouped "
            f"{ips['flax grouped']:.1f} img/s ({row['jaxsep_vs_flax_grouped']:.2f}x)"
            + (f", torch CL {ips['torch CL']:.1f} img/s ({row['jaxsep_vs_torch_cl']:.2f}x)"
               if "torch CL" in ips else "")
            + f"; compile {row['compile_s']['jaxsep']:.1f} s / "
            f"{row['compile_s']['flax grouped']:.1f} s",
            flush=True,
        )
    table = markdown(report)
    print(table)
    out_dir = args.out if args.out is not None else (None if args.quick else RESULTS)
    if out_dir is not None:
        write_report(out_dir, f"bench_train_{report['backend']}", report, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
