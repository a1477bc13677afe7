"""A sweep's results: one row per point (from its run folder or its record), written as
CSV, Markdown and a plot by :func:`collect`, and the dry run's table of what would run."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flax import nnx

from jaxsep import models
from jaxsep._io import atomic_write
from jaxsep.summary import summary as model_summary
from jaxsep.sweep.measures import (
    ACCURACY_TARGETS,
    LATENCY_BATCHES,
    MEASURED_TIMES,
    pareto_front,
    spearman,
    time_to_accuracy,
)
from jaxsep.sweep.plots import plot_costs, plot_speed
from jaxsep.sweep.spec import (
    STORED_RESOLUTION,
    Point,
    Sweep,
    SweepError,
    _check_retrain,
    _format_value,
    _stderr,
    select,
)
from jaxsep.sweep.speed import latency_ms, read_speed, step_seconds
from jaxsep.sweep.state import CONVERSION_FILE, _state_or_foreign, _write_record, point_state
from jaxsep.train import run_folder
from jaxsep.train.model_from_config import model_options

__all__ = ["CSV_FIELDS", "Collected", "collect", "dry_run_table", "point_costs"]

# Training seconds to each accuracy target, and inference latency at each batch (ms).
TIME_TO_FIELDS = tuple(f"seconds_to_{round(100 * t)}" for t in ACCURACY_TARGETS)
LATENCY_FIELDS = tuple(f"latency_ms_batch{b}" for b in LATENCY_BATCHES)
# One CSV row per point, in this order.
CSV_FIELDS = (
    "label",
    "status",
    "model",
    "conv",
    "groups",
    "depth_multiplier",
    "width",
    "resolution",
    "params",
    "macs",
    "best_test_accuracy",
    "best_epoch",
    "final_test_accuracy",
    "converted_test_accuracy",
    "factorize_error",
    "init_from",
    "epochs",
    "images_per_second",
    *LATENCY_FIELDS,
    "train_seconds",
    *TIME_TO_FIELDS,
    "wall_seconds",
    "seed",
    "dataset",
    "num_train",
    "num_test",
    "device",
    "run",
)

# Fields that describe bookkeeping, left out of the report's "shared settings" line.
BOOKKEEPING_FIELDS = run_folder.IGNORED_FIELDS | {"eval_every", "checkpoint_every_steps"}


def point_costs(config: Any) -> tuple[int, int]:
    """``(params, multiply-adds per image)`` of a config's model, counted abstractly by
    :func:`jaxsep.summary.summary` exactly as ``jaxsep info`` counts them."""
    size = config.resolution or STORED_RESOLUTION
    model = nnx.eval_shape(lambda: models.create(config.model, **model_options(config)))
    totals = model_summary(model, (1, size, size, 3), show=False).totals
    return totals.params, totals.macs


# --------------------------------------------------------------------------------------------
# Collection


def _row(point: Point, state: str) -> dict[str, Any]:
    """The CSV row of a point in ``state`` (:func:`_state_or_foreign`), read from its run
    folder, or from its record when only that has finished it."""
    config = point.config
    folder = point.record if state == "recorded" else point.out
    row: dict[str, Any] = dict.fromkeys(CSV_FIELDS)
    row.update(
        label=point.label,
        model=config.model,
        conv=config.conv if config.conv is not None else
        ("separable" if config.model == "mobilenet_v1" else None),
        groups=config.groups,
        depth_multiplier=getattr(config, "depth_multiplier", None),
        width=config.width,
        resolution=config.resolution or STORED_RESOLUTION,
        init_from=point.init_from,
        seed=config.seed,
        run=str(point.out),
    )
    finished = state in ("finished", "recorded")
    summary = run_folder.read_json(folder / run_folder.SUMMARY_FILE) if finished else None
    if summary is not None:
        row.update(
            status="finished",
            params=summary.get("params"),
            macs=summary.get("macs"),
            best_test_accuracy=summary.get("best_test_accuracy"),
            best_epoch=summary.get("best_epoch"),
            final_test_accuracy=summary.get("final_test_accuracy"),
            epochs=summary.get("epochs"),
            images_per_second=summary.get("images_per_second"),
            train_seconds=summary.get("train_seconds"),
            wall_seconds=summary.get("wall_seconds"),
            dataset=summary.get("dataset"),
            num_train=summary.get("num_train"),
            num_test=summary.get("num_test"),
            device=(summary.get("device") or {}).get("kind"),
        )
        # Speed measured apart (speed.json) replaces the run's own clock, which counts
        # whatever else ran on the machine during the hours of training.
        speed = read_speed(folder)
        step = step_seconds(speed)
        metrics = _metrics(folder)
        if step is not None:
            row["images_per_second"] = speed["train"]["images_per_second"]
            row["train_seconds"] = metrics[-1]["global_step"] * step if metrics else None
        for field, target in zip(TIME_TO_FIELDS, ACCURACY_TARGETS):
            row[field] = time_to_accuracy(metrics, target, step_seconds=step)
        for field, batch in zip(LATENCY_FIELDS, LATENCY_BATCHES):
            row[field] = latency_ms(speed, batch)
    else:
        row["status"] = (
            f"partial ({run_folder.epochs_done(point.out)}/{config.epochs} epochs)"
            if state == "partial"
            else "not run" if state == "new" else "other configuration in folder"
        )
        row["epochs"] = config.epochs
        row["dataset"] = config.dataset
    if row["params"] is None or row["macs"] is None:
        row["params"], row["macs"] = point_costs(config)
    if point.factorize is not None:
        conversion = run_folder.read_json(folder / CONVERSION_FILE)
        if conversion is not None:
            row["converted_test_accuracy"] = conversion.get("test_accuracy")
            row["factorize_error"] = conversion.get("mean_relative_error")
    return row


def _metrics(folder: Path) -> list[dict[str, Any]]:
    """The lines of ``folder``'s metrics.jsonl ([] when it has none)."""
    try:
        text = (folder / run_folder.METRICS_FILE).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_FIELDS})
    return buffer.getvalue()


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _millions(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.2f} M"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes = round(seconds / 60)
    return f"{minutes // 60}:{minutes % 60:02d}"


def _shared_and_varying(sweep: Sweep) -> tuple[dict[str, Any], list[str]]:
    """The TrainConfig fields equal in every point (bookkeeping aside), and those that vary."""
    configs = []
    for point in sweep.points:
        values = point.config.to_dict()
        values.update(lr=point.config.resolved_lr, weight_decay=point.config.resolved_weight_decay)
        if point.config.optimizer == "sgd":
            values.update(adam_b1=None, adam_b2=None)
        else:
            values.update(momentum=None, nesterov=None)
        configs.append(values)
    shared, varying = {}, []
    for key in configs[0]:
        if key in BOOKKEEPING_FIELDS:
            continue
        values = [c[key] for c in configs]
        if all(v is None for v in values) and key in ("adam_b1", "adam_b2", "momentum",
                                                       "nesterov"):
            continue  # the other optimizer's
        if all(v == values[0] for v in values):
            shared[key] = values[0]
        else:
            varying.append(key)
    return shared, varying


def _milliseconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _markdown(
    sweep: Sweep, rows: Sequence[Mapping[str, Any]], csv_name: str, png: str | None,
    speed_png: str | None = None, latencies: Sequence[Mapping[str, Any]] = (),
) -> str:
    shared, varying = _shared_and_varying(sweep)
    lines = [f"# {sweep.name} ({sweep.preset} preset)", ""]
    if sweep.description:
        lines += [sweep.description.strip(), ""]
    source = f"`{sweep.source}`" if sweep.source is not None else "(a dict)"
    lines += [
        f"Sweep file {source}, preset `{sweep.preset}`; runs in `{sweep.runs_dir / sweep.id}/`; "
        f"all columns in `{csv_name}`; each finished point's result files in `{sweep.id}/`.",
        "",
        "Shared by every point: " + ", ".join(f"{k}={_format_value(v)}" for k, v in shared.items())
        + " (none: the model's or the harness's default; see jaxsep.train.TrainConfig).",
        "",
        "Varying between points: " + (", ".join(varying) if varying else "nothing") + ".",
        "",
    ]
    datasets = sorted({f"{r['dataset']} ({r['num_train']} train / {r['num_test']} test)"
                       for r in rows if r["status"] == "finished"})
    devices = sorted({str(r["device"]) for r in rows if r["status"] == "finished"})
    if datasets:
        lines += [f"Data: {'; '.join(datasets)}. Device: {'; '.join(devices)}. Accuracy: "
                  "test accuracy of the best epoch (best) and of the last (final).", ""]
    factorized = any(r["init_from"] for r in rows)
    extra = [k for k in varying if k not in
             ("model", "conv", "groups", "depth_multiplier", "width", "resolution", "epochs")]
    header = ["point", "model", "conv", "width", "res", "params", "MACs", "best acc",
              "final acc"]
    if factorized:
        header += ["after conversion", "factorize error"]
    header += ["epochs", *extra, "img/s", "train h:mm",
               *(f"to {round(100 * t)}%" for t in ACCURACY_TARGETS)]
    if sweep.measure_speed:
        header += [f"b{b} ms" for b in LATENCY_BATCHES]
    header += ["status"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_label = {p.label: p for p in sweep.points}
    for row in rows:
        conv = row["conv"] or "-"
        if row["groups"] is not None:
            conv += f" g={row['groups']}"
        if row["depth_multiplier"] is not None:
            conv += f" M={row['depth_multiplier']}"
        cells = [
            row["label"], row["model"], conv, f"{row['width']:g}", str(row["resolution"]),
            _millions(row["params"]), _millions(row["macs"]),
            _percent(row["best_test_accuracy"]), _percent(row["final_test_accuracy"]),
        ]
        if factorized:
            error = row["factorize_error"]
            cells += [_percent(row["converted_test_accuracy"]),
                      "-" if error is None else f"{error:.3f}"]
        config = by_label[row["label"]].config
        speed = row["images_per_second"]
        cells += [str(row["epochs"]), *(_format_value(getattr(config, k)) for k in extra),
                  "-" if speed is None else f"{speed:.0f}", _duration(row["train_seconds"]),
                  *(_duration(row[k]) for k in TIME_TO_FIELDS)]
        if sweep.measure_speed:
            cells += [_milliseconds(row[k]) for k in LATENCY_FIELDS]
        cells += [row["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    if factorized:
        lines += ["", "After conversion: the converted model's test accuracy before fine-tuning. "
                  "Factorize error: the mean over the 3x3 layers of ||W - fused||_F / ||W||_F."]
    targets = " and ".join(f"{round(100 * t)}%" for t in ACCURACY_TARGETS)
    lines += ["", f"To {targets}: the training time (h:mm, compilation and evaluation "
              "excluded) until the first evaluation at or above that test accuracy; - when "
              "not reached."]
    if sweep.measure_speed:
        lines[-1] += (" Img/s, train h:mm and the times to an accuracy come from the training "
                      "step time measured apart (`speed.json`): optimizer steps times that "
                      "step time, not the run's own clock, which counts whatever else the "
                      "machine ran during the hours of training.")
        lines += ["", *_speed_lines(latencies, rows)]
    if png is not None:
        lines += ["", f"![test accuracy against parameters and multiply-adds]({png})"]
    if speed_png is not None:
        lines += ["", f"![test accuracy against multiply-adds and measured time]({speed_png})"]
    return "\n".join(lines) + "\n"


def correlations(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, float | None, int]]:
    """``(measured time, Spearman's rank correlation with multiply-adds, number of points)``
    for each of :data:`MEASURED_TIMES`, over the finished rows that have both values."""
    result = []
    for words, value in MEASURED_TIMES:
        pairs = [(row["macs"], value(row)) for row in rows if row["status"] == "finished"
                 and row["macs"] is not None and value(row) is not None]
        rho = spearman([m for m, _ in pairs], [t for _, t in pairs]) if pairs else None
        result.append((words, rho, len(pairs)))
    return result


def correlation_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """One sentence stating :func:`correlations` as numbers."""
    parts = [f"{words} {'-' if rho is None else f'{rho:+.2f}'} (n={n})"
             for words, rho, n in correlations(rows)]
    return ("Spearman rank correlation of multiply-adds with measured time: " + "; ".join(parts)
            + " (+1: the same order; ties share their mean rank; -: undefined, fewer than two "
            "points or one side constant).")


def _speed_lines(records: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]
                 ) -> list[str]:
    """The Markdown paragraphs on latency: how it was measured (``records``: the finished
    points' ``speed.json``), then the correlations."""
    batches = ", ".join(f"b{b}" for b in LATENCY_BATCHES)
    note = (f"{batches} ms: inference latency of one forward pass at that batch size "
            "(`jax.jit` of the eval-mode model, XLA's default compiler options; median over "
            "blocks of a block's median; `speed.json` in each point's folder), measured apart "
            "from training, as the training step's time: right after the point trained, or "
            "for every point in one sitting (`jaxsep sweep FILE --measure`).")
    if records:
        where = sorted({f"{r['device']['kind']} ({r['processor']}, {r['cpu_count']} cores)"
                        for r in records})
        loads = [r["load_average_before"][0] for r in records if r.get("load_average_before")]
        note += f" Measured on {'; '.join(where)}"
        if loads:
            note += (f"; 1-minute load average before measuring {min(loads):.2f} to "
                     f"{max(loads):.2f}")
        note += "."
    return [note, "", correlation_text(rows), "", front_text(rows)]


# The costs a user may have a budget in: (words, the value of a report row, its format).
_BUDGETS = (
    ("training time", lambda row: row["train_seconds"], _duration),
    (f"inference latency at batch {LATENCY_BATCHES[0]}",
     lambda row: row[f"latency_ms_batch{LATENCY_BATCHES[0]}"],
     lambda ms: f"{_milliseconds(ms)} ms"),
)


def front_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """One sentence per cost of :data:`_BUDGETS`: the finished points on the Pareto front of
    best test accuracy against that cost (:func:`jaxsep.sweep.measures.pareto_front`),
    cheapest first, so that a reader with a budget picks the last one within it."""
    parts = []
    for words, cost, formatted in _BUDGETS:
        points = [(row["label"], cost(row), row["best_test_accuracy"]) for row in rows
                  if row["status"] == "finished" and cost(row) is not None
                  and row["best_test_accuracy"] is not None]
        front = pareto_front(points)
        listed = ", ".join(f"{label} ({formatted(c)}, {_percent(a)})" for label, c, a in front)
        parts.append(f"by {words}: {listed or '-'}")
    return ("Worth their cost (the Pareto front: no other finished point costs at most as much "
            "and is more accurate; cheapest first, so within a budget pick the last one that "
            "fits it) " + "; ".join(parts) + ".")


@dataclasses.dataclass(frozen=True)
class Collected:
    """What :func:`collect` wrote: the rows and the paths (``png`` None when not drawn)."""

    rows: tuple[dict[str, Any], ...]
    csv: Path
    markdown: Path
    png: Path | None
    speed_png: Path | None = None  # sweeps that measure latency


def collect(
    sweep: Sweep,
    results_dir: str | os.PathLike | None = None,
    *,
    plot: bool = True,
    log: Callable[[str], None] = _stderr,
) -> Collected:
    """Writes ``<results_dir>/<sweep id>.csv`` and ``.md`` (one row per point, unfinished
    points included with their status) and, with matplotlib installed, ``.png``: best test
    accuracy against parameters and against multiply-adds, log x, one series per conv kind,
    points labelled. A sweep that measures latency also gets ``_speed.png`` (accuracy against
    multiply-adds and measured time), time and latency columns and the rank correlations of
    multiply-adds with measured time in the Markdown. Every file is written atomically.

    A row comes from the point's run folder, or from its record (``<results_dir>/<sweep
    id>/<label>/``) when only that has finished it, so the records alone give the same files.
    The record of each point finished in its run folder is written (back-filled) when it is
    missing or out of date. ``results_dir`` defaults to the sweep's."""
    if results_dir is not None:
        sweep = sweep.with_results_dir(results_dir)
    results_dir = sweep.results_dir
    rows, latencies = [], []
    for point in sweep.points:
        state = _state_or_foreign(point)
        if state == "finished":
            _write_record(point)
        rows.append(_row(point, state))
        if state in ("finished", "recorded"):
            latencies.append(read_speed(point.record if state == "recorded" else point.out))
    csv_path = results_dir / f"{sweep.id}.csv"
    md_path = results_dir / f"{sweep.id}.md"
    png_path = results_dir / f"{sweep.id}.png"
    atomic_write(csv_path, _csv_text(rows).encode())
    speed_path = results_dir / f"{sweep.id}_speed.png"
    drawn = speed_drawn = False
    if plot:
        drawn = plot_costs(sweep, rows, png_path)
        speed_drawn = sweep.measure_speed and plot_speed(sweep, rows, speed_path)
        if not drawn:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                log("matplotlib is not installed (pip install 'jaxsep[plot]'), so no plot was "
                    f"drawn; {csv_path.name} and {md_path.name} are written")
            else:
                log("no point has finished yet, so no plot was drawn")
    markdown = _markdown(sweep, rows, csv_path.name, png_path.name if drawn else None,
                         speed_path.name if speed_drawn else None,
                         [r for r in latencies if r is not None])
    atomic_write(md_path, markdown.encode())
    return Collected(tuple(rows), csv_path, md_path, png_path if drawn else None,
                     speed_path if speed_drawn else None)


# --------------------------------------------------------------------------------------------
# Dry run (before anything is trained)


def dry_run_table(
    sweep: Sweep, only: Sequence[str] | None = None, retrain: Sequence[str] | None = None
) -> str:
    """The grid as text: each point's model options, parameters and multiply-adds per image
    (the totals of ``jaxsep info``), state (as :func:`run_sweep` with ``only`` and
    ``retrain`` would find it) and run folder, then the shared settings."""
    header = ["point", "model", "conv", "width", "res", "params", "multiply-adds", "state"]
    body = []
    retrain = _check_retrain(sweep, retrain)
    for point in select(sweep, [*only, *retrain] if only else None):
        config = point.config
        params, macs = point_costs(config)
        try:
            state = point_state(point, records=point.label not in retrain)
        except SweepError:
            state = "OTHER CONFIG"
        conv = config.conv or ("separable" if config.model == "mobilenet_v1" else "-")
        if config.groups is not None:
            conv += f" g={config.groups}"
        if getattr(config, "depth_multiplier", None) is not None:
            conv += f" M={config.depth_multiplier}"
        if state not in ("finished", "recorded") and point.init_from:
            state += f" (from {point.init_from})"
        resolution = str(config.resolution or STORED_RESOLUTION)
        body.append([point.label, config.model, conv, f"{config.width:g}", resolution,
                     f"{params:,}", f"{macs:,}", state])
    table = [header, *body]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    right = {3, 4, 5, 6}

    def fmt(line: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(line, widths))).rstrip()

    shared, varying = _shared_and_varying(sweep)
    lines = [
        f"sweep {sweep.name}, preset {sweep.preset}: {len(body)} point(s) in "
        f"{sweep.runs_dir / sweep.id}/",
        "",
        fmt(header),
        "  ".join("-" * w for w in widths),
        *map(fmt, body),
        "",
        "shared: " + ", ".join(f"{k}={_format_value(v)}" for k, v in shared.items()),
        "varying: " + (", ".join(varying) if varying else "nothing"),
    ]
    return "\n".join(lines)
