"""Benchmark of the depthwise lowerings: forward and forward+backward, per layer.

Measures, on the default JAX backend (or ``--device``), for ``impl="xla"`` (grouped
``lax.conv_general_dilated``), ``impl="taps"`` and ``impl="auto"`` (measured once per shape
unless ``JAXSEP_AUTOTUNE=0``; ``auto/rule`` compares it with the lowering the fixed rule
picks); a streaming copy (``1.5 * x``) of the same input as the bandwidth yardstick; and
PyTorch's depthwise ``conv2d(groups=C)`` on channels-last tensors (``conv1d`` on ``NCW`` for
1-D) when torch is importable (on the CPU, or on CUDA when JAX runs on a GPU and torch sees
one; else the torch columns read "n/a"). Layers (``--layers``):

* ``mobilenet``: the depthwise layers of a CIFAR-10 MobileNetV1 at ``--batch`` 128 (NHWC,
  3x3, SAME) and the 4x4x1024 layer of the issue that asked for this benchmark;
* ``reported``: two shapes users report slow in JAX on GPU: 1-D channels-first B=32, C=512,
  T=1024, K=5 (jax-ml/jax#13800: a backward as slow as a dense convolution) and 2-D B=128,
  124x124, C=256, 3x3 (google/flax#4207). Slow on the CPU (XLA's backward there takes
  minutes), so the CPU default is ``mobilenet`` only; elsewhere the default is ``all``.

Method (see docs/performance.md): every implementation of one layer runs in the same process, in
blocks of calls (the first call of each block dropped), the order of implementations rotated
between rounds; the figure is the median over rounds of each round's median. Compilation is
done before timing. Ratios are computed per round, then the median taken. "fwd+bwd" returns
the output and both gradients (input and kernel) for a given output cotangent, in JAX and torch.

The JAX rows are compiled as a plain ``jax.jit`` compiles them (XLA's default options). Where
``jaxsep.compiler_options()`` has options for the backend (the CPU: 512-bit vectors), ``auto``
is measured a second time compiled with them, as ``auto+opts`` (what ``jaxsep train`` and a
user who passes the options get); ``--default-compiler-options`` skips that second row.

    python experiments/bench_ops.py                # full run, writes results/bench_ops_<backend>.{json,md}
    python experiments/bench_ops.py --device gpu   # on a GPU: both layer sets
    python experiments/bench_ops.py --quick        # tiny smoke run, writes nothing unless --out

Results: ``experiments/results/bench_ops_<backend>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxsep
from jaxsep._lowering import choose_depthwise_impl

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
    add_compiler_options_flag,
    compiler_options_from,
    compiler_options_text,
    autotune_fields,
    autotune_note,
    lowering_of,
    fmt,
    add_write_each_flag,
    partial_note,
)

RESULTS = Path(__file__).resolve().parent / "results"

# (H, W, C, stride): the depthwise layers of jaxsep's CIFAR MobileNetV1 at width 1.0, plus the
# 4x4x1024 layer named in the issue that asked for this benchmark.
LAYERS = [
    (32, 32, 32, 1),
    (32, 32, 64, 2),
    (16, 16, 128, 1),
    (16, 16, 128, 2),
    (8, 8, 256, 1),
    (8, 8, 256, 2),
    (4, 4, 512, 1),
    (4, 4, 512, 2),
    (4, 4, 1024, 1),
]
QUICK_LAYERS = [(8, 8, 16, 1), (8, 8, 16, 2)]
LAYER_SETS = ("mobilenet", "reported", "all")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One depthwise convolution (SAME padding): ``x`` of ``x_shape`` in ``data_format``,
    kernel ``(*window, 1, C)``."""

    label: str
    x_shape: tuple[int, ...]
    window: tuple[int, ...]
    stride: int
    data_format: str

    @property
    def channels(self) -> int:
        return self.x_shape[-1] if self.data_format.endswith("C") else self.x_shape[1]

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        return (*self.window, 1, self.channels)


def mobilenet_layer(batch: int, h: int, w: int, c: int, stride: int) -> Layer:
    return Layer(f"{h}x{w}x{c} s{stride}", (batch, h, w, c), (3, 3), stride, "NHWC")


# Shapes users report slow in JAX on GPU (see the module docstring), at their own batch sizes.
REPORTED = [
    Layer("1-D NCW B32 512x1024 k5", (32, 512, 1024), (5,), 1, "NCW"),
    Layer("2-D B128 124x124x256", (128, 124, 124, 256), (3, 3), 1, "NHWC"),
]
QUICK_REPORTED = [Layer("1-D NCW B2 16x32 k5", (2, 16, 32), (5,), 1, "NCW")]


def select_layers(which: str | None, backend: str, batch: int, quick: bool) -> list[Layer]:
    """The layers of ``--layers`` (default: "mobilenet" on the CPU, "all" elsewhere)."""
    which = which or ("mobilenet" if backend == "cpu" else "all")
    mobilenet = [mobilenet_layer(batch, *shape) for shape in (QUICK_LAYERS if quick else LAYERS)]
    reported = QUICK_REPORTED if quick else REPORTED
    return {"mobilenet": mobilenet, "reported": reported, "all": mobilenet + reported}[which]


def _jax_fns(impl: str, layer: Layer):
    def forward(x, k):
        return jaxsep.depthwise_conv(
            x, k, strides=layer.stride, data_format=layer.data_format, impl=impl
        )

    def forward_backward(x, k, ct):
        # The output is returned with the gradients, as a training step keeps it (torch's
        # forward_backward computes it too): jax.grad of a loss alone would let XLA drop the
        # forward pass, since the gradients of this bilinear op do not need it.
        out, vjp = jax.vjp(forward, x, k)
        return out, vjp(ct)

    return jax.jit(forward), jax.jit(forward_backward)


def _torch_fns(layer: Layer, device):
    """Channels-last ``conv2d`` for 2-D layers, ``conv1d`` on NCW for 1-D ones."""
    import torch

    c, window = layer.channels, layer.window
    if len(window) == 1:
        conv = torch.nn.functional.conv1d
        n, _, t = layer.x_shape
        x = torch.randn(n, c, t, device=device)
    else:
        conv = torch.nn.functional.conv2d
        n, h, w, _ = layer.x_shape
        x = torch.randn(n, c, h, w, device=device).contiguous(memory_format=torch.channels_last)
    k = torch.randn(c, 1, *window, device=device)
    calls = torch_conv_calls(conv, x, k, device, stride=layer.stride, padding=window[0] // 2,
                             groups=c)
    return calls["fwd"], calls["fwd+bwd"]


def bench_layer(layer: Layer, *, rounds, calls, torch_device, compiler_options=None):
    key = jax.random.key(0)
    shape = layer.x_shape
    x = jax.random.normal(key, shape, jnp.float32)
    k = jax.random.normal(jax.random.fold_in(key, 1), layer.kernel_shape, jnp.float32)
    auto_forward = _jax_fns("auto", layer)[0]
    out_shape = jax.eval_shape(auto_forward, x, k).shape
    ct = jax.random.normal(jax.random.fold_in(key, 2), out_shape, jnp.float32)

    calls_by_name = {}
    compile_s = {}
    for impl in ("xla", "taps", "auto"):
        fwd, fwd_bwd = _jax_fns(impl, layer)
        fwd, compile_s[f"{impl} fwd"] = compile_timed(fwd, x, k)
        fwd_bwd, compile_s[f"{impl} fwd+bwd"] = compile_timed(fwd_bwd, x, k, ct)
        calls_by_name[f"{impl} fwd"] = lambda f=fwd: f(x, k).block_until_ready()
        calls_by_name[f"{impl} fwd+bwd"] = lambda f=fwd_bwd: jax.block_until_ready(f(x, k, ct))
    if compiler_options:
        fwd, fwd_bwd = _jax_fns("auto", layer)
        fwd, compile_s["auto+opts fwd"] = compile_timed(fwd, x, k, compiler_options=compiler_options)
        fwd_bwd, compile_s["auto+opts fwd+bwd"] = compile_timed(
            fwd_bwd, x, k, ct, compiler_options=compiler_options
        )
        calls_by_name["auto+opts fwd"] = lambda f=fwd: f(x, k).block_until_ready()
        calls_by_name["auto+opts fwd+bwd"] = lambda f=fwd_bwd: jax.block_until_ready(f(x, k, ct))
    copy, _ = compile_timed(jax.jit(lambda x: x * 1.5), x)
    calls_by_name["copy"] = lambda: copy(x).block_until_ready()
    if torch_device:
        t_fwd, t_fwd_bwd = _torch_fns(layer, torch_device)
        calls_by_name["torch CL fwd"] = t_fwd
        calls_by_name["torch CL fwd+bwd"] = t_fwd_bwd

    timed = Rounds(calls_by_name).run(rounds, calls)
    ratio = timed.ratio
    ms = {name: 1e3 * timed.seconds(name) for name in calls_by_name}
    io_bytes = 4 * (int(np.prod(shape)) + int(np.prod(out_shape)))
    copy_bytes = 4 * 2 * int(np.prod(shape))
    bandwidth = {
        "auto fwd GB/s": io_bytes / (ms["auto fwd"] * 1e-3) / 1e9,
        "copy GB/s": copy_bytes / (ms["copy"] * 1e-3) / 1e9,
    }
    bandwidth["auto fwd / copy bandwidth"] = bandwidth["auto fwd GB/s"] / bandwidth["copy GB/s"]
    rule = choose_depthwise_impl(x)  # the fixed rule (no kernel: nothing to measure)
    auto_impl = lowering_of(auto_forward, x, k)
    same = auto_impl == rule
    return {
        "layer": layer.label,
        "shape": list(shape),
        "window": list(layer.window),
        "stride": layer.stride,
        "data_format": layer.data_format,
        "auto_impl": auto_impl,
        "rule_impl": rule,
        "ms": ms,
        "compile_s": compile_s,
        "speedup": {
            "xla/auto fwd": ratio("xla fwd", "auto fwd"),
            "xla/auto fwd+bwd": ratio("xla fwd+bwd", "auto fwd+bwd"),
            # the same program when measuring kept the rule's lowering: 1 by definition
            **{f"auto/rule {mode}": 1.0 if same else ratio(f"auto {mode}", f"{rule} {mode}")
               for mode in ("fwd", "fwd+bwd")},
            "auto/torch fwd": ratio("auto fwd", "torch CL fwd"),
            "auto/torch fwd+bwd": ratio("auto fwd+bwd", "torch CL fwd+bwd"),
            "auto+opts/torch fwd": ratio("auto+opts fwd", "torch CL fwd"),
            "auto+opts/torch fwd+bwd": ratio("auto+opts fwd+bwd", "torch CL fwd+bwd"),
        },
        "bandwidth": bandwidth,
    }


def markdown(report) -> str:
    has_opts = bool(report.get("compiler_options"))
    lines = [
        f"# Depthwise lowering benchmark ({report['backend']}: {report['device']})",
        "",
        partial_note(report) +
        f"jax {report['jax']}, {report['torch_note']}, float32, SAME padding; medians of "
        f"{report['rounds']} rounds x {report['calls']} calls; {host_memory_note(report)}; "
        f"{autotune_note(report)}. Command: `{report['command']}`.",
        "",
        "| layer | xla fwd ms | auto fwd ms | xla/auto fwd | xla fwd+bwd ms | auto fwd+bwd ms | "
        "xla/auto fwd+bwd | auto runs | rule | auto/rule fwd+bwd | auto GB/s | / copy GB/s |"
        " torch CL fwd ms | torch CL fwd+bwd ms | auto/torch fwd | auto/torch fwd+bwd |"
        + (" auto+opts fwd ms | auto+opts fwd+bwd ms | auto+opts/torch fwd | auto+opts/torch fwd+bwd |" if has_opts else ""),
        "|---" * (16 + (4 if has_opts else 0)) + "|",
    ]
    for row in report["layers"]:
        ms, sp, bw = row["ms"], row["speedup"], row["bandwidth"]
        line = (
            f"| {row['layer']} | {fmt(ms['xla fwd'])} | {fmt(ms['auto fwd'])} | "
            f"{fmt(sp['xla/auto fwd'], 1, 'x')} | {fmt(ms['xla fwd+bwd'])} | {fmt(ms['auto fwd+bwd'])} | "
            f"{fmt(sp['xla/auto fwd+bwd'], 1, 'x')} | {row['auto_impl']} | {row['rule_impl']} | "
            f"{fmt(sp['auto/rule fwd+bwd'], 2, 'x')} | {fmt(bw['auto fwd GB/s'], 1)} | "
            f"{fmt(bw['auto fwd / copy bandwidth'])} |"
            f" {fmt(ms.get('torch CL fwd'))} | {fmt(ms.get('torch CL fwd+bwd'))} | "
            f"{fmt(sp['auto/torch fwd'], 2, 'x')} | {fmt(sp['auto/torch fwd+bwd'], 2, 'x')} |"
        )
        if has_opts:
            line += (
                f" {fmt(ms.get('auto+opts fwd'))} | {fmt(ms.get('auto+opts fwd+bwd'))} | "
                f"{fmt(sp.get('auto+opts/torch fwd'), 2, 'x')} | {fmt(sp.get('auto+opts/torch fwd+bwd'), 2, 'x')} |"
            )
        lines.append(line)
    for name, group in report["totals"].items():
        lines += ["", _totals_text(name, group, report)]
    lines += [
        "",
        "`auto runs` is the lowering `impl=\"auto\"` ran (read from the jaxpr), `rule` the one "
        "the fixed rule picks (`JAXSEP_AUTOTUNE=0`); `auto/rule` above 1 means measuring chose "
        "worse than the rule (1 where both are the same lowering). `GB/s` is (input + output bytes) / time, `/ copy` divides it by "
        "the bandwidth of `1.5 * x` on the same input. torch runs channels-last `conv2d` (1-D "
        "layers: `conv1d` on NCW). The JAX columns are compiled with XLA's default options (a "
        "plain `jax.jit`)"
        + ("; `auto+opts` is `auto` compiled with `jaxsep.compiler_options()`, as `jaxsep train` "
           "compiles its step." if has_opts else "."),
    ]
    return "\n".join(lines) + "\n"


def _totals_text(name: str, t: dict, report) -> str:
    text = (
        f"{name} (sum of per-layer medians): xla/auto forward {fmt(t['xla/auto fwd'], 1, 'x')}, "
        f"forward+backward {fmt(t['xla/auto fwd+bwd'], 1, 'x')}; auto/rule forward+backward "
        f"{fmt(t['auto/rule fwd+bwd'], 2, 'x')}; auto/torch forward {fmt(t['auto/torch fwd'], 2, 'x')}, "
        f"forward+backward {fmt(t['auto/torch fwd+bwd'], 2, 'x')} (above 1: slower than torch)."
    )
    if t.get("auto+opts/torch fwd") is not None:
        text += (
            " Compiled with `jaxsep.compiler_options()` "
            f"({compiler_options_text(report['compiler_options'])}), auto/torch forward "
            f"{fmt(t['auto+opts/torch fwd'], 2, 'x')}, forward+backward {fmt(t['auto+opts/torch fwd+bwd'], 2, 'x')}."
        )
    return text


def totals(rows) -> dict:
    """Ratios of summed per-layer medians (None where a term is missing)."""

    def total(name):
        values = [r["ms"].get(name) for r in rows]
        return None if None in values else sum(values)

    def over(a, b):
        a, b = total(a) if isinstance(a, str) else a, total(b)
        return None if a is None or b is None else a / b

    rule_fwd_bwd = sum(  # auto's own time where it ran the rule's lowering
        r["ms"][f"{'auto' if r['auto_impl'] == r['rule_impl'] else r['rule_impl']} fwd+bwd"]
        for r in rows
    )
    return {
        "xla/auto fwd": over("xla fwd", "auto fwd"),
        "xla/auto fwd+bwd": over("xla fwd+bwd", "auto fwd+bwd"),
        "auto/rule fwd+bwd": total("auto fwd+bwd") / rule_fwd_bwd,
        "auto/torch fwd": over("auto fwd", "torch CL fwd"),
        "auto/torch fwd+bwd": over("auto fwd+bwd", "torch CL fwd+bwd"),
        "auto+opts/torch fwd": over("auto+opts fwd", "torch CL fwd"),
        "auto+opts/torch fwd+bwd": over("auto+opts fwd+bwd", "torch CL fwd+bwd"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128, help="batch of the mobilenet layers")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5, help="timed calls per block")
    parser.add_argument(
        "--layers", choices=LAYER_SETS, default=None,
        help="mobilenet: MobileNetV1-CIFAR's depthwise layers; reported: the two shapes users "
        "report slow on GPU (1-D NCW B=32 C=512 T=1024 K=5; 2-D B=128 124x124 C=256 3x3), slow "
        "on the CPU; all: both. Default: mobilenet on the CPU, all elsewhere",
    )
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes (batch 2, one tiny 1-D layer for 'reported'), for a smoke test")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: experiments/results; --quick writes only with --out)")
    add_device_flag(parser)
    add_host_memory_flag(parser)
    add_compiler_options_flag(parser)
    add_write_each_flag(parser)
    args = parser.parse_args(argv)
    memory = apply_host_memory(args)  # before the first JAX computation
    backend = select_device(args)
    out_dir = args.out if args.out is not None else (None if args.quick else RESULTS)

    batch = 2 if args.quick else args.batch
    layers = select_layers(args.layers, backend, batch, args.quick)
    torch_device, header = report_header(backend, args.no_torch)
    report = {
        **header,
        "batch": batch,
        "rounds": args.rounds,
        "calls": args.calls,
        **memory,
        **autotune_fields(),
        "compiler_options": compiler_options_from(args),
        "command": "python experiments/bench_ops.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "layers": [],
    }
    for layer in layers:
        row = bench_layer(layer, rounds=args.rounds, calls=args.calls, torch_device=torch_device,
                          compiler_options=report["compiler_options"])
        report["layers"].append(row)
        ms, sp = row["ms"], row["speedup"]
        print(
            f"{row['layer']:>24}: xla {ms['xla fwd']:8.2f} / {ms['xla fwd+bwd']:8.2f} ms, "
            f"auto ({row['auto_impl']}) {ms['auto fwd']:7.2f} / {ms['auto fwd+bwd']:7.2f} ms "
            f"({sp['xla/auto fwd']:.1f}x / {sp['xla/auto fwd+bwd']:.1f}x)"
            + (f", torch CL {ms['torch CL fwd']:.2f} / {ms['torch CL fwd+bwd']:.2f} ms" if torch_device else ""),
            flush=True,
        )
        if args.write_each and out_dir is not None and len(report["layers"]) < len(layers):
            report["partial"] = f"{len(report['layers'])} of {len(layers)}"
            _save(report, out_dir)
    report.pop("partial", None)
    print(_save(report, out_dir))
    return 0


def _save(report, out_dir) -> str:
    """Adds the totals, writes the report when ``out_dir`` is set, returns the table."""
    # one summary per layer set present (the MobileNet set is the target 3)
    reported = {layer.label for layer in REPORTED + QUICK_REPORTED}
    groups = {
        "MobileNetV1-CIFAR layers": [r for r in report["layers"] if r["layer"] not in reported],
        "Reported GPU shapes": [r for r in report["layers"] if r["layer"] in reported],
    }
    report["totals"] = {name: totals(rows) for name, rows in groups.items() if rows}
    table = markdown(report)
    if out_dir is not None:
        write_report(out_dir, f"bench_ops_{report['backend']}", report, table)
    return table


if __name__ == "__main__":
    raise SystemExit(main())
