"""Start-up of ``jaxsep train``: the time from process start to the end of the first training
step, and every compilation on the way, with empty caches (cold) and again with the caches the
cold run filled (warm: a rerun, a resume, the next sweep point).

Each run is a fresh Python process doing what ``jaxsep train`` does (the same flags parsed
into a ``TrainConfig``, the same process set-up: host memory, compilation cache), with a hook
that waits for the first step's loss, records the time and stops the run. JAX's compilation
cache and jaxsep's autotune cache live in a temporary folder, empty for the cold run, so the
cold figure includes autotune's first measurements when ``impl="auto"`` measures.

    python experiments/bench_startup.py                     # the README's quick command
    python experiments/bench_startup.py --flags "--width 1.0 --batch-size 128"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _timing  # noqa: E402

# The README's quick command, on synthetic data of the same size (no download in a benchmark).
QUICK = ("--model mobilenet_v1 --width 0.5 --epochs 3 --max-train-examples 10000 "
         "--max-test-examples 2000 --dataset synthetic")

DRIVER = r"""
import json, sys, time
start = float(sys.argv[1])  # the parent's wall clock when it started this process
import jax
from jax import monitoring
compiles = []
steps = {}  # the train step's trace, lowering and compile (a cache hit: its retrieval)
PHASES = {"/jax/core/compile/jaxpr_trace_duration": ("trace", "train_step"),
          "/jax/core/compile/jaxpr_to_mlir_module_duration": ("lower", "jit(train_step)"),
          "/jax/core/compile/backend_compile_duration": ("compile", "jit(train_step)")}
def on_duration(event, duration, fun_name=None, **_):
    if event == "/jax/core/compile/backend_compile_duration":
        compiles.append(duration)
    phase, name = PHASES.get(event, (None, None))
    if phase is not None and fun_name == name:
        steps[phase] = steps.get(phase, 0.0) + duration
monitoring.register_event_duration_secs_listener(on_duration)
hits = []
monitoring.register_event_listener(
    lambda event, **_: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
from jaxsep import cli, train
parser = cli.build_parser()
args = parser.parse_args(["train", *sys.argv[3:], "--out", sys.argv[2], "--quiet"])
cli._prepare_process()
config = train.config_from_args(args)
imported = time.time() - start
first = {}
def first_step(step, loop):
    if step.global_step == 1:
        float(step.loss)
        first["seconds"] = time.time() - start
        first["compiles"] = list(compiles)
        first["train_step"] = dict(steps)
        loop.request_stop()
try:
    train.train_and_evaluate(config, hooks=[first_step])
except train.TrainingInterrupted:
    pass
print(json.dumps({"import_seconds": imported, "first_step_seconds": first["seconds"],
                  "compile_seconds": first["compiles"], "cache_hits": len(hits),
                  "train_step_seconds": first["train_step"]}))
"""


def _run(flags: list[str], cache: Path, out: Path) -> dict:
    env = dict(os.environ)
    env.update(JAXSEP_COMPILATION_CACHE=str(cache / "xla"),
               JAXSEP_AUTOTUNE_CACHE=str(cache / "autotune.json"),
               JAXSEP_DATA_DIR=env.get("JAXSEP_DATA_DIR", str(cache / "data")))
    start = time.time()
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(start), str(out), *flags],
        env=env, capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"the training process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flags", default=QUICK,
                        help=f"jaxsep train flags (default: the README's quick command on "
                        f"synthetic data: {QUICK!r})")
    parser.add_argument("--warm-runs", type=int, default=2, help="warm runs after the cold one")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    flags = shlex.split(args.flags)

    runs = []
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder)
        for index in range(1 + args.warm_runs):
            kind = "cold" if index == 0 else "warm"
            result = _run(flags, cache, cache / f"run{index}")
            result["kind"] = kind
            runs.append(result)
            print(f"{kind}: first step after {result['first_step_seconds']:.1f} s "
                  f"(imports {result['import_seconds']:.1f} s, {len(result['compile_seconds'])} "
                  f"compilations, {sum(result['compile_seconds']):.1f} s, "
                  f"{result['cache_hits']} cache hits)", flush=True)

    # JAXSEP_AUTOTUNE=0 keeps auto's fixed rules: the cold run then measures nothing
    autotune = os.environ.get("JAXSEP_AUTOTUNE", "") != "0"
    report = {"device": _timing.device_description(), "jax": _timing.jax.__version__,
              "flags": args.flags, "autotune": autotune, "runs": runs,
              "command": ("" if autotune else "JAXSEP_AUTOTUNE=0 ")
              + "python experiments/bench_startup.py " + " ".join(
                  shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))}
    def step_phases(run: dict) -> str:
        phases = run["train_step_seconds"]
        return " / ".join(f"{phases.get(p, 0.0):.1f}" for p in ("trace", "lower", "compile"))

    rows = "\n".join(
        f"| {r['kind']} | {r['first_step_seconds']:.1f} | {r['import_seconds']:.1f} | "
        f"{len(r['compile_seconds'])} | {sum(r['compile_seconds']):.1f} | "
        f"{max(r['compile_seconds'], default=0):.1f} | {r['cache_hits']} | {step_phases(r)} |"
        for r in runs)
    table = (
        f"# Start-up of jaxsep train ({report['device']})\n\n"
        f"jax {report['jax']}; flags `{args.flags}`; `impl=\"auto\"` "
        + ("measures (autotune on)" if autotune else "by fixed rules (`JAXSEP_AUTOTUNE=0`)")
        + f". Command: `{report['command']}`.\n\n"
        "| run | first step s | imports + set-up s | compilations | compile s | longest s | "
        "cache hits | train step: trace / lower / compile s |\n"
        "|---|---|---|---|---|---|---|---|\n" + rows + "\n\n"
        "Seconds from process start to the end of the first training step. Cold: empty JAX "
        "compilation cache and autotune cache; warm: the caches the runs before filled. The "
        "train step's phases (jax.monitoring): tracing to a jaxpr (with autotune's "
        "measurements when it measures), lowering to StableHLO, and XLA's compile, which on "
        "a cache hit is the retrieval of the compiled program.\n")
    _timing.write_report(args.out, f"bench_startup_{_timing.jax.default_backend()}", report,
                         table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
