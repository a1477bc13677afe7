"""Pure functions over a sweep's results: the training time a run took to reach a test
accuracy (from its ``metrics.jsonl`` lines and, when measured, its step time), Spearman's
rank correlation, and the points worth their cost (the Pareto front of accuracy against a
cost); NumPy only.

The report uses them to set measured time beside multiply-adds (``docs/sweeps.md``, "Speed").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxsep._validation import check_number

__all__ = [
    "ACCURACY_TARGETS",
    "LATENCY_BATCHES",
    "MEASURED_TIMES",
    "average_ranks",
    "pareto_front",
    "spearman",
    "time_to_accuracy",
]

# The test accuracies whose time to reach the report states (CSV columns seconds_to_80, ...).
ACCURACY_TARGETS = (0.80, 0.85)
# The batch sizes of the measured inference latency (CSV columns latency_ms_batch1, ...): one
# image (interactive use) and one training batch (throughput).
LATENCY_BATCHES = (1, 128)
# The measured times a report sets beside multiply-adds: (words, the value in ms of a report
# row, or None).
MEASURED_TIMES = (
    *((f"inference latency at batch {b}", lambda row, b=b: row[f"latency_ms_batch{b}"])
      for b in LATENCY_BATCHES),
    ("training time per image",
     lambda row: 1e3 / row["images_per_second"] if row["images_per_second"] else None),
)


def time_to_accuracy(metrics: Iterable[Mapping[str, Any]], target: float, *,
                     step_seconds: float | None = None) -> float | None:
    """Seconds of training until the first evaluation at or above ``target``, or None when
    no evaluation reached it.

    Args:
      metrics: a run's ``metrics.jsonl`` lines in epoch order, each with ``epoch_seconds``
        (the epoch's training time: compilation and evaluation excluded; an epoch resumed
        after an interruption carries its first part), ``global_step`` (optimizer steps at
        its end) and ``test_accuracy`` (None in an epoch that was not evaluated).
      target: a test accuracy in [0, 1].
      step_seconds: the time of one training step measured apart on an idle machine
        (:func:`jaxsep.sweep.speed.measure_training`); None: the run's own clock.

    Returns:
      With ``step_seconds``: the optimizer steps until that evaluation times
      ``step_seconds``, which does not depend on what else ran on the machine during the
      hours of training. Without: the sum of ``epoch_seconds`` up to and including that
      epoch, the harness's training clock. Neither counts the time spent compiling,
      evaluating or stopped between sessions.
    """
    check_number("time_to_accuracy", "target", target, low=0.0, high=1.0, high_open=False)
    if step_seconds is not None:
        check_number("time_to_accuracy", "step_seconds", step_seconds, low=0.0,
                     low_open=True)
    seconds = 0.0
    for line in metrics:
        seconds += line["epoch_seconds"]
        accuracy = line.get("test_accuracy")
        if accuracy is not None and accuracy >= target:
            return seconds if step_seconds is None else line["global_step"] * step_seconds
    return None


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of ``values`` (shape ``(n,)``), ties sharing the mean of their ranks (as
    ``scipy.stats.rankdata``'s default)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"average_ranks: values must be one-dimensional, but got shape "
                         f"{values.shape}")
    order = np.argsort(values, kind="stable")
    ordinal = np.empty(len(values), dtype=np.float64)
    ordinal[order] = np.arange(1, len(values) + 1)
    _, group, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(group, weights=ordinal)
    return sums[group] / counts[group]


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation of paired ``x`` and ``y`` (shapes ``(n,)``): the Pearson
    correlation of their average ranks, in [-1, 1]. None when it is undefined: fewer than
    two pairs, or all values of one side equal.

    Raises:
      ValueError: ``x`` and ``y`` differ in length, or hold a NaN.
    """
    if len(x) != len(y):
        raise ValueError(f"spearman: x and y must have the same length, but got {len(x)} "
                         f"and {len(y)}")
    if np.isnan(np.asarray(x, dtype=np.float64)).any() or np.isnan(
            np.asarray(y, dtype=np.float64)).any():
        raise ValueError("spearman: x and y must not hold NaN")
    if len(x) < 2:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    if norm == 0:
        return None
    return float((rx * ry).sum() / norm)


def pareto_front(points: Iterable[tuple[Any, float, float]]) -> list[tuple[Any, float, float]]:
    """The ``(name, cost, accuracy)`` points that no other point beats: none costs at most as
    much and is more accurate, or costs less and is at least as accurate. Sorted by cost, so
    accuracy rises along the list; for a budget, the last point that costs at most the budget
    is the most accurate one it affords. Of points equal in both, the first is kept. NaN is a
    ValueError.
    """
    points = list(points)
    for name, cost, accuracy in points:
        if np.isnan(cost) or np.isnan(accuracy):
            raise ValueError(f"pareto_front: point {name!r} has NaN cost or accuracy "
                             f"({cost!r}, {accuracy!r})")
    front: list[tuple[Any, float, float]] = []
    # Cheapest first, the more accurate first among equal costs: a point is on the front
    # exactly when it is more accurate than every point before it.
    for point in sorted(points, key=lambda p: (p[1], -p[2])):
        if not front or point[2] > front[-1][2]:
            front.append(point)
    return front
