"""Benchmark of the grouped-convolution lowerings: forward and forward+backward, per layer.

Measures, on the default JAX backend (or ``--device``), ``jaxsep.grouped_conv`` at batch 128
(float32, NHWC, SAME) with each lowering: ``impl="xla"`` (``lax.conv_general_dilated`` with
``feature_group_count=G``), ``"split"`` (G dense convolutions or matrix products on channel
slices), ``"taps"`` (a sum of ``C // G`` depthwise taps calls; not run when ``C // G > 16``,
since its program unrolls one call per channel of a group) and ``"auto"`` (measured once per
shape unless ``JAXSEP_AUTOTUNE=0``; ``rule`` is what the fixed rule,
``jaxsep.ops.choose_grouped_impl(C, G)``, picks); and PyTorch's channels-last
``conv2d(groups=G)`` when torch is importable (on the CPU, or on CUDA when JAX runs on a GPU
and torch sees one; else the torch columns read "n/a"). The question it answers: does
``auto`` run the fastest lowering, and never a slower one than the fixed rule?

Layers:

* the 3x3 grouped ``C -> C`` layers of ``mobilenet_v1(conv="grouped", groups=G, width=0.5,
  variant="cifar")`` (the groups experiment, ``experiments/groups.toml``) for G = 2, 4, 8, 16,
  at a representative subset of the layer table (the first layer at 32x32, the first
  stride-1 layer at 16x16, 8x8 and 4x4, and the 4x4 stride-2 layer), so that ``C // G`` runs
  from 1 to 128;
* the grouped 1x1 layers of a stride-1 ShuffleNet v1 unit of stage 2 (CIFAR variant, 16x16,
  width 1) for g = 3 and 8: the ``C -> C / 4`` bottleneck and the ``C / 4 -> C`` expansion.

Method (see docs/performance.md), as in ``bench_ops.py``: every implementation of one layer runs in
the same process, in blocks of calls (the first call of each block dropped), the order of
implementations rotated between rounds; the figure is the median over rounds of each round's
median. Compilation (``jit(...).lower(...).compile()``) is timed on its own, before timing.
Ratios are computed per round, then the median taken. Forward+backward is the gradient with
respect to both ``x`` and the kernel of ``vdot(output, cotangent)`` for a fixed random
cotangent. Run it on an otherwise idle machine.

    python experiments/bench_grouped.py                # full run, writes results/bench_grouped_<backend>.{json,md}
    python experiments/bench_grouped.py --device gpu   # the same on a GPU
    python experiments/bench_grouped.py --quick --no-torch --out /tmp/bg   # smoke test

Results: ``experiments/results/bench_grouped_<backend>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

import jaxsep
from jaxsep import ops
from jaxsep._lowering import GROUPED_TAPS_MAX_WIDTH as TAPS_MAX_WIDTH
from jaxsep.models.mobilenet_v1 import LAYERS, STEM_CHANNELS, v1_channels
from jaxsep.models.shufflenet import STAGE_CHANNELS, STAGE_REPEATS

from _timing import (
    Rounds,
    compile_timed,
    torch_conv_calls,
    report_header,
    write_report,
    add_device_flag,
    select_device,
    add_host_memory_flag,
    apply_host_memory,
    host_memory_note,
    autotune_fields,
    autotune_note,
    lowering_of,
    fmt,
    add_write_each_flag,
    partial_note,
)

RESULTS = Path(__file__).resolve().parent / "results"

LOWERINGS = ("xla", "split", "taps")  # the candidates "fastest" and "auto" choose among
MOBILENET_WIDTH = 0.5  # the cpu preset of experiments/groups.toml
MOBILENET_GROUPS = (2, 4, 8, 16)
# (input H, stride) of the MobileNetV1-CIFAR grouped layers measured: the first layer with each
# of these is taken from the layer table.
MOBILENET_PICKS = ((32, 1), (16, 1), (8, 1), (4, 1), (4, 2))
SHUFFLENET_GROUPS = (3, 8)
SHUFFLENET_SIZE = 16  # stage 2 of the CIFAR variant (stem stride 1, first unit stride 2)


@dataclasses.dataclass(frozen=True)
class Case:
    """One grouped convolution: ``(N, H, W, C) -> (N, H / stride, W / stride, O)``, with
    kernel ``(K, K, C // G, O)``; ``in_model`` counts the layers of this shape in the model."""

    family: str
    height: int
    width: int
    channels: int
    out_channels: int
    window: int
    stride: int
    groups: int
    in_model: int = 1

    @property
    def group_width(self) -> int:
        return self.channels // self.groups

    @property
    def label(self) -> str:
        out = "" if self.out_channels == self.channels else f"->{self.out_channels}"
        return (
            f"{self.family} {self.height}x{self.width}x{self.channels}{out} "
            f"{self.window}x{self.window} s{self.stride}"
        )


def mobilenet_cases(groups=MOBILENET_GROUPS, picks=MOBILENET_PICKS) -> list[Case]:
    """The picked grouped 3x3 layers of ``mobilenet_v1(conv="grouped", variant="cifar")`` at
    width 0.5, derived from its layer table (the stem keeps 32x32 in the CIFAR variant)."""
    size, features = 32, v1_channels(STEM_CHANNELS, MOBILENET_WIDTH)
    layers = []  # (input size, C, stride) of each grouped layer, in order
    for out, stride in LAYERS:
        layers.append((size, features, stride))
        size, features = -(-size // stride), v1_channels(out, MOBILENET_WIDTH)
    cases = []
    for pick in picks:
        size, channels, stride = next(layer for layer in layers if layer[::2] == pick)
        count = layers.count((size, channels, stride))
        cases += [
            Case("mbv1", size, size, channels, channels, 3, stride, g, count) for g in groups
        ]
    return cases


def shufflenet_cases(groups=SHUFFLENET_GROUPS) -> list[Case]:
    """The two grouped 1x1 layers of a stride-1 ShuffleNet v1 unit of stage 2 (width 1): the
    bottleneck ``C -> C / 4`` and the expansion ``C / 4 -> C``."""
    repeats = STAGE_REPEATS[0] - 1  # stride-1 units of the stage
    cases = []
    for g in groups:
        c = STAGE_CHANNELS[g][0]
        s = SHUFFLENET_SIZE
        cases += [
            Case(f"shuffle g{g}", s, s, c, c // 4, 1, 1, g, repeats),
            Case(f"shuffle g{g}", s, s, c // 4, c, 1, 1, g, repeats),
        ]
    return cases


QUICK_CASES = [
    Case("mbv1", 8, 8, 16, 16, 3, 1, 4),
    Case("shuffle g2", 8, 8, 16, 4, 1, 1, 2),
]


def _jax_fns(impl: str, case: Case):
    def forward(x, k):
        return jaxsep.grouped_conv(x, k, case.groups, strides=case.stride, impl=impl)

    def loss(x, k, ct):
        return jnp.vdot(forward(x, k), ct)

    return jax.jit(forward), jax.jit(jax.grad(loss, argnums=(0, 1)))


def _torch_fns(case: Case, batch: int, device: str):
    import torch

    x = torch.randn(batch, case.channels, case.height, case.width, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    k = torch.randn(case.out_channels, case.group_width, case.window, case.window, device=device)
    calls = torch_conv_calls(torch.nn.functional.conv2d, x, k, device, stride=case.stride,
                             padding=case.window // 2, groups=case.groups)
    return calls["fwd"], calls["fwd+bwd"]


def _verdict(picked: str, fastest: str, slowdown: float | None) -> str:
    """Whether ``auto``'s pick was the fastest lowering (forward+backward)."""
    if picked == fastest:
        return f"yes: ran {picked}, the fastest"
    tie = slowdown is not None and slowdown < 1.05
    return (
        f"{'tie' if tie else 'no'}: ran {picked}, {fastest} is {slowdown:.2f}x faster"
        + (" (within 5%)" if tie else "")
    )


def bench_case(case: Case, *, batch: int, rounds: int, calls: int, torch_device):
    key = jax.random.key(0)
    shape = (batch, case.height, case.width, case.channels)
    kernel_shape = (case.window, case.window, case.group_width, case.out_channels)
    x = jax.random.normal(key, shape, jnp.float32)
    k = jax.random.normal(jax.random.fold_in(key, 1), kernel_shape, jnp.float32)
    out_shape = jax.eval_shape(
        lambda x, k: jaxsep.grouped_conv(x, k, case.groups, strides=case.stride), x, k
    ).shape
    ct = jax.random.normal(jax.random.fold_in(key, 2), out_shape, jnp.float32)

    impls = [i for i in LOWERINGS if i != "taps" or case.group_width <= TAPS_MAX_WIDTH]
    calls_by_name = {}
    compile_s = {}
    for impl in impls + ["auto"]:
        fwd, fwd_bwd = _jax_fns(impl, case)
        fwd, compile_s[f"{impl} fwd"] = compile_timed(fwd, x, k)
        fwd_bwd, compile_s[f"{impl} fwd+bwd"] = compile_timed(fwd_bwd, x, k, ct)
        calls_by_name[f"{impl} fwd"] = lambda f=fwd: f(x, k).block_until_ready()
        calls_by_name[f"{impl} fwd+bwd"] = lambda f=fwd_bwd: jax.block_until_ready(f(x, k, ct))
    if torch_device:
        t_fwd, t_fwd_bwd = _torch_fns(case, batch, torch_device)
        calls_by_name["torch CL fwd"] = t_fwd
        calls_by_name["torch CL fwd+bwd"] = t_fwd_bwd

    timed = Rounds(calls_by_name).run(rounds, calls)
    ratio = timed.ratio
    ms = {name: 1e3 * timed.seconds(name) for name in calls_by_name}
    rule = ops.choose_grouped_impl(case.channels, case.groups)  # the fixed rule
    picked = lowering_of(_jax_fns("auto", case)[0], x, k)  # what auto ran
    fastest, picked_vs_fastest, auto_vs_rule = {}, {}, {}
    for mode in ("fwd", "fwd+bwd"):
        fastest[mode] = min(impls, key=lambda i: ms[f"{i} {mode}"])
        # the picked lowering's own timing when measured, else auto's (which runs it)
        measured = picked if picked in impls else "auto"
        picked_vs_fastest[mode] = ratio(f"{measured} {mode}", f"{fastest[mode]} {mode}")
        # 1 by definition where auto ran the rule's lowering (the same program)
        auto_vs_rule[mode] = 1.0 if picked == rule else ratio(f"auto {mode}", f"{rule} {mode}")
    return {
        "layer": case.label,
        **dataclasses.asdict(case),
        "group_width": case.group_width,
        "shape": list(shape),
        "kernel_shape": list(kernel_shape),
        "skipped": [i for i in LOWERINGS if i not in impls],
        "auto_impl": picked,
        "rule_impl": rule,
        "ms": ms,
        "compile_s": compile_s,
        "speedup": {
            "xla/auto fwd": ratio("xla fwd", "auto fwd"),
            "xla/auto fwd+bwd": ratio("xla fwd+bwd", "auto fwd+bwd"),
            "auto/torch fwd": ratio("auto fwd", "torch CL fwd"),
            "auto/torch fwd+bwd": ratio("auto fwd+bwd", "torch CL fwd+bwd"),
        },
        "fastest": fastest,
        "picked/fastest": picked_vs_fastest,
        "auto/rule": auto_vs_rule,
        "verdict": _verdict(picked, fastest["fwd+bwd"], picked_vs_fastest["fwd+bwd"]),
    }


def _table(report, mode: str) -> list[str]:
    lines = [
        "| layer | G | C/G | in model | xla ms | split ms | taps ms | auto ms | auto runs | "
        "rule | auto/rule | xla/auto | fastest | torch CL ms | auto/torch |",
        "|---" * 15 + "|",
    ]
    for row in report["layers"]:
        ms, sp = row["ms"], row["speedup"]
        taps = "skipped" if "taps" in row["skipped"] else fmt(ms[f"taps {mode}"])
        lines.append(
            f"| {row['layer']} | {row['groups']} | {row['group_width']} | {row['in_model']} | "
            f"{fmt(ms[f'xla {mode}'])} | {fmt(ms[f'split {mode}'])} | {taps} | "
            f"{fmt(ms[f'auto {mode}'])} | {row['auto_impl']} | {row['rule_impl']} | "
            f"{fmt(row['auto/rule'][mode], 2, 'x')} | {fmt(sp[f'xla/auto {mode}'], 1, 'x')} | "
            f"{row['fastest'][mode]} | {fmt(ms.get(f'torch CL {mode}'))} | "
            f"{fmt(sp[f'auto/torch {mode}'], 2, 'x')} |"
        )
    return lines


def markdown(report) -> str:
    totals = report["totals"]
    rows = report["layers"]
    lines = [
        f"# Grouped convolution lowering benchmark ({report['backend']}: {report['device']})",
        "",
        partial_note(report) +
        f"jax {report['jax']}, {report['torch_note']}, batch "
        f"{report['batch']}, float32, NHWC, SAME; medians of {report['rounds']} rounds x "
        f"{report['calls']} calls; {host_memory_note(report)}; {autotune_note(report)}. "
        f"Command: `{report['command']}`.",
        "",
        "`auto runs` is the lowering `impl=\"auto\"` ran (read from the jaxpr); `rule` the one "
        "the fixed rule `choose_grouped_impl(C, G)` picks (`JAXSEP_AUTOTUNE=0`; on the CPU: "
        f"`taps` when C/G <= {report['taps_max_group_width']}, else `split`); `auto/rule` above 1 "
        "means auto ran slower than the rule's lowering (1 where both are the same lowering); "
        f"`fastest` is the fastest of xla, split and taps. `taps` is skipped when C/G > "
        f"{TAPS_MAX_WIDTH} (its program unrolls one depthwise call per channel of a group). "
        "`in model` counts the layers of that shape in the model. mbv1: the grouped 3x3 layers of "
        f"`mobilenet_v1(conv=\"grouped\", width={MOBILENET_WIDTH}, variant=\"cifar\")`; "
        "shuffle: the grouped 1x1 layers of a stride-1 ShuffleNet v1 unit (stage 2, CIFAR).",
        "",
        "## Forward",
        "",
        *_table(report, "fwd"),
        "",
        "## Forward + backward (gradients w.r.t. x and the kernel)",
        "",
        *_table(report, "fwd+bwd"),
        "",
        "## Does `auto` run the fastest lowering? (forward+backward)",
        "",
        *(f"- {row['layer']}, G={row['groups']} (C/G={row['group_width']}): {row['verdict']}"
          for row in rows),
        "",
        f"`auto` ran the fastest lowering (forward+backward) for {totals['auto_fastest']} of "
        f"{len(rows)} layers; slower than the rule's lowering by over 5% on "
        f"{totals['auto_slower_than_rule']}.",
        "",
        "Whole set of layers (sum of per-layer medians): "
        f"xla/auto forward {fmt(totals['xla/auto fwd'], 1, 'x')}, forward+backward "
        f"{fmt(totals['xla/auto fwd+bwd'], 1, 'x')}; auto / the fastest lowering of each layer "
        f"forward {fmt(totals['auto/fastest fwd'], 2, 'x')}, forward+backward "
        f"{fmt(totals['auto/fastest fwd+bwd'], 2, 'x')}; auto/rule forward+backward "
        f"{fmt(totals['auto/rule fwd+bwd'], 2, 'x')}; auto/torch forward "
        f"{fmt(totals['auto/torch fwd'], 2, 'x')}, forward+backward "
        f"{fmt(totals['auto/torch fwd+bwd'], 2, 'x')} (above 1: slower than torch).",
        "",
        "Compile time over the set (s, forward+backward): "
        + ", ".join(f"{impl} {s:.1f}" for impl, s in totals["compile_s fwd+bwd"].items())
        + (" (taps: only the layers it ran)." if any(r["skipped"] for r in rows) else ".")
        + " auto's includes any first-time measurement.",
    ]
    return "\n".join(lines) + "\n"


def _totals(rows, has_torch: bool) -> dict:
    def total(name):
        return sum(r["ms"][name] for r in rows)

    def total_fastest(mode):
        return sum(r["ms"][f"{r['fastest'][mode]} {mode}"] for r in rows)

    # auto's own time where it ran the rule's lowering (the same program)
    rule_fwd_bwd = sum(
        r["ms"][f"{'auto' if r['auto_impl'] == r['rule_impl'] else r['rule_impl']} fwd+bwd"]
        for r in rows
    )
    return {
        "xla/auto fwd": total("xla fwd") / total("auto fwd"),
        "xla/auto fwd+bwd": total("xla fwd+bwd") / total("auto fwd+bwd"),
        "auto/fastest fwd": total("auto fwd") / total_fastest("fwd"),
        "auto/fastest fwd+bwd": total("auto fwd+bwd") / total_fastest("fwd+bwd"),
        "auto/rule fwd+bwd": total("auto fwd+bwd") / rule_fwd_bwd,
        "auto/torch fwd": total("auto fwd") / total("torch CL fwd") if has_torch else None,
        "auto/torch fwd+bwd": (
            total("auto fwd+bwd") / total("torch CL fwd+bwd") if has_torch else None
        ),
        "auto_fastest": sum(r["auto_impl"] == r["fastest"]["fwd+bwd"] for r in rows),
        "auto_slower_than_rule": sum(r["auto/rule"]["fwd+bwd"] > 1.05 for r in rows),
        "compile_s fwd+bwd": {
            impl: sum(r["compile_s"].get(f"{impl} fwd+bwd", 0.0) for r in rows)
            for impl in LOWERINGS + ("auto",)
        },
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=None, help="default 128 (2 with --quick)")
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (1 with --quick)")
    parser.add_argument("--calls", type=int, default=None,
                        help="timed calls per block; default 5 (2 with --quick)")
    parser.add_argument("--groups", type=int, nargs="+", default=list(MOBILENET_GROUPS),
                        help="G of the MobileNetV1 layers (default 2 4 8 16)")
    parser.add_argument("--no-shufflenet", action="store_true",
                        help="skip the ShuffleNet 1x1 layers")
    parser.add_argument("--quick", action="store_true",
                        help="two tiny layers, batch 2, 1 round of 2 calls: a smoke test")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default: experiments/results; --quick writes "
                        "only with --out)")
    add_device_flag(parser)
    add_host_memory_flag(parser)
    add_write_each_flag(parser)
    args = parser.parse_args(argv)
    memory = apply_host_memory(args)  # before the first JAX computation
    backend = select_device(args)
    out_dir = args.out if args.out is not None else (None if args.quick else RESULTS)

    def default(value, full, quick):
        return value if value is not None else (quick if args.quick else full)

    batch = default(args.batch, 128, 2)
    rounds = default(args.rounds, 5, 1)
    calls = default(args.calls, 5, 2)
    if args.quick:
        cases = QUICK_CASES
    else:
        cases = mobilenet_cases(tuple(args.groups))
        cases += [] if args.no_shufflenet else shufflenet_cases()
    torch_device, header = report_header(backend, args.no_torch)
    report = {
        **header,
        "batch": batch,
        "rounds": rounds,
        "calls": calls,
        **memory,
        **autotune_fields(),
        "taps_max_group_width": ops._TAPS_MAX_GROUP_WIDTH,
        "command": "python experiments/bench_grouped.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "layers": [],
    }
    for case in cases:
        row = bench_case(case, batch=batch, rounds=rounds, calls=calls, torch_device=torch_device)
        report["layers"].append(row)
        ms = row["ms"]
        print(
            f"{row['layer']:>32} G={case.groups:<2} C/G={case.group_width:<3}: fwd / fwd+bwd ms "
            + ", ".join(f"{i} {ms[f'{i} fwd']:.2f} / {ms[f'{i} fwd+bwd']:.2f}"
                        for i in LOWERINGS + ("auto",) if f"{i} fwd" in ms)
            + (f", torch CL {ms['torch CL fwd']:.2f} / {ms['torch CL fwd+bwd']:.2f}"
               if torch_device else "")
            + f"; {row['verdict']}",
            flush=True,
        )
        if args.write_each and out_dir is not None and len(report["layers"]) < len(cases):
            report["partial"] = f"{len(report['layers'])} of {len(cases)}"
            _save(report, out_dir, torch_device is not None)
    report.pop("partial", None)
    print(_save(report, out_dir, torch_device is not None))
    return 0


def _save(report, out_dir, has_torch: bool) -> str:
    """Adds the totals, writes the report when ``out_dir`` is set, returns the table."""
    report["totals"] = _totals(report["layers"], has_torch)
    table = markdown(report)
    if out_dir is not None:
        write_report(out_dir, f"bench_grouped_{report['backend']}", report, table)
    return table


if __name__ == "__main__":
    raise SystemExit(main())
