"""Benchmark of the whole training step: MobileNetV1-CIFAR, batch 128, separable convolutions.

Measures training images/s and the train step's compile time on the default JAX backend (or
``--device``) for the CIFAR MobileNetV1 (the paper's layer table, 32x32 inputs, stem stride 1)
at each width, built three ways:

* ``jaxsep``: ``jaxsep.models.mobilenet_v1(impl="auto")``, trained by the very step that
  ``jaxsep train`` runs (``jaxsep.train.steps.train_step``: on-device batch gather and
  augmentation, forward, loss, gradients, SGD with Nesterov momentum and weight decay,
  BatchNorm statistics);
* ``flax grouped``: the same architecture written with plain Flax layers, the depthwise
  layers as ``nnx.Conv(feature_group_count=C)`` (and 1x1 ``nnx.Conv`` pointwise layers),
  trained by the same step function;
* ``torch CL``: the same architecture in PyTorch on channels-last tensors, SGD with Nesterov
  momentum and weight decay, when ``import torch`` works (``--no-torch`` skips it; on a GPU it
  runs on CUDA when torch sees one, else its columns read "n/a"). It trains on a fixed batch
  (no gather or augmentation), so it is, if anything, flattered.

And a fourth, the **plain loop** (``--no-plain-loop`` skips it): what a JAX user gets who
knows none of the tricks: their own ``nnx.jit`` train step (``nnx.Optimizer`` with
``optax.sgd(momentum=0.9)``, softmax cross-entropy, a fixed batch) over
``jaxsep.models.create("mobilenet_v1", variant="cifar")`` with nothing set: no compiler
options, no environment variables (what ``import jaxsep`` does by default, it does: it
applies ``reuse_host_memory``). Since that setting is process-wide and cannot be undone, the
plain loop runs in a subprocess whose environment lacks :data:`PLAIN_ENV_REMOVED`, with a torch CL run of the same optimizer (SGD momentum 0.9, no
Nesterov, no weight decay) beside it in that subprocess: its ratio comes from one process, as
the harness row's does from this one. Its "first step" is the first call (compilation, and
``impl="auto"``'s measurements when its cache is cold).

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
    python experiments/bench_train.py --device gpu    # the same on a GPU
    python experiments/bench_train.py --quick --no-torch --out /tmp/b   # smoke test

Results: ``experiments/results/bench_train_<backend>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxsep import data as jdata
from jaxsep import models
from jaxsep.models._registry import INIT_COMPILER_OPTIONS
from jaxsep.models.mobilenet_v1 import LAYERS, STEM_CHANNELS, v1_channels
from jaxsep.train import steps as S
from jaxsep.train.optim import weight_decay_mask

from _timing import (
    plain_trainer,
    device_description,
    Rounds,
    write_report,
    add_device_flag,
    select_device,
    torch_yardstick,
    fmt,
    autotune_fields,
    autotune_note,
    add_write_each_flag,
    partial_note,
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
NUM_BATCHES = 4  # distinct batches the JAX steps cycle through
# What the plain loop's subprocess leaves out of its environment: settings a user who knows no
# tricks has not made (glibc's malloc tunables, a preloaded malloc, XLA flags, jaxsep's
# host-memory switch). JAXSEP_AUTOTUNE and its cache stay: they are the benchmark's choice
# for every row (unset, auto measures, as a user gets).
PLAIN_ENV_REMOVED = ("GLIBC_TUNABLES", "LD_PRELOAD", "XLA_FLAGS", "JAXSEP_REUSE_HOST_MEMORY")


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
        jax.jit(init, out_shardings=replicated).lower().compile(
            compiler_options=INIT_COMPILER_OPTIONS)()
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


def _torch_trainer(width: float, batch: int, device: str = "cpu", *, nesterov: bool = True,
                   weight_decay: float = WEIGHT_DECAY):
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
    model = model.to(device=device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=nesterov,
                                weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=generator).to(device).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, 10, (batch,), generator=generator).to(device)
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


# --------------------------------------------------------------------------------------------
# The plain loop: a user's own nnx.jit step, nothing set


def plain_child(args) -> int:
    """The subprocess of the plain-loop row: the plain loop and torch CL with the same
    optimizer, interleaved as in :func:`bench_width`; writes its rows as JSON."""
    torch_device, _, _ = torch_yardstick(args.no_torch)
    rows = {}
    for width in args.widths:
        trainers, first_s = {}, {}
        first_s["plain loop"], trainers["plain loop"] = plain_trainer(
            "mobilenet_v1", width, args.batch_size, lr=LR, momentum=MOMENTUM)
        if torch_device:
            first_s["torch CL"], trainers["torch CL"] = _torch_trainer(
                width, args.batch_size, torch_device, nesterov=False, weight_decay=0.0
            )
        timed = Rounds(trainers).run(args.rounds, args.steps)
        rows[str(width)] = {
            "images_per_second": {n: args.batch_size / timed.seconds(n) for n in trainers},
            "step_ms": {n: 1e3 * timed.seconds(n) for n in trainers},
            "first_step_s": first_s,
            "plain_vs_torch_cl": timed.ratio("torch CL", "plain loop"),
        }
    Path(args.plain_child).write_text(json.dumps(rows))
    return 0


def run_plain_loop(args) -> dict:
    """Runs :func:`plain_child` in a subprocess with :data:`PLAIN_ENV_REMOVED` removed from its
    environment; returns its rows by width (as str)."""
    env = {k: v for k, v in os.environ.items() if k not in PLAIN_ENV_REMOVED}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "plain.json"
        command = [
            sys.executable, __file__, "--plain-child", str(out), "--widths",
            *map(str, args.widths), "--batch-size", str(args.batch_size), "--steps",
            str(args.steps), "--rounds", str(args.rounds),
            *(["--device", args.device] if args.device else []),
            *(["--no-torch"] if args.no_torch else []),
        ]
        subprocess.run(command, env=env, check=True)
        return json.loads(out.read_text())


# --------------------------------------------------------------------------------------------
# Timing


def bench_width(
    width: float, *, batch: int, steps: int, rounds: int, torch_device: str | None,
    compiler_options=None,
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
    if torch_device:
        compile_s["torch CL"], trainers["torch CL"] = _torch_trainer(width, batch, torch_device)

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


def markdown(report: dict) -> str:
    plain = report.get("plain_loop")
    lines = [
        f"# Training-step benchmark ({report['backend']}: {report['device']})",
        "",
        partial_note(report) +
        f"MobileNetV1-CIFAR (separable), batch {report['batch']}, float32, SGD (Nesterov "
        f"momentum {MOMENTUM}, weight decay {WEIGHT_DECAY}); jax {report['jax']}, flax "
        f"{report['flax']}, {report['torch_note']}; medians of "
        f"{report['rounds']} rounds x {report['steps']} steps; {host_memory_note(report)}; "
        f"{compiler_options_note(report)}; {autotune_note(report)}. "
        f"Command: `{report['command']}`.",
        "",
        "| width | jaxsep img/s | flax grouped img/s | jaxsep / flax grouped | torch CL img/s | "
        "jaxsep / torch CL |"
        + (" plain loop img/s | torch CL img/s (plain's process) | plain loop / torch CL |"
           if plain else "")
        + " jaxsep compile s | flax grouped compile s |"
        + (" plain loop first step s |" if plain else ""),
        "|---" * (8 + (4 if plain else 0)) + "|",
    ]
    for row in report["widths"]:
        ips, comp = row["images_per_second"], row["compile_s"]
        line = (
            f"| {row['width']} | {fmt(ips['jaxsep'], 1)} | {fmt(ips['flax grouped'], 1)} | "
            f"{fmt(row['jaxsep_vs_flax_grouped'], 2, 'x')} | {fmt(ips.get('torch CL'), 1)} | "
            f"{fmt(row['jaxsep_vs_torch_cl'], 2, 'x')} |"
        )
        p = plain[str(row["width"])] if plain else None
        if p:
            line += (
                f" {fmt(p['images_per_second']['plain loop'], 1)} | "
                f"{fmt(p['images_per_second'].get('torch CL'), 1)} | "
                f"{fmt(p['plain_vs_torch_cl'], 2, 'x')} |"
            )
        line += f" {fmt(comp['jaxsep'], 1)} | {fmt(comp['flax grouped'], 1)} |"
        if p:
            line += f" {fmt(p['first_step_s']['plain loop'], 1)} |"
        lines.append(line)
    lines += [
        "",
        "Targets: jaxsep / flax grouped >= 3x; jaxsep / torch CL >= 0.7x (same process, same "
        "run); plain loop / torch CL >= 0.9x. A ratio is the median over rounds of that round's "
        "ratio. The harness (jaxsep) steps include the on-device batch gather and augmentation; "
        "torch trains on a fixed batch.",
    ]
    if plain:
        lines += [
            "",
            "Plain loop: a user's own `nnx.jit` step (`nnx.Optimizer`, `optax.sgd(momentum="
            f"{MOMENTUM})`, softmax cross-entropy, a fixed batch) over "
            "`jaxsep.models.create(\"mobilenet_v1\", variant=\"cifar\")`, nothing set: run in a "
            "subprocess without " + ", ".join(f"`{n}`" for n in PLAIN_ENV_REMOVED)
            + " in its environment (so `import jaxsep` applies `reuse_host_memory`, its "
            "default), no compiler options; its torch CL column ran in that subprocess with "
            "the same optimizer (no Nesterov, no weight decay), so its ratio, like the harness "
            "row's, comes from one process. \"First step\" is the first call: compilation plus "
            "any `impl=\"auto\"` measurement of a cold autotune cache.",
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
    parser.add_argument("--no-plain-loop", action="store_true",
                        help="skip the plain-loop row (a user's own nnx.jit step, nothing set, "
                        "in a subprocess with a clean environment)")
    parser.add_argument("--plain-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default experiments/results; --quick writes "
                        "only with --out)")
    add_device_flag(parser)
    add_host_memory_flag(parser)
    add_compiler_options_flag(parser)
    add_write_each_flag(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.widths, args.batch_size, args.steps, args.rounds = [0.25], 8, 2, 1
    if args.plain_child:  # the plain loop's own process: nothing set
        select_device(args)
        return plain_child(args)
    # First, before this process allocates anything: the plain loop in its own process.
    plain = None if args.no_plain_loop else run_plain_loop(args)
    memory = apply_host_memory(args)  # before the first JAX computation
    backend = select_device(args)
    torch_device, torch_version, torch_note = torch_yardstick(args.no_torch)
    report = {
        "backend": backend,
        "device": device_description(),
        "jax": jax.__version__,
        "flax": __import__("flax").__version__,
        "torch": torch_version if torch_device else None,
        "torch_note": torch_note,
        "batch": args.batch_size,
        "steps": args.steps,
        "rounds": args.rounds,
        **memory,
        **autotune_fields(),
        "compiler_options": compiler_options_from(args),
        "plain_loop": plain,
        "plain_loop_env_removed": list(PLAIN_ENV_REMOVED),
        "command": "python experiments/bench_train.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "widths": [],
    }
    out_dir = args.out if args.out is not None else (None if args.quick else RESULTS)
    stem = f"bench_train_{report['backend']}"
    for width in args.widths:
        row = bench_width(width, batch=args.batch_size, steps=args.steps, rounds=args.rounds,
                          torch_device=torch_device,
                          compiler_options=report["compiler_options"])
        report["widths"].append(row)
        ips = row["images_per_second"]
        p = plain[str(width)] if plain else None
        print(
            f"width {width}: jaxsep {ips['jaxsep']:.1f} img/s, flax grouped "
            f"{ips['flax grouped']:.1f} img/s ({row['jaxsep_vs_flax_grouped']:.2f}x)"
            + (f", torch CL {ips['torch CL']:.1f} img/s ({row['jaxsep_vs_torch_cl']:.2f}x)"
               if "torch CL" in ips else "")
            + (f"; plain loop {p['images_per_second']['plain loop']:.1f} img/s"
               + (f" ({p['plain_vs_torch_cl']:.2f}x its torch CL)"
                  if p["plain_vs_torch_cl"] is not None else "") if p else "")
            + f"; compile {row['compile_s']['jaxsep']:.1f} s / "
            f"{row['compile_s']['flax grouped']:.1f} s",
            flush=True,
        )
        if args.write_each and out_dir is not None and len(report["widths"]) < len(args.widths):
            report["partial"] = f"{len(report['widths'])} of {len(args.widths)}"
            write_report(out_dir, stem, report, markdown(report))
    report.pop("partial", None)
    table = markdown(report)
    print(table)
    if out_dir is not None:
        write_report(out_dir, stem, report, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
