"""Benchmark of the dense-convolution lowerings on the models' stems: forward and backward.

Measures, on the default JAX backend (or ``--device``), ``jaxsep.conv`` (float32, NHWC, SAME)
with ``impl="xla"`` (``lax.conv_general_dilated``), ``"patches"`` (im2col patches times the
flattened kernel) and ``"auto"`` ("xla" unless measuring finds "patches" faster; it measures
"patches" only where the patches, ``prod(K) * C`` channels, are no wider than the output), and
PyTorch's channels-last ``conv2d`` when torch is importable. Three passes each: the forward;
"stem", the forward and the kernel gradient (a model's first layer, whose input needs no
gradient); and "fwd+bwd", the forward and both gradients (what ``auto`` measures).

Layers: the 3x3 stems of the zoo's CIFAR variants at batch 128 (3 -> 32: MobileNetV1/V2 and
EfficientNet-B0; 3 -> 24: ShuffleNet v1/v2; 3 -> 16: MobileNetV3), the 3x3 stride-2 stem of the
ImageNet variants (224x224, 3 -> 32) at batches 32 and 1, and the first dense 3x3 layer of
``mobilenet_v1(conv="standard", variant="cifar")`` and the next (32 -> 64 at 32x32, 288 patch
channels; 64 -> 128 stride 2, 576, the most ``auto`` measures "patches" for:
``PATCHES_MAX_DEPTH``); and the third (128 -> 128 at 16x16, 1152 patch channels: "xla" only).

And what a user's training step gains: the plain ``nnx.jit`` step of
``experiments/_timing.plain_trainer`` (SGD momentum, batch 128, CIFAR variant) for a few
models, traced once with the fixed rules (``jaxsep.autotune(False)``: "xla" stems) and once
with ``auto`` measuring (the default), timed side by side; the autotune cache in use says which
lowerings ``auto`` chose.

Method (see docs/performance.md), as in ``bench_ops.py``: all implementations of one layer in
one process, blocks of calls (the first dropped), the order rotated between rounds, medians
over rounds, ratios per round; compilation timed apart. Run it on an otherwise idle machine.

    python experiments/bench_conv.py                 # writes results/bench_conv_<backend>.{json,md}
    python experiments/bench_conv.py --quick --no-torch --out /tmp/bc   # smoke test
    python experiments/bench_conv.py --models        # the training steps only
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

import jaxsep
from jaxsep._lowering import PATCHES_MAX_DEPTH, conv_candidates

from _timing import (
    Rounds,
    plain_trainer,
    add_device_flag,
    add_host_memory_flag,
    apply_host_memory,
    autotune_fields,
    autotune_note,
    compile_timed,
    fmt,
    host_memory_note,
    select_device,
    torch_conv_calls,
    report_header,
    write_report,
)

RESULTS = Path(__file__).resolve().parent / "results"
LOWERINGS = ("xla", "patches")
PASSES = ("fwd", "stem", "fwd+bwd")


@dataclasses.dataclass(frozen=True)
class Case:
    """``(batch, size, size, channels) -> (batch, size / stride, size / stride, out)``, 3x3."""

    label: str
    batch: int
    size: int
    channels: int
    out: int
    stride: int = 1


CASES = [
    Case("CIFAR stem 3->32 (V1, V2, EffNet)", 128, 32, 3, 32),
    Case("CIFAR stem 3->24 (ShuffleNets)", 128, 32, 3, 24),
    Case("CIFAR stem 3->16 (V3)", 128, 32, 3, 16),
    Case("ImageNet stem 3->32 s2, batch 32", 32, 224, 3, 32, 2),
    Case("ImageNet stem 3->32 s2, batch 1", 1, 224, 3, 32, 2),
    Case("V1 standard 32->64", 128, 32, 32, 64),
    Case("V1 standard 64->128 s2", 128, 32, 64, 128, 2),
    Case("V1 standard 128->128", 128, 16, 128, 128),
]
STEP_MODELS = ("mobilenet_v1:1.0", "mobilenet_v1:0.5", "shufflenet_v2:1.0", "mobilenet_v3_small:1.0")
QUICK_STEP_MODELS = ("mobilenet_v1:0.25",)
QUICK_CASES = [Case("tiny stem 3->32", 2, 8, 3, 32), Case("tiny 72->8", 2, 8, 72, 8)]


def _jax_calls(impl: str, case: Case, x, k, ct):
    """Compiled forward, forward + kernel gradient, forward + both gradients."""

    def forward(x, k):
        return jaxsep.conv(x, k, strides=case.stride, impl=impl)

    def stem(x, k, ct):
        out, vjp = jax.vjp(lambda k: forward(x, k), k)
        return out, vjp(ct)

    def fwd_bwd(x, k, ct):
        out, vjp = jax.vjp(forward, x, k)
        return out, vjp(ct)

    fns = {"fwd": (jax.jit(forward), (x, k)), "stem": (jax.jit(stem), (x, k, ct)),
           "fwd+bwd": (jax.jit(fwd_bwd), (x, k, ct))}
    calls, compile_s = {}, {}
    for name, (fn, args) in fns.items():
        compiled, compile_s[name] = compile_timed(fn, *args)
        calls[name] = lambda c=compiled, a=args: jax.block_until_ready(c(*a))
    return calls, compile_s


def _torch_calls(case: Case, device: str):
    import torch

    x = torch.randn(case.batch, case.channels, case.size, case.size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    k = torch.randn(case.out, case.channels, 3, 3, device=device)
    return torch_conv_calls(torch.nn.functional.conv2d, x, k, device, stride=case.stride,
                            padding=1)


def bench_case(case: Case, *, rounds: int, calls: int, torch_device) -> dict:
    key = jax.random.key(0)
    x = jax.random.normal(key, (case.batch, case.size, case.size, case.channels), jnp.float32)
    k = jax.random.normal(jax.random.fold_in(key, 1), (3, 3, case.channels, case.out))
    out_shape = jax.eval_shape(lambda x, k: jaxsep.conv(x, k, strides=case.stride), x, k).shape
    ct = jax.random.normal(jax.random.fold_in(key, 2), out_shape, jnp.float32)
    candidates = conv_candidates(case.channels, 1, (3, 3))
    timed_calls, compile_s = {}, {}
    for impl in LOWERINGS + ("auto",):
        calls_of, compiled = _jax_calls(impl, case, x, k, ct)
        timed_calls.update({f"{impl} {p}": c for p, c in calls_of.items()})
        compile_s.update({f"{impl} {p}": s for p, s in compiled.items()})
    if torch_device:
        timed_calls.update({f"torch CL {p}": c for p, c in _torch_calls(case, torch_device).items()})
    timed = Rounds(timed_calls).run(rounds, calls)
    ms = {name: 1e3 * timed.seconds(name) for name in timed_calls}
    auto_text = str(jax.make_jaxpr(lambda x, k: jaxsep.conv(x, k, strides=case.stride))(x, k))
    auto_impl = "xla" if "conv_general_dilated" in auto_text else "patches"
    return {
        **dataclasses.asdict(case),
        "candidates": list(candidates),
        "auto_impl": auto_impl,
        "ms": ms,
        "compile_s": compile_s,
        "ratios": {
            **{f"xla/patches {p}": timed.ratio(f"xla {p}", f"patches {p}") for p in PASSES},
            **{f"xla/auto {p}": timed.ratio(f"xla {p}", f"auto {p}") for p in PASSES},
            **{f"auto/torch {p}": timed.ratio(f"auto {p}", f"torch CL {p}") for p in PASSES},
        },
    }


def bench_steps(models, *, batch: int, rounds: int, calls: int) -> list[dict]:
    """A user's plain training step per ``name:width``, traced with the fixed rules and with
    ``auto`` measuring; per-round step times and the ratio fixed/auto."""
    rows = []
    for spec in models:
        name, width = spec.split(":")
        trainers = {}
        for label, measuring in (("fixed rules", False), ("auto", True)):
            with jaxsep.autotune(measuring):  # the trace (inside the first step) picks lowerings
                _, trainers[label] = plain_trainer(name, float(width), batch)
        timed = Rounds(trainers).run(rounds, calls)
        row = {
            "model": name, "width": float(width), "batch": batch,
            "step_ms": {label: 1e3 * timed.seconds(label) for label in trainers},
            "per_round_ms": {k: [1e3 * t for t in v] for k, v in timed.per_round.items()},
            "fixed/auto": timed.ratio("fixed rules", "auto"),
        }
        print(f"{spec:>24}: step ms fixed rules {row['step_ms']['fixed rules']:.1f}, auto "
              f"{row['step_ms']['auto']:.1f}, fixed/auto {row['fixed/auto']:.3f}", flush=True)
        rows.append(row)
    return rows


def markdown(report: dict) -> str:
    lines = [
        f"# Dense convolution (stem) lowering benchmark ({report['backend']}: {report['device']})",
        "",
        f"jax {report['jax']}, {report['torch_note']}, float32, NHWC, SAME, 3x3 kernels; medians "
        f"of {report['rounds']} rounds x {report['calls']} calls; {host_memory_note(report)}; "
        f"{autotune_note(report)}. Command: `{report['command']}`.",
        "",
        "`fwd`: the forward; `stem`: forward + kernel gradient (a first layer); `fwd+bwd`: "
        "forward + input and kernel gradients (what `auto` measures). `candidates`: what `auto` "
        f"measures (\"patches\" only up to {PATCHES_MAX_DEPTH} patch channels, `9 * C`); `auto "
        "runs`: read from the jaxpr. Ratios above 1: the numerator is slower.",
        "",
        "| layer | candidates | auto runs | pass | xla ms | patches ms | auto ms | xla/patches | "
        "xla/auto | torch CL ms | auto/torch |",
        "|---" * 11 + "|",
    ]
    for row in report.get("layers", []):
        ms, r = row["ms"], row["ratios"]
        for p in PASSES:
            lines.append(
                f"| {row['label']} | {', '.join(row['candidates'])} | {row['auto_impl']} | {p} | "
                f"{fmt(ms[f'xla {p}'])} | {fmt(ms[f'patches {p}'])} | {fmt(ms[f'auto {p}'])} | "
                f"{fmt(r[f'xla/patches {p}'], 2, 'x')} | {fmt(r[f'xla/auto {p}'], 2, 'x')} | "
                f"{fmt(ms.get(f'torch CL {p}'))} | {fmt(r[f'auto/torch {p}'], 2, 'x')} |"
            )
    if report.get("steps"):
        lines += [
            "",
            f"## A user's training step (batch {report['steps'][0]['batch']}): fixed rules vs `auto`",
            "",
            "The plain `nnx.jit` step of `experiments/_timing.py` (`plain_trainer`), CIFAR variant, "
            "traced with `jaxsep.autotune(False)` (\"xla\" stems) and with `auto` measuring, timed "
            "side by side; fixed/auto above 1: `auto` is faster.",
            "",
            "| model | width | fixed rules ms | auto ms | fixed/auto | per round fixed/auto |",
            "|---|---|---|---|---|---|",
        ]
        for row in report["steps"]:
            per = [f"{a / b:.2f}" for a, b in zip(row["per_round_ms"]["fixed rules"],
                                                 row["per_round_ms"]["auto"])]
            lines.append(
                f"| {row['model']} | {row['width']} | {row['step_ms']['fixed rules']:.1f} | "
                f"{row['step_ms']['auto']:.1f} | {fmt(row['fixed/auto'], 3, 'x')} | "
                f"{', '.join(per)} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (1 with --quick)")
    parser.add_argument("--calls", type=int, default=None,
                        help="timed calls per block; default 5 (2 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="two tiny layers, 1 round of 2 calls: a smoke test")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    parser.add_argument("--models", nargs="*", default=None, metavar="NAME:WIDTH",
                        help="time only the training steps, of these models (default "
                        f"{' '.join(STEP_MODELS)}); without the flag: layers, then steps")
    parser.add_argument("--no-steps", action="store_true", help="skip the training steps")
    parser.add_argument("--step-rounds", type=int, default=None,
                        help="rounds of the training steps; default 8 (1 with --quick)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default: experiments/results; --quick writes "
                        "only with --out)")
    add_device_flag(parser)
    add_host_memory_flag(parser)
    args = parser.parse_args(argv)
    memory = apply_host_memory(args)  # before the first JAX computation
    backend = select_device(args)
    out_dir = args.out if args.out is not None else (None if args.quick else RESULTS)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 5)
    calls = args.calls if args.calls is not None else (2 if args.quick else 5)
    torch_device, header = report_header(backend, args.no_torch)
    report = {
        **header,
        "rounds": rounds,
        "calls": calls,
        **memory,
        **autotune_fields(),
        "command": "python experiments/bench_conv.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "layers": [],
    }
    layer_cases = [] if args.models is not None else (QUICK_CASES if args.quick else CASES)
    for case in layer_cases:
        row = bench_case(case, rounds=rounds, calls=calls, torch_device=torch_device)
        report["layers"].append(row)
        ms = row["ms"]
        print(f"{case.label:>36}: auto runs {row['auto_impl']}; "
              + "; ".join(f"{p} xla {ms[f'xla {p}']:.2f} patches {ms[f'patches {p}']:.2f}"
                          + (f" torch {ms[f'torch CL {p}']:.2f}" if torch_device else "")
                          for p in PASSES) + " ms", flush=True)
    if not args.no_steps:
        models = args.models or (QUICK_STEP_MODELS if args.quick else STEP_MODELS)
        step_rounds = args.step_rounds or (1 if args.quick else 8)
        report["steps"] = bench_steps(models, batch=2 if args.quick else 128,
                                      rounds=step_rounds, calls=2 if args.quick else 4)
    table = markdown(report)
    if out_dir is not None:
        stem = f"bench_conv_{backend}" + ("_steps" if args.models is not None else "")
        write_report(out_dir, stem, report, table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
