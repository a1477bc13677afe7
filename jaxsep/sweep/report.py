"""A sweep's results: one row per point (from its run folder or its record), written as
CSV, Markdown and a plot by :func:`collect`, and the dry run's table of what would run."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flax import nnx

from jaxsep import models
from jaxsep._io import atomic_write
from jaxsep.summary import summary as model_summary
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
from jaxsep.sweep.state import CONVERSION_FILE, _state_or_foreign, _write_record, point_state
from jaxsep.train import run_folder
from jaxsep.train.model_from_config import model_options

__all__ = ["CSV_FIELDS", "Collected", "collect", "dry_run_table", "point_costs"]

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
    "train_seconds",
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
    summary = run_folder.read_json(folder / run_folder.SUMMARY_FILE) if state in ("finished", "recorded") else None
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
    else:
        row["status"] = (
            f"partial ({run_folder.epochs_done(point.out)}/{config.epochs} epochs)" if state == "partial"
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


def _series(row: Mapping[str, Any]) -> str:
    """The plot series of a row: the conv kind for MobileNetV1, else the model."""
    if row["model"] == "mobilenet_v1":
        return row["conv"] or "separable"
    return row["model"]


def _markdown(
    sweep: Sweep, rows: Sequence[Mapping[str, Any]], csv_name: str, png: str | None
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
    header += ["epochs", *extra, "img/s", "train h:mm", "status"]
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
                  row["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    if factorized:
        lines += ["", "After conversion: the converted model's test accuracy before fine-tuning. "
                  "Factorize error: the mean over the 3x3 layers of ||W - fused||_F / ||W||_F."]
    if png is not None:
        lines += ["", f"![test accuracy against parameters and multiply-adds]({png})"]
    return "\n".join(lines) + "\n"


def _compact_count(value: float, _position: object = None) -> str:
    """A count as a short tick label: 200k, 1M, 2.5M, 30G."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _plot(sweep: Sweep, rows: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Draws the two panels into ``path``; False (and nothing written) without matplotlib
    or without a finished point."""
    try:
        from matplotlib import ticker
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    points: dict[str, list[tuple[float, float, float, str]]] = {}
    for row in rows:
        if row["best_test_accuracy"] is None:
            continue
        series = _series(row)
        name = series + (" (fine-tuned)" if row["init_from"] else "")
        points.setdefault(name, []).append(
            (row["params"], row["macs"], 100 * row["best_test_accuracy"], row["label"])
        )
        if row["converted_test_accuracy"] is not None:
            points.setdefault(series + " (after conversion)", []).append(
                (row["params"], row["macs"], 100 * row["converted_test_accuracy"], row["label"])
            )
    if not points:
        return False
    figure = Figure(figsize=(12, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2, sharey=True)
    for index, (ax, title) in enumerate(zip(axes, ("parameters", "multiply-adds per image"))):
        for name, items in points.items():
            items = sorted(items, key=lambda item: item[index])
            xs = [item[index] for item in items]
            ys = [item[2] for item in items]
            converted = name.endswith("(after conversion)")
            ax.plot(xs, ys, marker="o", label=name, linestyle="--" if converted else "-",
                    fillstyle="none" if converted else "full")
            if converted:
                continue  # labelled at its fine-tuned point
            for x, y, item in zip(xs, ys, items):
                ax.annotate(item[3], (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
        ax.set_xscale("log")
        # Compact labels at 1, 2 and 5 times each power of ten: matplotlib's default labels
        # every minor tick in scientific notation when the data span less than a decade or
        # two, and those labels overlap.
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0,)))
        ax.xaxis.set_minor_locator(ticker.LogLocator(base=10, subs=(2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(_compact_count))
        ax.xaxis.set_minor_formatter(ticker.FuncFormatter(_compact_count))
        ax.margins(x=0.12, y=0.08)
        ax.set_xlabel(title + " (log scale)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("best test accuracy (%)")
    axes[0].legend(fontsize=8)
    figure.suptitle(f"{sweep.name} ({sweep.preset} preset)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write(path, buffer.getvalue())
    return True


@dataclasses.dataclass(frozen=True)
class Collected:
    """What :func:`collect` wrote: the rows and the paths (``png`` None when not drawn)."""

    rows: tuple[dict[str, Any], ...]
    csv: Path
    markdown: Path
    png: Path | None


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
    points labelled. Every file is written atomically.

    A row comes from the point's run folder, or from its record (``<results_dir>/<sweep
    id>/<label>/``) when only that has finished it, so the records alone give the same files.
    The record of each point finished in its run folder is written (back-filled) when it is
    missing or out of date. ``results_dir`` defaults to the sweep's."""
    if results_dir is not None:
        sweep = sweep.with_results_dir(results_dir)
    results_dir = sweep.results_dir
    rows = []
    for point in sweep.points:
        state = _state_or_foreign(point)
        if state == "finished":
            _write_record(point)
        rows.append(_row(point, state))
    csv_path = results_dir / f"{sweep.id}.csv"
    md_path = results_dir / f"{sweep.id}.md"
    png_path = results_dir / f"{sweep.id}.png"
    atomic_write(csv_path, _csv_text(rows).encode())
    drawn = False
    if plot:
        drawn = _plot(sweep, rows, png_path)
        if not drawn:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                log("matplotlib is not installed (pip install 'jaxsep[plot]'), so no plot was "
                    f"drawn; {csv_path.name} and {md_path.name} are written")
            else:
                log("no point has finished yet, so no plot was drawn")
    markdown = _markdown(sweep, rows, csv_path.name, png_path.name if drawn else None)
    atomic_write(md_path, markdown.encode())
    return Collected(tuple(rows), csv_path, md_path, png_path if drawn else None)


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
