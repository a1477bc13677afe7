"""The sweep's figures (matplotlib, optional): test accuracy against parameters and
multiply-adds (every sweep), and against multiply-adds and measured time (sweeps that measure
latency; ``docs/sweeps.md``, "Speed"). Each writes a PNG atomically, or returns False without
matplotlib."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxsep._io import atomic_write
from jaxsep.sweep.measures import MEASURED_TIMES
from jaxsep.sweep.spec import Sweep

__all__ = ["plot_costs", "plot_speed"]


def _series(row: Mapping[str, Any]) -> str:
    """The plot series of a row: the conv kind for MobileNetV1, else the model."""
    if row["model"] == "mobilenet_v1":
        return row["conv"] or "separable"
    return row["model"]


def _compact_count(value: float, _position: object = None) -> str:
    """A count as a short tick label: 200k, 1M, 2.5M, 30G."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def plot_costs(sweep: Sweep, rows: Sequence[Mapping[str, Any]], path: Path) -> bool:
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
        _log_x(ax, ticker, title)
    axes[0].set_ylabel("best test accuracy (%)")
    axes[0].legend(fontsize=8)
    figure.suptitle(f"{sweep.name} ({sweep.preset} preset)")
    _save(figure, path)
    return True


def _log_x(ax: Any, ticker: Any, title: str) -> None:
    """A log x axis with compact tick labels at 1, 2 and 5 times each power of ten:
    matplotlib's default labels every minor tick in scientific notation when the data span
    less than a decade or two, and those labels overlap."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0,)))
    ax.xaxis.set_minor_locator(ticker.LogLocator(base=10, subs=(2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(_compact_count))
    ax.xaxis.set_minor_formatter(ticker.FuncFormatter(_compact_count))
    ax.margins(x=0.12, y=0.08)
    ax.set_xlabel(title + " (log scale)")
    ax.grid(True, which="both", alpha=0.3)


def _save(figure: Any, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write(path, buffer.getvalue())


# The speed figure's panels: (title of the x axis, the row's value).
SPEED_PANELS = (
    ("multiply-adds per image", lambda row: row["macs"]),
    *((f"{words} (ms, measured)", value) for words, value in MEASURED_TIMES),
)


def plot_speed(sweep: Sweep, rows: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Draws best test accuracy against multiply-adds and against each measured time
    (:data:`SPEED_PANELS`, log x, shared y) into ``path``: one series per model (its points
    joined in width order and labelled with the width), so the reader sees where the order
    by multiply-adds and the order by measured time differ. False (and nothing written)
    without matplotlib or without a finished point."""
    try:
        from matplotlib import ticker
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    finished = [row for row in rows if row["best_test_accuracy"] is not None]
    if not finished:
        return False
    figure = Figure(figsize=(12, 9), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2, sharey=True).ravel()
    series: dict[str, list[Mapping[str, Any]]] = {}
    for row in finished:  # the model, and its conv kind when not its default
        name = row["model"] if row["conv"] in (None, "separable") else (
            f"{row['model']} ({row['conv']})")
        series.setdefault(name, []).append(row)
    for ax, (title, value) in zip(axes, SPEED_PANELS):
        for index, (name, items) in enumerate(series.items()):
            items = sorted((r for r in items if value(r) is not None), key=lambda r: r["width"])
            xs = [value(r) for r in items]
            ys = [100 * r["best_test_accuracy"] for r in items]
            ax.plot(xs, ys, marker="os^vD<>ph*"[index % 10], label=name)
            for x, y, row in zip(xs, ys, items):
                ax.annotate(f"{row['width']:g}", (x, y), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
        _log_x(ax, ticker, title)
    for ax in axes[::2]:
        ax.set_ylabel("best test accuracy (%)")
    axes[0].legend(fontsize=8)
    devices = sorted({str(r["device"]) for r in finished})
    figure.suptitle(f"{sweep.name} ({sweep.preset} preset): accuracy against multiply-adds and "
                    f"measured time on {'; '.join(devices)} (labels: width multiplier)")
    _save(figure, path)
    return True


