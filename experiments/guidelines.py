"""The four guidelines of ShuffleNet V2 (Ma et al., ECCV 2018, Tables 1-4), measured here.

ShuffleNet V2's Section 2 argues that multiply-adds do not predict speed, with four
microbenchmarks that hold FLOPs fixed while the shape varies. This script rebuilds them with
jaxsep ops (a plain ``jax.jit``, XLA's default compiler options, as a user writes it) and
times PyTorch's ``nn.Conv2d`` on channels-last tensors under ``torch.inference_mode()`` in the
same process. Forward only, as the paper measures inference speed.

* G1 (Table 1): 10 blocks of two 1x1 convolutions, ``c1 -> c2`` then ``c2 -> c1``, with
  ``c1:c2`` = 1:1, 1:2, 1:6, 1:12 at (nearly) equal FLOPs.
* G2 (Table 2): 10 1x1 group convolutions ``c -> c`` with g = 1, 2, 4, 8 at equal FLOPs
  (``jaxsep.grouped_conv``, ``impl="auto"``).
* G3 (Table 3): 10 blocks of 1, 2 or 4 1x1 convolutions ``c' -> c'`` in series, or in
  parallel on the same input with the branches summed, ``c'`` chosen so that every block has
  the 1-fragment's FLOPs (``c' = round(c / sqrt(k))``).
* G4 (Table 4): 10 ResNet bottleneck units (1x1 ``4c -> c``, 3x3 ``c -> c``, 1x1 ``c -> 4c``),
  with the ReLUs and the identity shortcut each on or off.

The paper's settings, taken from the source named at ``PAPER_SOURCE``: input 56x56 (Tables
1-3; Table 4 states none, 56 is used), each network stacked 10 times, and two columns of
channel counts: ``gpu`` (GTX 1080Ti, batch 8) and ``arm`` (Snapdragon 810, one thread,
batch 1); the batches are Figure 1's, which the tables do not restate. Each table has three
widths (x1, x2, x4: every channel count times 1, 2, 4). Where the paper leaves a choice
open, this script's choice is written at the code that makes it (no activations in G1-G3;
no biases; G3's parallel branches summed; G2's ``arm`` g=8 width rounded to a multiple of 8).

Each table runs all its rows, jaxsep and torch, in one :class:`_timing.Rounds` (see
docs/performance.md): a figure is the median over rounds, a ratio (a row's speed over the
table's first row's) the median of the per-round ratios. Both frameworks use every core (torch
threads set to the core count, XLA:CPU's default), unlike the paper's single ARM thread.

    python experiments/guidelines.py                        # writes results/guidelines_<backend>.{json,md,png}
    python experiments/guidelines.py --settings arm --scales 1 2   # a subset
    python experiments/guidelines.py --quick --no-torch --out /tmp/g   # smoke test

Results: ``experiments/results/guidelines_<backend>.json``, ``.md`` and (with matplotlib)
``.png``, one panel per guideline.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxsep
from jaxsep._io import atomic_write

from _timing import (
    device_description,
    Rounds,
    compile_timed,
    torch_yardstick,
    write_report,
    add_device_flag,
    select_device,
    add_host_memory_flag,
    apply_host_memory,
    host_memory_note,
    autotune_fields,
    autotune_note,
    fmt,
    add_write_each_flag,
    partial_note,
)

RESULTS = Path(__file__).resolve().parent / "results"
GUIDELINES = (1, 2, 3, 4)
SCALES = (1, 2, 4)
SIZE = 56  # input height and width of Tables 1-3
BLOCKS = 10  # every benchmark network stacks its block 10 times
QUICK = {"settings": ("arm",), "scales": (1,), "size": 8, "blocks": 2, "rounds": 1, "calls": 1}

# Source of every paper number below: N. Ma, X. Zhang, H.-T. Zheng, J. Sun, "ShuffleNet V2:
# Practical Guidelines for Efficient CNN Architecture Design", ECCV 2018, arXiv:1807.11164,
# Section 2 (Tables 1-4, their captions and text) and Figure 1's caption (batch sizes), read
# from a public bilingual (English/Chinese) markdown transcription of the arXiv text found by
# code search, not checked against the PDF. The transcription's table headers carry no units:
# the speeds are the paper's "higher is faster" figures; ratios within a column need no unit.
PAPER_SOURCE = ("Ma et al., ShuffleNet V2, ECCV 2018 (arXiv:1807.11164), Section 2, Tables 1-4; "
                "batches from Figure 1's caption; transcribed from a public markdown copy of the "
                "arXiv text, not checked against the PDF")
PAPER_UNITS = None  # not in the source used: missing
TITLES = {
    1: "G1 (Table 1): equal channel width minimizes memory access cost",
    2: "G2 (Table 2): excessive group convolution increases memory access cost",
    3: "G3 (Table 3): network fragmentation reduces the degree of parallelism",
    4: "G4 (Table 4): element-wise operations are non-negligible",
}
# The paper's speeds per row, at x1, x2, x4 (its "gpu" and "arm" columns; Tables 2-4 label
# the ARM columns "CPU").
PAPER = {
    1: {"gpu": [(1480, 723, 232), (1296, 586, 206), (876, 489, 189), (748, 392, 163)],
        "arm": [(76.2, 21.7, 5.3), (72.9, 20.5, 5.1), (69.1, 17.9, 4.6), (57.6, 15.1, 4.4)]},
    2: {"gpu": [(2451, 1289, 437), (1725, 873, 341), (1026, 644, 338), (634, 445, 230)],
        "arm": [(40.0, 10.2, 2.3), (35.0, 9.5, 2.2), (32.9, 8.7, 2.1), (27.8, 7.5, 1.8)]},
    3: {"gpu": [(2446, 1274, 434), (1790, 909, 336), (752, 745, 349), (1537, 803, 320),
                (691, 572, 292)],
        "arm": [(40.2, 10.1, 2.3), (38.6, 10.1, 2.2), (38.4, 10.1, 2.3), (33.4, 9.1, 2.2),
                (35.0, 8.4, 2.1)]},
    4: {"gpu": [(2427, 2066, 1436), (2647, 2256, 1735), (2672, 2121, 1458), (2842, 2376, 1782)],
        "arm": [(56.7, 16.9, 5.0), (61.9, 18.8, 5.2), (57.3, 18.2, 5.1), (66.3, 20.2, 5.4)]},
}
# How far a row's multiply-adds may stray from the table's first row, and why:
# G1: the paper's own channel pairs (36, 432) and (22, 44) have 5.1% and 5.5% fewer than 1:1;
# G2: the paper's 180^2/2 is 1.1% off 128^2, and the arm g=8 width 184 (180 is not a multiple
#     of 8) is 3.3% over; G3: c / sqrt(k) rounded to an integer (c' = 45 for c = 64 is 1.1%
#     off); G4: the rows differ only in ReLUs and additions, which have no multiply-adds.
MACS_TOLERANCE = {1: 0.06, 2: 0.035, 3: 0.02, 4: 0.0}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One of the paper's two columns of channel counts (at x1) and its batch."""

    name: str
    batch: int
    g1_pairs: tuple[tuple[int, int], ...]  # (c1, c2) for 1:1, 1:2, 1:6, 1:12
    g2_widths: tuple[int, ...]  # c for g = 1, 2, 4, 8
    g3_width: int  # c of the 1-fragment block
    g4_width: int  # c, the bottleneck width of the unit


SETTINGS = {
    "gpu": Setting("gpu", 8, ((128, 128), (90, 180), (52, 312), (36, 432)),
                   (128, 180, 256, 360), 128, 32),
    "arm": Setting("arm", 1, ((32, 32), (22, 44), (13, 78), (9, 108)),
                   (64, 90, 128, 180), 64, 32),
}
G2_GROUPS = (1, 2, 4, 8)
G3_BLOCKS = ((1, False), (2, False), (4, False), (2, True), (4, True))  # (fragments, parallel)
G4_VARIANTS = ((True, True), (True, False), (False, True), (False, False))  # (relu, shortcut)


@dataclasses.dataclass(frozen=True)
class Net:
    """One benchmark network: ``blocks`` copies of a block on ``(N, size, size, C)`` NHWC.

    ``channels`` is, per guideline: G1 ``(c1, c2)``; G2 ``(c,)``; G3 ``(c',)``, the width of
    every convolution of the block; G4 ``(c,)``, the bottleneck width (input and output 4c).
    """

    guideline: int
    label: str
    channels: tuple[int, ...]
    groups: int = 1
    fragments: int = 1
    parallel: bool = False
    relu: bool = False
    shortcut: bool = False
    blocks: int = BLOCKS
    size: int = SIZE

    @property
    def in_channels(self) -> int:
        return 4 * self.channels[0] if self.guideline == 4 else self.channels[0]

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.size, self.size, self.in_channels)

    def kernel_shapes(self) -> list[tuple[int, int, int, int]]:
        """HWIO kernel shapes (``(kh, kw, C // G, O)``) in the order :func:`jax_forward`
        takes them."""
        one = {
            1: lambda c1, c2: [(1, 1, c1, c2), (1, 1, c2, c1)],
            2: lambda c: [(1, 1, c // self.groups, c)],
            3: lambda c: [(1, 1, c, c)] * self.fragments,
            4: lambda c: [(1, 1, 4 * c, c), (3, 3, c, c), (1, 1, c, 4 * c)],
        }[self.guideline](*self.channels)
        return one * self.blocks


def _g2_width(c: int, groups: int, target: int) -> int:
    """``c``, or where ``groups`` does not divide it, the multiple of ``groups`` whose
    multiply-adds ``c * c / groups`` come nearest ``target``."""
    if c % groups == 0:
        return c
    low = c - c % groups
    return min((low, low + groups), key=lambda w: abs(w * w // groups - target))


def table_rows(guideline: int, setting: str, scale: int = 1, *, size: int = SIZE,
               blocks: int = BLOCKS) -> list[Net]:
    """The rows of the paper's table ``guideline`` (1-4) in ``setting``'s column of channel
    counts ("gpu" or "arm"), every count times ``scale`` (the paper's x1, x2, x4)."""
    s = SETTINGS[setting]
    common = dict(size=size, blocks=blocks)
    if guideline == 1:
        return [Net(1, f"{ratio} ({c1 * scale},{c2 * scale})", (c1 * scale, c2 * scale), **common)
                for ratio, (c1, c2) in zip(("1:1", "1:2", "1:6", "1:12"), s.g1_pairs)]
    if guideline == 2:
        target = (s.g2_widths[0] * scale) ** 2
        rows = []
        for g, c in zip(G2_GROUPS, s.g2_widths):
            width = _g2_width(c * scale, g, target)
            rows.append(Net(2, f"g={g} (c={width})", (width,), groups=g, **common))
        return rows
    if guideline == 3:
        c = s.g3_width * scale
        rows = []
        for k, parallel in G3_BLOCKS:
            width = round(c / math.sqrt(k))  # k convolutions of c'^2 each: c^2 in all
            name = "1-fragment" if k == 1 else f"{k}-fragment-{'parallel' if parallel else 'series'}"
            rows.append(Net(3, f"{name} (c={width})", (width,), fragments=k, parallel=parallel,
                            **common))
        return rows
    if guideline == 4:
        c = s.g4_width * scale
        return [Net(4, f"ReLU {'yes' if relu else 'no'}, shortcut {'yes' if shortcut else 'no'} "
                    f"(c={c})", (c,), relu=relu, shortcut=shortcut, **common)
                for relu, shortcut in G4_VARIANTS]
    raise ValueError(f"table_rows: guideline must be one of {GUIDELINES}, but got {guideline!r}")


def paper_speeds(guideline: int, scale: int) -> dict[str, list[float]]:
    """The paper's speeds of each row at ``scale`` (1, 2 or 4), per column ("gpu", "arm")."""
    column = SCALES.index(scale)
    return {name: [row[column] for row in rows] for name, rows in PAPER[guideline].items()}


def jax_forward(net: Net) -> Callable[[jax.Array, Sequence[jax.Array]], jax.Array]:
    """``forward(x, kernels)`` of ``net`` with jaxsep ops; ``x`` NHWC, ``kernels`` HWIO in
    :meth:`Net.kernel_shapes` order."""
    def relu(y):
        return jax.nn.relu(y) if net.relu else y

    def block(x, ks):
        if net.guideline == 1:
            return jaxsep.pointwise_conv(jaxsep.pointwise_conv(x, ks[0]), ks[1])
        if net.guideline == 2:
            return jaxsep.grouped_conv(x, ks[0], net.groups)
        if net.guideline == 3:
            if net.parallel:
                return sum(jaxsep.pointwise_conv(x, k) for k in ks)
            for k in ks:
                x = jaxsep.pointwise_conv(x, k)
            return x
        y = relu(jaxsep.pointwise_conv(x, ks[0]))
        y = relu(jaxsep.conv(y, ks[1]))
        y = jaxsep.pointwise_conv(y, ks[2])
        return relu(y + x if net.shortcut else y)

    per_block = len(net.kernel_shapes()) // net.blocks

    def forward(x, kernels):
        for b in range(net.blocks):
            x = block(x, kernels[b * per_block:(b + 1) * per_block])
        return x

    return forward


def macs(net: Net, batch: int = 1) -> int:
    """The multiply-adds of ``net`` on ``batch`` images, read from its jaxpr by
    ``jaxsep.cost.count_macs`` (nothing is computed)."""
    x = jax.ShapeDtypeStruct(net.input_shape(batch), jnp.float32)
    kernels = [jax.ShapeDtypeStruct(s, jnp.float32) for s in net.kernel_shapes()]
    return jaxsep.cost.count_macs(jax_forward(net), x, kernels).total


def init_arrays(net: Net, batch: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """A standard-normal input and kernels scaled so that activations keep their size through
    the stack (denormal or overflowing values would change the speed being measured)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(net.input_shape(batch), dtype=np.float32)
    branches = net.fragments if net.parallel else 1
    kernels = []
    for shape in net.kernel_shapes():
        fan_in = shape[0] * shape[1] * shape[2] * branches
        kernels.append(rng.standard_normal(shape, dtype=np.float32) / np.float32(math.sqrt(fan_in)))
    return x, kernels


def torch_twin(net: Net, kernels: Sequence[np.ndarray], device: str):
    """The same network as :func:`jax_forward` from ``torch.nn.Conv2d`` (bias-free, the same
    weights), in eval mode and channels-last memory format."""
    import torch
    from torch import nn

    def conv(kernel, groups=1):
        kh, kw, c_in, out = kernel.shape
        layer = nn.Conv2d(c_in * groups, out, (kh, kw), padding=kh // 2, groups=groups, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.transpose(kernel, (3, 2, 0, 1))))
        return layer

    class Block(nn.Module):
        def __init__(self, ks):
            super().__init__()
            self.convs = nn.ModuleList(conv(k, net.groups) for k in ks)

        def forward(self, x):
            if net.guideline == 3 and net.parallel:
                return sum(c(x) for c in self.convs)
            if net.guideline != 4:
                for c in self.convs:
                    x = c(x)
                return x
            relu = torch.relu if net.relu else (lambda y: y)
            y = self.convs[2](relu(self.convs[1](relu(self.convs[0](x)))))
            return relu(y + x if net.shortcut else y)

    per_block = len(kernels) // net.blocks
    model = nn.Sequential(*(Block(kernels[b * per_block:(b + 1) * per_block])
                            for b in range(net.blocks)))
    return model.to(device=device, memory_format=torch.channels_last).eval()


def _torch_input(x: np.ndarray, device: str):
    import torch

    nchw = torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))).to(device)
    return nchw.contiguous(memory_format=torch.channels_last)


def bench_table(nets: Sequence[Net], batch: int, *, rounds: int, calls: int,
                torch_device: str | None) -> list[dict]:
    """Times every row of one table, jaxsep and torch, in one set of rounds; returns a dict
    per row with times, speeds and ratios to the first row."""
    calls_by_name, extra = {}, []
    for i, net in enumerate(nets):
        x_np, kernels_np = init_arrays(net, batch, seed=i)
        x, kernels = jnp.asarray(x_np), [jnp.asarray(k) for k in kernels_np]
        compiled, compile_s = compile_timed(jax.jit(jax_forward(net)), x, kernels)
        calls_by_name[f"{i} jaxsep"] = (
            lambda f=compiled, x=x, k=kernels: f(x, k).block_until_ready())
        row = {"compile_s": compile_s, "torch_rel_diff": None}
        if torch_device:
            import torch

            model, tx = torch_twin(net, kernels_np, torch_device), _torch_input(x_np, torch_device)
            sync = torch.cuda.synchronize if torch_device == "cuda" else (lambda: None)

            def torch_call(model=model, tx=tx, sync=sync):
                with torch.inference_mode():
                    out = model(tx)
                sync()
                return out

            calls_by_name[f"{i} torch"] = torch_call
            # the two are one network: compare their outputs once (NCHW -> NHWC)
            ours = np.asarray(compiled(x, kernels))
            theirs = torch_call().permute(0, 2, 3, 1).cpu().numpy()
            row["torch_rel_diff"] = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
        extra.append(row)

    timed = Rounds(calls_by_name).run(rounds, calls)
    frameworks = ["jaxsep"] + (["torch"] if torch_device else [])
    rows = []
    for i, (net, row) in enumerate(zip(nets, extra)):
        ms = {f: 1e3 * timed.seconds(f"{i} {f}") for f in frameworks}
        rows.append({
            "label": net.label,
            **{k: v for k, v in dataclasses.asdict(net).items() if k != "label"},
            "input_shape": list(net.input_shape(batch)),
            "macs_per_image": macs(net),
            "ms": ms,
            "images_per_s": {f: batch / (t * 1e-3) for f, t in ms.items()},
            # a row's speed over the first row's: time(first) / time(row), per round
            "ratio": {f: timed.ratio(f"0 {f}", f"{i} {f}") for f in frameworks},
            **row,
        })
    return rows


def _fastest(labels: Sequence[str], values: Sequence[float | None]) -> str:
    known = [(v, label) for v, label in zip(values, labels) if v is not None]
    return max(known)[1].split(" (")[0] if known else "n/a"


def _load(report: dict) -> str:
    load = report.get("load_average")
    return "n/a" if load is None else " / ".join(f"{v:.2f}" for v in load) + " (1/5/15 min)"


def markdown(report: dict) -> str:
    lines = [
        f"# ShuffleNet V2's guidelines, measured ({report['backend']}: {report['device']})",
        "",
        partial_note(report)
        + f"jax {report['jax']} (plain `jax.jit`, XLA's default compiler options), "
        f"{report['torch_note']}"
        + (" (`nn.Conv2d`, channels-last, `inference_mode`)" if report["torch"] else "")
        + f"; threads: {report['threads']}; load average at start {_load(report)}; float32, "
        f"forward only, input {report['size']}x{report['size']}, "
        f"{report['blocks']} blocks per network; medians of {report['rounds']} rounds x "
        f"{report['calls']} calls; {host_memory_note(report)}; {autotune_note(report)}. "
        f"Command: `{report['command']}`.",
        "",
        "`ratio` is a row's speed over the table's first row's (above 1: faster than the first "
        "row), median of per-round ratios; `paper GPU` and `paper ARM` are the same ratio from "
        "the paper's speeds at the same width (x1, x2, x4), whatever setting's channels we ran. "
        "`MACs` are per image, read from the jaxsep program's jaxpr by `jaxsep.cost.count_macs`. "
        f"Paper numbers: {report['paper_source']}; their units are missing from that source "
        "(ratios need none).",
    ]
    for guideline in GUIDELINES:
        tables = [t for t in report["tables"] if t["guideline"] == guideline]
        if not tables:
            continue
        lines += ["", f"## {TITLES[guideline]}"]
        for t in tables:
            lines += [
                "",
                f"### {t['setting']} channels x{t['scale']}, batch {t['batch']}",
                "",
                "| row | MACs/image | jaxsep ms | jaxsep img/s | jaxsep ratio | torch ms | "
                "torch img/s | torch ratio | paper GPU ratio | paper ARM ratio |",
                "|---" * 10 + "|",
            ]
            for r, gpu, arm in zip(t["rows"], t["paper_ratio"]["gpu"], t["paper_ratio"]["arm"]):
                lines.append(
                    f"| {r['label']} | {r['macs_per_image'] / 1e6:.1f}M | {fmt(r['ms']['jaxsep'])} | "
                    f"{fmt(r['images_per_s']['jaxsep'], 1)} | {fmt(r['ratio']['jaxsep'], 2)} | "
                    f"{fmt(r['ms'].get('torch'))} | {fmt(r['images_per_s'].get('torch'), 1)} | "
                    f"{fmt(r['ratio'].get('torch'), 2)} | {fmt(gpu, 2)} | {fmt(arm, 2)} |"
                )
            labels = [r["label"] for r in t["rows"]]
            lines += ["", "Fastest row: " + ", ".join(
                f"{name} {_fastest(labels, values)}" for name, values in (
                    ("jaxsep", [r["ratio"]["jaxsep"] for r in t["rows"]]),
                    ("torch", [r["ratio"].get("torch") for r in t["rows"]]),
                    ("paper GPU", t["paper_ratio"]["gpu"]),
                    ("paper ARM", t["paper_ratio"]["arm"]),
                )) + "."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> bool:
    """One panel per guideline: each row's speed ratio to the first row, ours and the paper's;
    False (nothing written) without matplotlib."""
    try:
        from matplotlib import ticker
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    figure = Figure(figsize=(13, 9), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2).ravel()
    styles = {1: "-", 2: "--", 4: ":"}
    markers = {"gpu": "s", "arm": "o"}
    colors = {"jaxsep": "tab:blue", "torch": "tab:orange", "paper GPU": "tab:green",
              "paper ARM": "tab:red"}
    for ax, guideline in zip(axes, GUIDELINES):
        tables = [t for t in report["tables"] if t["guideline"] == guideline]
        ax.set_title(TITLES[guideline], fontsize=9)
        if not tables:
            ax.set_axis_off()
            continue
        labels = [r["label"].split(" (")[0] for r in tables[0]["rows"]]
        xs = range(len(labels))
        drawn_paper = set()
        for t in tables:
            style = styles.get(t["scale"], "-.")
            for name in ("jaxsep", "torch"):
                values = [r["ratio"].get(name) for r in t["rows"]]
                if None not in values:
                    ax.plot(xs, values, style, marker=markers[t["setting"]], color=colors[name],
                            label=f"{name} {t['setting']} x{t['scale']}")
            if t["scale"] not in drawn_paper:
                drawn_paper.add(t["scale"])
                for name, key in (("paper GPU", "gpu"), ("paper ARM", "arm")):
                    ax.plot(xs, t["paper_ratio"][key], style, marker="x", color=colors[name],
                            label=f"{name} x{t['scale']}")
        ax.axhline(1.0, color="grey", linewidth=0.5)
        # a log scale shows 2x faster and 2x slower as the same distance from 1
        ax.set_yscale("log")
        # labels at 1, 2, 3, 5, 7 times each power of ten: every minor tick labelled overlaps
        ax.yaxis.set_minor_locator(ticker.LogLocator(base=10, subs=(2.0, 3.0, 5.0, 7.0)))
        for axis_set in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis_set(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xticks(list(xs), labels, fontsize=8, rotation=15)
        ax.set_ylabel("speed / first row's speed")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    figure.suptitle(f"ShuffleNet V2 guidelines on {report['device']}", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    atomic_write(path, buffer.getvalue())
    return True


def _save(report: dict, out_dir: Path | None) -> str:
    table = markdown(report)
    if out_dir is not None:
        stem = f"guidelines_{report['backend']}"
        write_report(out_dir, stem, report, table)
        if not plot(report, out_dir / f"{stem}.png"):
            print("matplotlib is not installed (pip install 'jaxsep[plot]'): no plot drawn")
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=None,
                        help="the paper's channel columns to run: gpu (batch 8) and/or arm "
                        "(batch 1); default both")
    parser.add_argument("--scales", nargs="+", type=int, choices=SCALES, default=None,
                        help="the paper's widths x1, x2, x4 (default all)")
    parser.add_argument("--guidelines", nargs="+", type=int, choices=GUIDELINES,
                        default=list(GUIDELINES))
    parser.add_argument("--batch", type=int, default=None,
                        help="override the settings' batches (paper: gpu 8, arm 1)")
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (1 with --quick)")
    parser.add_argument("--calls", type=int, default=None,
                        help="timed calls per block; default 3 (1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="arm channels x1 on 8x8 inputs, 2 blocks, 1 round of 1 call: a "
                        "smoke test")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch columns")
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

    settings = default(args.settings, tuple(SETTINGS), QUICK["settings"])
    scales = default(args.scales, SCALES, QUICK["scales"])
    size, blocks = (QUICK["size"], QUICK["blocks"]) if args.quick else (SIZE, BLOCKS)
    rounds = default(args.rounds, 5, QUICK["rounds"])
    calls = default(args.calls, 3, QUICK["calls"])
    torch_device, torch_version, torch_note = torch_yardstick(args.no_torch)
    threads = (f"XLA:CPU's default pool (one per core, {os.cpu_count()} cores)"
               if backend == "cpu" else f"jax on {backend}")
    if torch_device == "cpu":
        import torch

        threads += f", torch {torch.get_num_threads()}"
    plan = [(setting, scale, g) for setting in settings for scale in scales for g in args.guidelines]
    report = {
        "backend": backend,
        "device": device_description(),
        "jax": jax.__version__,
        "torch": torch_version if torch_device else None,
        "torch_note": torch_note,
        "threads": threads,
        # other work on the cores distorts these timings (torch's threads worst of all: they
        # wait for each other at every op), so the load at the start goes into the report
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "size": size,
        "blocks": blocks,
        "rounds": rounds,
        "calls": calls,
        **memory,
        **autotune_fields(),
        "paper_source": PAPER_SOURCE,
        "paper_units": PAPER_UNITS,
        "command": "python experiments/guidelines.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "tables": [],
    }
    total = sum(macs(n, args.batch or SETTINGS[s].batch)
                for s, scale, g in plan for n in table_rows(g, s, scale, size=size, blocks=blocks))
    print(f"{len(plan)} tables, {total / 1e9:.1f} G multiply-adds per pass over all rows", flush=True)
    for setting, scale, guideline in plan:
        batch = args.batch or SETTINGS[setting].batch
        nets = table_rows(guideline, setting, scale, size=size, blocks=blocks)
        rows = bench_table(nets, batch, rounds=rounds, calls=calls, torch_device=torch_device)
        speeds = paper_speeds(guideline, scale)
        report["tables"].append({
            "guideline": guideline, "setting": setting, "scale": scale, "batch": batch,
            "rows": rows,
            "paper_speed": speeds,
            "paper_ratio": {k: [v / values[0] for v in values] for k, values in speeds.items()},
        })
        for r in rows:
            print(f"G{guideline} {setting} x{scale} {r['label']:>34}: jaxsep "
                  f"{r['ms']['jaxsep']:8.2f} ms ({r['ratio']['jaxsep']:.2f})"
                  + (f", torch {r['ms']['torch']:8.2f} ms ({r['ratio']['torch']:.2f})"
                     if torch_device else ""), flush=True)
        if args.write_each and out_dir is not None and len(report["tables"]) < len(plan):
            report["partial"] = f"{len(report['tables'])} of {len(plan)}"
            _save(report, out_dir)
    report.pop("partial", None)
    print(_save(report, out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
