"""Benchmark of glibc's malloc settings under a training step: time, page faults and system
time per step (``jaxsep.host_memory``).

XLA:CPU allocates a training step's scratch afresh on every call; glibc serves a large block
with a fresh ``mmap`` and unmaps it on free, so every step faults its pages in again. The
settings are process-wide and must be made before the first JAX computation, so each runs in
its own subprocess, the order rotated between rounds:

* ``glibc defaults``: ``JAXSEP_REUSE_HOST_MEMORY=0`` (jaxsep leaves malloc alone);
* ``2 GiB thresholds``: jaxsep's settings before 2026-12-07 (one arena, mmap and trim
  thresholds of 2 GiB - 1, the largest ``mallopt`` takes), given as ``GLIBC_TUNABLES``;
  a block over 2 GiB was still a fresh ``mmap``;
* ``jaxsep``: what ``import jaxsep`` applies today (one arena, no ``mmap``, no trimming).

Each child runs the plain loop a JAX user writes (``_timing.plain_trainer``: ``nnx.jit`` step,
``nnx.Optimizer`` with ``optax.sgd(0.1, momentum=0.9)``, softmax cross-entropy, one fixed
batch of ``--batch-size`` 32x32 images) over ``jaxsep.models.create(--model,
variant="cifar", width_multiplier=--width)``
for ``--warmup`` untimed steps and ``--steps`` timed ones, and reports each step's time, the
minor page faults, user and system CPU seconds per timed step (``getrusage``) and the peak
resident set. The children share a JAX compilation cache (a temporary folder), so only the
first compiles. Run it on an otherwise idle machine.

    python experiments/bench_host_memory.py        # EfficientNet-B0 x1.0, batch 128, ~8 min
    python experiments/bench_host_memory.py --model mobilenet_v1 --batch-size 512
    python experiments/bench_host_memory.py --quick --out /tmp/h   # smoke test

Results: ``experiments/results/bench_host_memory_<backend>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# jaxsep's settings before 2026-12-07, as glibc reads them at process start
TWO_GIB_THRESHOLDS = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=2147483647:"
                      "glibc.malloc.trim_threshold=2147483647")
SETTINGS = {  # name: the child's environment changes (None: removed)
    "glibc defaults": {"JAXSEP_REUSE_HOST_MEMORY": "0", "GLIBC_TUNABLES": None},
    "2 GiB thresholds": {"JAXSEP_REUSE_HOST_MEMORY": "0", "GLIBC_TUNABLES": TWO_GIB_THRESHOLDS},
    "jaxsep": {"JAXSEP_REUSE_HOST_MEMORY": None, "GLIBC_TUNABLES": None},
}
BASELINE = "glibc defaults"


def child(args: argparse.Namespace) -> int:
    """One setting's process: the plain loop, timed; writes its figures as JSON."""
    import jax

    import jaxsep
    from _timing import plain_trainer

    first_step_s, step = plain_trainer(args.model, args.width, args.batch_size)
    for _ in range(args.warmup):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    Path(args.child).write_text(json.dumps({
        "step_s": times,
        "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / args.steps,
        "user_s_per_step": (after.ru_utime - before.ru_utime) / args.steps,
        "system_s_per_step": (after.ru_stime - before.ru_stime) / args.steps,
        "peak_rss_gib": after.ru_maxrss / 2**20,  # ru_maxrss is in KiB on Linux
        "first_step_s": first_step_s,
        "jax": jax.__version__, "jaxsep": jaxsep.__version__,
    }))
    return 0


def run_child(args: argparse.Namespace, setting: str, cache: str) -> dict:
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    for name, value in SETTINGS[setting].items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "child.json"
        subprocess.run(
            [sys.executable, __file__, "--child", str(out), "--model", args.model, "--width",
             str(args.width), "--batch-size", str(args.batch_size), "--warmup",
             str(args.warmup), "--steps", str(args.steps)],
            env=env, check=True)
        return json.loads(out.read_text())


def markdown(report: dict) -> str:
    lines = [
        f"# glibc's malloc settings under a training step: {report['model']} x{report['width']} "
        f"(CIFAR variant), batch {report['batch_size']}",
        "",
        f"`{report['command']}`; {report['device']}; jax {report['jax']}, jaxsep "
        f"{report['jaxsep']}; {report['date']} UTC. A plain `nnx.jit` SGD-momentum step, "
        f"{report['warmup']} untimed then {report['steps']} timed steps per process, one process "
        f"per setting and round, {report['rounds']} round(s) in rotated order. Step: the median "
        "over rounds of a round's median; faults and CPU seconds per timed step, medians over "
        "rounds; speed-up: the median over rounds of that round's ratio to glibc's defaults.",
        "",
        "| setting | step (s) | img/s | speed-up | minor faults / step | user s / step "
        "| system s / step | peak RSS (GiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["settings"].items():
        lines.append(
            f"| {name} | {row['step_s']:.3f} | {row['images_per_second']:.1f} "
            f"| {row['speedup']:.2f}x | {row['minor_faults_per_step']:,.0f} "
            f"| {row['user_s_per_step']:.2f} | {row['system_s_per_step']:.2f} "
            f"| {row['peak_rss_gib']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="MobileNetV1 x0.25, batch 8, one round of 2 steps (a smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    if args.quick:
        args.model, args.width, args.batch_size = "mobilenet_v1", 0.25, 8
        args.warmup, args.steps, args.rounds = 1, 2, 1
    for name in ("batch_size", "steps", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, "
                         f"got {getattr(args, name)}")

    import jax

    from jaxsep._io import atomic_write
    from _timing import device_description

    names = list(SETTINGS)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as cache:
        for round_index in range(args.rounds):
            order = names[round_index % len(names):] + names[:round_index % len(names)]
            for name in order:
                result = run_child(args, name, cache)
                runs[name].append(result)
                print(f"round {round_index + 1}, {name}: median step "
                      f"{statistics.median(result['step_s']):.3f} s, "
                      f"{result['minor_faults_per_step']:,.0f} faults per step", flush=True)
    settings = {}
    for name in names:
        medians = [statistics.median(r["step_s"]) for r in runs[name]]
        speedups = [statistics.median(b["step_s"]) / m
                    for b, m in zip(runs[BASELINE], medians)]
        step = statistics.median(medians)
        settings[name] = {
            "step_s": step, "images_per_second": args.batch_size / step,
            "speedup": statistics.median(speedups),
            **{key: statistics.median(r[key] for r in runs[name]) for key in (
                "minor_faults_per_step", "user_s_per_step", "system_s_per_step",
                "peak_rss_gib")},
            "environment": SETTINGS[name], "runs": runs[name],
        }
    first = runs[names[0]][0]
    report = {
        "command": " ".join(["python experiments/bench_host_memory.py",
                             *(sys.argv[1:] if argv is None else argv)]),
        "model": args.model, "width": args.width, "batch_size": args.batch_size,
        "warmup": args.warmup, "steps": args.steps, "rounds": args.rounds,
        "device": device_description(), "jax": first["jax"], "jaxsep": first["jaxsep"],
        "backend": jax.default_backend(),
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "settings": settings,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_host_memory_{jax.default_backend()}"
    atomic_write(args.out / f"{stem}.json", json.dumps(report, indent=1) + "\n")
    atomic_write(args.out / f"{stem}.md", markdown(report))
    print(f"wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
