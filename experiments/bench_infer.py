"""Benchmark of inference latency: ImageNet models at batch 1 and 32, 224x224, against PyTorch.

Measures, on the default JAX backend (or ``--device``), the latency of one forward pass of
jaxsep's ``mobilenet_v2`` (and of ``mobilenet_v3_large`` and ``efficientnet_b0`` when
``jaxsep.models.list_models()`` has them) in eval mode, run as a JAX user would: the model split
with ``nnx.split`` and a plain ``jax.jit`` of ``nnx.merge(graphdef, state)(x)`` (XLA's default
compiler options; ``impl="auto"`` measures its lowerings unless ``JAXSEP_AUTOTUNE=0``), against

* ``torch CL``: torchvision's model of the same name (random weights), ``eval()``, channels-last
  input and weights, under ``torch.inference_mode()``, on the CPU or on CUDA when JAX runs on
  a GPU and torch sees one (else "n/a");
* ``onnxruntime``: that torch model exported to ONNX and run by ONNX Runtime, when
  ``onnxruntime`` imports (else "n/a", with the reason).

Method (see docs/performance.md): all implementations of one (model, batch) run in the same
process, in blocks of calls (the first call of each block dropped), the order rotated between
rounds; a figure is the median over rounds, a ratio the median of the per-round ratios. Each
implementation's first call (JAX: tracing, any autotune measurement, compilation) is timed
apart, never inside a timed call. Inputs are NHWC for JAX and channels-last NCHW for torch.

    python experiments/bench_infer.py                 # writes results/bench_infer_<backend>.{json,md}
    python experiments/bench_infer.py --device gpu    # the same on a GPU
    python experiments/bench_infer.py --quick --no-torch --out /tmp/bi   # smoke test

Results: ``experiments/results/bench_infer_<backend>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jax
from flax import nnx

from jaxsep import models

from _timing import (
    device_description,
    Rounds,
    write_report,
    add_device_flag,
    select_device,
    torch_yardstick,
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
MODELS = ("mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0")  # those jaxsep has are run
BATCHES = (1, 32)
RESOLUTION = 224
QUICK = {"models": ("mobilenet_v2",), "batches": (1, 2), "resolution": 64, "rounds": 1, "calls": 2}


def _first_call(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _jax_call(name: str, batch: int, resolution: int):
    """A synchronized call of the jitted eval-mode model on a fixed NHWC batch."""
    model = models.create(name)
    model.eval()
    graphdef, state = nnx.split(model)

    @jax.jit
    def infer(state, x):
        return nnx.merge(graphdef, state)(x)

    x = jax.random.normal(jax.random.key(0), (batch, resolution, resolution, 3))
    return lambda: infer(state, x).block_until_ready()


def _torch_model(name: str, device: str):
    import torch
    import torchvision

    model = getattr(torchvision.models, name)(weights=None).eval()
    return model.to(device=device, memory_format=torch.channels_last)


def _torch_call(name: str, batch: int, resolution: int, device: str):
    import torch

    model = _torch_model(name, device)
    x = torch.randn(batch, 3, resolution, resolution, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def call():
        with torch.inference_mode():
            model(x)
        sync()

    return call


def _onnxruntime_call(name: str, batch: int, resolution: int, folder: Path, torch_device):
    """ONNX Runtime on the torch model exported to ONNX; raises when any step is missing."""
    import onnxruntime
    import torch

    model = _torch_model(name, "cpu")
    x = torch.randn(batch, 3, resolution, resolution)
    path = folder / f"{name}_{batch}.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"])
    wanted = "CUDAExecutionProvider" if torch_device == "cuda" else "CPUExecutionProvider"
    available = onnxruntime.get_available_providers()
    if wanted not in available:
        raise RuntimeError(f"onnxruntime has no {wanted} (has {available})")
    session = onnxruntime.InferenceSession(str(path), providers=[wanted])
    feed = {"x": x.numpy()}
    return lambda: session.run(None, feed)


def onnxruntime_status() -> tuple[bool, str]:
    """(whether ONNX Runtime imports, a note for the report)."""
    try:
        import onnxruntime
    except ImportError:
        return False, "onnxruntime n/a (not installed)"
    return True, f"onnxruntime {onnxruntime.__version__}"


def bench(name: str, batch: int, *, resolution: int, rounds: int, calls: int, torch_device,
          onnx: bool, folder: Path) -> dict:
    calls_by_name, first_s, notes = {}, {}, {}
    calls_by_name["jaxsep"] = _jax_call(name, batch, resolution)
    if torch_device:
        calls_by_name["torch CL"] = _torch_call(name, batch, resolution, torch_device)
    if onnx:
        try:
            calls_by_name["onnxruntime"] = _onnxruntime_call(
                name, batch, resolution, folder, torch_device
            )
        except Exception as error:  # noqa: BLE001 - reported in the table, not fatal
            notes["onnxruntime"] = f"{type(error).__name__}: {error}"
    for impl, call in calls_by_name.items():
        first_s[impl] = _first_call(call)
    timed = Rounds(calls_by_name).run(rounds, calls)
    return {
        "model": name,
        "batch": batch,
        "resolution": resolution,
        "ms": {impl: 1e3 * timed.seconds(impl) for impl in calls_by_name},
        "first_call_s": first_s,
        "images_per_second": {impl: batch / timed.seconds(impl) for impl in calls_by_name},
        "jaxsep/torch": timed.ratio("jaxsep", "torch CL"),
        "jaxsep/onnxruntime": timed.ratio("jaxsep", "onnxruntime"),
        "notes": notes,
    }


def markdown(report: dict) -> str:
    lines = [
        f"# Inference benchmark ({report['backend']}: {report['device']})",
        "",
        partial_note(report) +
        f"jax {report['jax']}, flax {report['flax']}, {report['torch_note']}, "
        f"{report['onnxruntime_note']}; float32, {report['resolution']}x{report['resolution']}, "
        f"eval mode, random weights; medians of {report['rounds']} rounds x {report['calls']} "
        f"calls; {host_memory_note(report)}; {autotune_note(report)}. "
        f"Command: `{report['command']}`.",
        "",
        "| model | batch | jaxsep ms | torch CL ms | onnxruntime ms | jaxsep/torch | "
        "jaxsep/onnxruntime | jaxsep img/s | jaxsep first call s |",
        "|---" * 9 + "|",
    ]
    for row in report["rows"]:
        ms = row["ms"]
        lines.append(
            f"| {row['model']} | {row['batch']} | {fmt(ms['jaxsep'])} | "
            f"{fmt(ms.get('torch CL'))} | {fmt(ms.get('onnxruntime'))} | "
            f"{fmt(row['jaxsep/torch'], 2, 'x')} | {fmt(row['jaxsep/onnxruntime'], 2, 'x')} | "
            f"{fmt(row['images_per_second']['jaxsep'], 1)} | "
            f"{fmt(row['first_call_s']['jaxsep'], 1)} |"
        )
    notes = sorted({f"{r['model']} batch {r['batch']}: onnxruntime {n}"
                    for r in report["rows"] for n in r["notes"].values()})
    lines += [
        "",
        "Latency of one forward pass (ms, lower is better); `jaxsep/torch` above 1 means "
        "jaxsep is slower. jaxsep: `jax.jit` of the `nnx.merge`d eval-mode model, XLA's default "
        "compiler options; its first call includes tracing, compilation and any `impl=\"auto\"` "
        "measurement. torch CL: torchvision's model, channels-last, `torch.inference_mode()`."
        + (f" Not run: {', '.join(report['missing_models'])} (not in "
           "`jaxsep.models.list_models()` yet)." if report["missing_models"] else ""),
        *([""] + [f"- {n}" for n in notes] if notes else []),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                        help="models to run, of those jaxsep has (default: all three)")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--resolution", type=int, default=RESOLUTION)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5, help="timed calls per block")
    parser.add_argument("--quick", action="store_true",
                        help="mobilenet_v2 only, batches 1 and 2 at 64x64, 1 round of 2 calls: "
                        "a smoke test")
    parser.add_argument("--no-torch", action="store_true",
                        help="skip torch (and ONNX Runtime, which runs the exported torch model)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default experiments/results; --quick writes only "
                        "with --out)")
    add_device_flag(parser)
    add_host_memory_flag(parser)
    add_write_each_flag(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.resolution = QUICK["models"], QUICK["batches"], QUICK["resolution"]
        args.rounds, args.calls = QUICK["rounds"], QUICK["calls"]
    memory = apply_host_memory(args)  # before the first JAX computation
    backend = select_device(args)
    torch_device, torch_version, torch_note = torch_yardstick(args.no_torch)
    onnx, onnx_note = (False, "onnxruntime n/a (--no-torch)") if args.no_torch else onnxruntime_status()
    available = set(models.list_models())
    report = {
        "backend": backend,
        "device": device_description(),
        "jax": jax.__version__,
        "flax": __import__("flax").__version__,
        "torch": torch_version if torch_device else None,
        "torch_note": torch_note,
        "onnxruntime_note": onnx_note,
        "resolution": args.resolution,
        "rounds": args.rounds,
        "calls": args.calls,
        **memory,
        **autotune_fields(),
        "missing_models": [m for m in args.models if m not in available],
        "command": "python experiments/bench_infer.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": [],
    }
    out_dir = args.out if args.out is not None else (None if args.quick else RESULTS)
    stem = f"bench_infer_{report['backend']}"
    planned = [(m, b) for m in args.models if m in available for b in args.batches]
    with tempfile.TemporaryDirectory() as folder:
        for name, batch in planned:
            row = bench(name, batch, resolution=args.resolution, rounds=args.rounds,
                        calls=args.calls, torch_device=torch_device, onnx=onnx,
                        folder=Path(folder))
            report["rows"].append(row)
            ms = row["ms"]
            print(f"{name} batch {batch}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items())
                  + f"; jaxsep first call {row['first_call_s']['jaxsep']:.1f} s", flush=True)
            if args.write_each and out_dir is not None and len(report["rows"]) < len(planned):
                report["partial"] = f"{len(report['rows'])} of {len(planned)}"
                write_report(out_dir, stem, report, markdown(report))
    report.pop("partial", None)
    table = markdown(report)
    print(table)
    if out_dir is not None:
        write_report(out_dir, stem, report, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
