"""Benchmark of the depthwise lowerings: forward and forward+backward, per layer.

Measures, on the default JAX backend, the depthwise layers of a CIFAR-10 MobileNetV1 at
batch 128 (NHWC, 3x3, SAME), for ``impl="xla"`` (grouped ``lax.conv_general_dilated``),
``impl="taps"`` and ``impl="auto"``; a streaming copy (``1.5 * x``) of the same input as the
bandwidth yardstick; and PyTorch's channels-last depthwise ``conv2d(groups=C)`` when torch is
importable (on the CPU, or on CUDA when JAX runs on a GPU and torch sees one).

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
    python experiments/bench_ops.py --quick        # tiny smoke run, writes nothing unless --out

Results: ``experiments/results/bench_ops_<backend>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxsep
from jaxsep._taps import choose_impl

from _timing import (
    device_description,
    Rounds,
    compile_timed,
    torch_device as find_torch_device,
    write_report,
    add_host_memory_flag,
    apply_host_memory,
    host_memory_note,
    add_compiler_options_flag,
    compiler_options_from,
    compiler_options_text,
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


def _jax_fns(impl: str, stride: int):
    def forward(x, k):
        return jaxsep.depthwise_conv(x, k, strides=stride, impl=impl)

    def forward_backward(x, k, ct):
        # The output is returned with the gradients, as a training step keeps it (torch's
        # forward_backward computes it too): jax.grad of a loss alone would let XLA drop the
        # forward pass, since the gradients of this bilinear op do not need it.
        out, vjp = jax.vjp(forward, x, k)
        return out, vjp(ct)

    return jax.jit(forward), jax.jit(forward_backward)


def _torch_fns(shape, stride, device):
    import torch

    n, h, w, c = shape
    x = torch.randn(n, c, h, w, device=device).contiguous(memory_format=torch.channels_last)
    k = torch.randn(c, 1, 3, 3, device=device)
    x.requires_grad_(True)
    k.requires_grad_(True)
    ct = torch.randn_like(torch.nn.functional.conv2d(x, k, stride=stride, padding=1, groups=c))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def forward():
        with torch.no_grad():
            torch.nn.functional.conv2d(x, k, stride=stride, padding=1, groups=c)
        sync()

    def forward_backward():
        y = torch.nn.functional.conv2d(x, k, stride=stride, padding=1, groups=c)
        gx, gk = torch.autograd.grad(y, (x, k), ct)
        sync()

    return forward, forward_backward


def bench_layer(shape, stride, *, rounds, calls, torch_device, compiler_options=None):
    key = jax.random.key(0)
    x = jax.random.normal(key, shape, jnp.float32)
    k = jax.random.normal(jax.random.fold_in(key, 1), (3, 3, 1, shape[-1]), jnp.float32)
    out_shape = jax.eval_shape(lambda x, k: jaxsep.depthwise_conv(x, k, strides=stride), x, k).shape
    ct = jax.random.normal(jax.random.fold_in(key, 2), out_shape, jnp.float32)

    calls_by_name = {}
    compile_s = {}
    for impl in ("xla", "taps", "auto"):
        fwd, fwd_bwd = _jax_fns(impl, stride)
        fwd, compile_s[f"{impl} fwd"] = compile_timed(fwd, x, k)
        fwd_bwd, compile_s[f"{impl} fwd+bwd"] = compile_timed(fwd_bwd, x, k, ct)
        calls_by_name[f"{impl} fwd"] = lambda f=fwd: f(x, k).block_until_ready()
        calls_by_name[f"{impl} fwd+bwd"] = lambda f=fwd_bwd: jax.block_until_ready(f(x, k, ct))
    if compiler_options:
        fwd, fwd_bwd = _jax_fns("auto", stride)
        fwd, compile_s["auto+opts fwd"] = compile_timed(fwd, x, k, compiler_options=compiler_options)
        fwd_bwd, compile_s["auto+opts fwd+bwd"] = compile_timed(
            fwd_bwd, x, k, ct, compiler_options=compiler_options
        )
        calls_by_name["auto+opts fwd"] = lambda f=fwd: f(x, k).block_until_ready()
        calls_by_name["auto+opts fwd+bwd"] = lambda f=fwd_bwd: jax.block_until_ready(f(x, k, ct))
    copy, _ = compile_timed(jax.jit(lambda x: x * 1.5), x)
    calls_by_name["copy"] = lambda: copy(x).block_until_ready()
    if torch_device:
        t_fwd, t_fwd_bwd = _torch_fns(shape, stride, torch_device)
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
    return {
        "layer": f"{shape[1]}x{shape[2]}x{shape[3]} s{stride}",
        "shape": list(shape),
        "stride": stride,
        "ms": ms,
        "compile_s": compile_s,
        "speedup": {
            "xla/auto fwd": ratio("xla fwd", "auto fwd"),
            "xla/auto fwd+bwd": ratio("xla fwd+bwd", "auto fwd+bwd"),
            "auto/torch fwd": ratio("auto fwd", "torch CL fwd"),
            "auto/torch fwd+bwd": ratio("auto fwd+bwd", "torch CL fwd+bwd"),
            "auto+opts/torch fwd": ratio("auto+opts fwd", "torch CL fwd"),
            "auto+opts/torch fwd+bwd": ratio("auto+opts fwd+bwd", "torch CL fwd+bwd"),
        },
        "bandwidth": bandwidth,
    }


def _fmt(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


def markdown(report) -> str:
    has_torch = report["torch"] is not None
    has_opts = bool(report.get("compiler_options")) and has_torch
    lines = [
        f"# Depthwise lowering benchmark ({report['backend']}: {report['device']})",
        "",
        f"jax {report['jax']}, torch {report['torch'] or 'not installed'}, batch {report['batch']}, "
        f"float32, NHWC, 3x3 SAME; medians of {report['rounds']} rounds x {report['calls']} calls; "
        f"{host_memory_note(report)}. "
        f"Command: `{report['command']}`.",
        "",
        "| layer | xla fwd ms | auto fwd ms | xla/auto fwd | xla fwd+bwd ms | auto fwd+bwd ms | "
        "xla/auto fwd+bwd | auto GB/s | / copy GB/s |"
        + (" torch CL fwd ms | torch CL fwd+bwd ms | auto/torch fwd | auto/torch fwd+bwd |" if has_torch else "")
        + (" auto+opts fwd ms | auto+opts fwd+bwd ms | auto+opts/torch fwd | auto+opts/torch fwd+bwd |" if has_opts else ""),
        "|---" * (9 + (4 if has_torch else 0) + (4 if has_opts else 0)) + "|",
    ]
    for row in report["layers"]:
        ms, sp, bw = row["ms"], row["speedup"], row["bandwidth"]
        line = (
            f"| {row['layer']} | {_fmt(ms['xla fwd'])} | {_fmt(ms['auto fwd'])} | "
            f"{_fmt(sp['xla/auto fwd'], 1)}x | {_fmt(ms['xla fwd+bwd'])} | {_fmt(ms['auto fwd+bwd'])} | "
            f"{_fmt(sp['xla/auto fwd+bwd'], 1)}x | {_fmt(bw['auto fwd GB/s'], 1)} | "
            f"{_fmt(bw['auto fwd / copy bandwidth'])} |"
        )
        if has_torch:
            line += (
                f" {_fmt(ms.get('torch CL fwd'))} | {_fmt(ms.get('torch CL fwd+bwd'))} | "
                f"{_fmt(sp['auto/torch fwd'])}x | {_fmt(sp['auto/torch fwd+bwd'])}x |"
            )
        if has_opts:
            line += (
                f" {_fmt(ms.get('auto+opts fwd'))} | {_fmt(ms.get('auto+opts fwd+bwd'))} | "
                f"{_fmt(sp.get('auto+opts/torch fwd'))}x | {_fmt(sp.get('auto+opts/torch fwd+bwd'))}x |"
            )
        lines.append(line)
    totals = report["totals"]
    lines += [
        "",
        "Whole set of layers (sum of per-layer medians): "
        f"xla/auto forward {totals['xla/auto fwd']:.1f}x, forward+backward "
        f"{totals['xla/auto fwd+bwd']:.1f}x"
        + (
            f"; auto/torch forward {totals['auto/torch fwd']:.2f}x, forward+backward "
            f"{totals['auto/torch fwd+bwd']:.2f}x (above 1: slower than torch)."
            if has_torch
            else "."
        )
        + (
            " Compiled with `jaxsep.compiler_options()` "
            f"({compiler_options_text(report['compiler_options'])}), auto/torch "
            f"forward {totals['auto+opts/torch fwd']:.2f}x, forward+backward "
            f"{totals['auto+opts/torch fwd+bwd']:.2f}x."
            if has_opts
            else ""
        ),
        "",
        "`auto` is the lowering `impl=\"auto\"` picks on this backend "
        f"(`{report['auto_impl']}`); `GB/s` is (input + output bytes) / time, `/ copy` divides it "
        "by the bandwidth of `1.5 * x` on the same input. The JAX columns are compiled with "
        "XLA's default options (a plain `jax.jit`)"
        + ("; `auto+opts` is `auto` compiled with `jaxsep.compiler_options()`, as `jaxsep train` "
           "compiles its step." if has_opts else "."),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5, help="timed calls per block")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, for a smoke test")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: experiments/results; --quick writes only with --out)")
    add_host_memory_flag(parser)
    add_compiler_options_flag(parser)
    args = parser.parse_args(argv)
    memory = apply_host_memory(args)  # before the first JAX computation

    layers = QUICK_LAYERS if args.quick else LAYERS
    batch = 2 if args.quick else args.batch
    torch_device, torch_version = (None, None) if args.no_torch else find_torch_device()
    if torch_device == "cpu":
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    x_probe = jnp.zeros((1, 4, 4, 2))
    report = {
        "backend": jax.default_backend(),
        "device": device_description(),
        "jax": jax.__version__,
        "torch": torch_version,
        "batch": batch,
        "rounds": args.rounds,
        "calls": args.calls,
        **memory,
        "compiler_options": compiler_options_from(args),
        "auto_impl": choose_impl(x_probe, None, None),
        "command": "python experiments/bench_ops.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "layers": [],
    }
    for h, w, c, s in layers:
        row = bench_layer((batch, h, w, c), s, rounds=args.rounds, calls=args.calls, torch_device=torch_device,
                          compiler_options=report["compiler_options"])
        report["layers"].append(row)
        ms, sp = row["ms"], row["speedup"]
        print(
            f"{row['layer']:>16}: xla {ms['xla fwd']:8.2f} / {ms['xla fwd+bwd']:8.2f} ms, "
            f"auto {ms['auto fwd']:7.2f} / {ms['auto fwd+bwd']:7.2f} ms "
            f"({sp['xla/auto fwd']:.1f}x / {sp['xla/auto fwd+bwd']:.1f}x)"
            + (f", torch CL {ms['torch CL fwd']:.2f} / {ms['torch CL fwd+bwd']:.2f} ms" if torch_device else ""),
            flush=True,
        )

    def total(name):
        return sum(r["ms"][name] for r in report["layers"]) if all(name in r["ms"] for r in report["layers"]) else None

    report["totals"] = {
        "xla/auto fwd": total("xla fwd") / total("auto fwd"),
        "xla/auto fwd+bwd": total("xla fwd+bwd") / total("auto fwd+bwd"),
        "auto/torch fwd": total("auto fwd") / total("torch CL fwd") if torch_device else None,
        "auto/torch fwd+bwd": total("auto fwd+bwd") / total("torch CL fwd+bwd") if torch_device else None,
    }
    if torch_device and report["compiler_options"]:
        report["totals"]["auto+opts/torch fwd"] = total("auto+opts fwd") / total("torch CL fwd")
        report["totals"]["auto+opts/torch fwd+bwd"] = total("auto+opts fwd+bwd") / total("torch CL fwd+bwd")
    table = markdown(report)
    print(table)
    out_dir = args.out if args.out is not None else (None if args.quick else RESULTS)
    if out_dir is not None:
        write_report(out_dir, f"bench_ops_{report['backend']}", report, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
