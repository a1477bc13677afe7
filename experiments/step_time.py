"""Does the training step's time depend on the weights or the data? (experiment 12's speed
column)

The zoo sweep measures each point's training step apart from its training run
(:func:`jaxsep.sweep.speed.measure_training`: the harness's step on synthetic data, freshly
initialized weights), on the reasoning that what a CPU computes does not depend on the values.
For EfficientNet-B0 x0.5 that measurement read 1.51 s per step where the run's own clock in
its last epoch read 1.12 s. This script times the same harness step, in one process
(``measure_training(point, trained=..., real_data=...)``), for the four combinations of

* weights: freshly initialized (the point's seed) or the trained run's best checkpoint
  (``init_from``: the sweep's run folder must hold it, so train the point first);
* data: synthetic images of the point's shapes, or the point's own dataset (CIFAR-10),

each ``--rounds`` times in rotation (so a slow spell of the machine falls on every variant),
each time ``--warmup`` untimed steps then ``--steps`` timed ones, exactly as the sweep times
them. The report lists every variant's per-round medians and the spread of its steps, beside
the run's own clock (each epoch's seconds per step, from its ``metrics.jsonl``).

    python experiments/step_time.py            # EfficientNet-B0 x0.5, ~10 min on 2 cores
    python experiments/step_time.py --point "model=mobilenet_v2,width=1.0"
    python experiments/step_time.py --quick --sweep tiny.toml --runs-dir R --out /tmp/s  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

import jaxsep
from jaxsep import sweep
from jaxsep._io import atomic_write
from jaxsep.sweep import speed

from _timing import device_description

HERE = Path(__file__).resolve().parent
DEFAULT_POINT = "model=efficientnet_b0,width=0.5"
VARIANTS = (("init", "synthetic"), ("trained", "dataset"), ("trained", "synthetic"),
            ("init", "dataset"))


def run_clock(point: sweep.Point) -> list[dict]:
    """The training run's own seconds per step in each epoch (its ``metrics.jsonl``)."""
    path = point.out / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    clock, previous = [], 0
    for row in rows:  # an epoch's steps: the difference of the global steps
        clock.append({"epoch": row["epoch"],
                      "step_s": row["epoch_seconds"] / (row["global_step"] - previous)})
        previous = row["global_step"]
    return clock


def summarize(times: list[float]) -> dict:
    values = np.asarray(times)
    return {"median_s": float(np.median(values)), "mean_s": float(values.mean()),
            "p10_s": float(np.percentile(values, 10)), "p90_s": float(np.percentile(values, 90)),
            "min_s": float(values.min()), "max_s": float(values.max())}


def markdown(report: dict) -> str:
    lines = [
        f"# The training step of {report['point']}: trained or fresh weights, real or "
        "synthetic data",
        "",
        f"`{report['command']}`; the harness's step as the sweep measures it (batch "
        f"{report['batch_size']}), {report['warmup']} untimed then {report['steps']} timed steps "
        f"per variant and round, {report['rounds']} round(s) in rotation, one process. "
        f"Device: {report['device']}; jaxsep {report['jaxsep']}, jax {report['jax']}; load "
        f"average before {report['load_before']}, after {report['load_after']}; "
        f"{report['started_at']} to {report['finished_at']} UTC.",
        "",
        "| weights | data | median per round (s) | median (s) | mean (s) | p10-p90 (s) "
        "| min-max (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["variants"]:
        rounds = ", ".join(f"{r:.2f}" for r in row["round_median_s"])
        lines.append(
            f"| {row['weights']} | {row['data']} | {rounds} | {row['median_s']:.2f} "
            f"| {row['mean_s']:.2f} | {row['p10_s']:.2f}-{row['p90_s']:.2f} "
            f"| {row['min_s']:.2f}-{row['max_s']:.2f} |")
    if report["run_clock"]:
        clock = ", ".join(f"{r['epoch']}: {r['step_s']:.2f}" for r in report["run_clock"])
        lines += ["", "The training run's own clock, seconds per step by epoch (evaluation "
                  f"excluded; load unrecorded, so some epochs shared the machine): {clock}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, default=HERE / "zoo.toml",
                        help="the sweep file (default: %(default)s)")
    parser.add_argument("--point", default=DEFAULT_POINT, help="its point (default: %(default)s)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"),
                        help="the sweep's runs folder, holding the trained point "
                             "(default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=speed.WARMUP_STEPS)
    parser.add_argument("--steps", type=int, default=speed.TIMED_STEPS)
    parser.add_argument("--quick", action="store_true",
                        help="one round of 1 + 3 steps (a smoke test)")
    parser.add_argument("--out", type=Path, default=HERE / "results",
                        help="folder for step_time_<backend>.json and .md (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.steps = 1, 1, 3
    for name in ("rounds", "warmup", "steps"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            parser.error(f"--{name} must be at least {0 if name == 'warmup' else 1}, "
                         f"got {getattr(args, name)}")
    point = sweep.load_sweep(args.sweep, runs_dir=args.runs_dir).point(args.point)
    if not (point.out / "best").is_dir():
        parser.error(f"--point {args.point!r}: no trained run in {point.out} (its best "
                     "checkpoint is the trained weights); train the point first")

    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    load_before = [round(v, 2) for v in os.getloadavg()]
    times: dict[tuple[str, str], list[list[float]]] = {v: [] for v in VARIANTS}
    for round_index in range(args.rounds):
        for weights, data in VARIANTS:
            steps = [t / 1e3 for t in speed.measure_training(
                point, warmup=args.warmup, steps=args.steps, trained=weights == "trained",
                real_data=data == "dataset")["step_ms_all"]]
            times[weights, data].append(steps)
            print(f"round {round_index + 1}: {weights} weights, {data} data: median "
                  f"{np.median(steps):.3f} s", flush=True)
    variants = [{"weights": w, "data": d, "round_median_s": [float(np.median(r)) for r in rs],
                 "step_s": rs, **summarize([t for r in rs for t in r])}
                for (w, d), rs in times.items()]
    report = {
        "point": point.label, "command": " ".join(
            ["python experiments/step_time.py", *(sys.argv[1:] if argv is None else argv)]),
        "batch_size": point.config.batch_size, "rounds": args.rounds, "warmup": args.warmup,
        "steps": args.steps, "device": device_description(), "jax": jax.__version__,
        "jaxsep": jaxsep.__version__, "load_before": load_before,
        "load_after": [round(v, 2) for v in os.getloadavg()], "started_at": started,
        "finished_at": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "run_clock": run_clock(point), "variants": variants,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"step_time_{jax.default_backend()}"
    atomic_write(args.out / f"{stem}.json", json.dumps(report, indent=1) + "\n")
    atomic_write(args.out / f"{stem}.md", markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
