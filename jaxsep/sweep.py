"""Sweeps (``jaxsep sweep``): a grid of training runs from one TOML file, run through
:func:`jaxsep.train.train_and_evaluate` and collected into a table and a plot.

A sweep file::

    [sweep]
    name = "width"                      # names runs/<name>_<preset>/ and the result files
    description = "Table 6: ..."        # optional; heads the Markdown report

    [base]                              # TrainConfig fields shared by every point
    model = "mobilenet_v1"
    epochs = 200

    [grid]                              # field -> values: one point per combination
    width = [1.0, 0.75, 0.5, 0.25]

    [[points]]                          # explicit points (after the grid's), each with
    label = "depthwise"                 # an optional label and its own TrainConfig fields
    conv = "separable"

    [[points]]                          # a factorized point: start from another point's
    label = "factorized-M2"             # best checkpoint, replace each full 3x3 conv by
    init_from = "standard"              # factorize_conv's depthwise + pointwise pair with
    factorize = 2                       # depth multiplier 2, evaluate, then fine-tune
    epochs = 1

    [presets.cpu]                       # overrides of [base] for one budget; a preset's
    epochs = 15                         # own [presets.<name>.grid] replaces grid entries
    [presets.full]
    epochs = 200

Precedence: TrainConfig defaults < ``[base]`` < the preset < the point's own values. The
sweep sets ``out`` itself: point ``P`` of sweep ``S`` with preset ``R`` runs in
``<runs-dir>/S_R/P/`` and the results are ``<results-dir>/S_R.csv``, ``.md`` and ``.png`` (the
preset is part of the name, so the cpu and full presets never overwrite each other). A grid
point's label lists its grid values in the grid's order, e.g. ``conv=standard,width=0.5``.

Running is resumable: a point whose ``summary.json`` exists for the same configuration (all
of its epochs) is skipped, a point with checkpoints is resumed by the harness, and a run
folder holding a different configuration is an error before anything is trained.

Records: run folders are big (checkpoints) and not kept in git, while a sweep may outlast the
machine or the checkout that runs it. So when a point finishes, its small result files
(``config.json``, ``metrics.jsonl``, ``summary.json`` and a factorized point's
``conversion.json``; never checkpoints) are copied into its record folder
``<results-dir>/S_R/P/``, next to the result files and meant to be committed with them
(:func:`collect` also back-fills the record of any point finished in its run folder). A point
whose record holds a ``summary.json`` of the same configuration (compared as a run folder's)
counts as finished even when its run folder is gone: it is skipped ("recorded") and
:func:`collect` reads its row from the record, so a fresh checkout regenerates the same
results. A record of another configuration is ignored (and replaced once the point trains).
The one thing a record cannot give is a checkpoint: a factorized point whose source is
finished only by its record stops the sweep before anything is trained; ``--retrain SOURCE``
ignores that record and trains the source again.

Factorized points (the ``init_from`` / ``factorize`` keys): the source point must be a
``mobilenet_v1`` with ``conv="standard"`` listed earlier in the file, with the same model,
width and variant. Its best checkpoint is converted with
:func:`jaxsep.models.factorize_mobilenet_v1` into ``<point>/converted/`` (a run folder with
``config.json`` and ``best/``), evaluated there with :func:`jaxsep.train.evaluate_run`
(``conversion.json`` records that accuracy and each layer's relative error), and the point
trains as ``conv="factorized"`` with ``init_from`` that folder.

The runner is meant for one process (one host); each point may use all of its devices.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import itertools
import json
import os
import re
import shutil
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxsep._io import atomic_write

__all__ = [
    "CSV_FIELDS",
    "Collected",
    "Outcome",
    "Point",
    "Sweep",
    "SweepError",
    "add_sweep_arguments",
    "collect",
    "convert_point",
    "dry_run_table",
    "load_sweep",
    "model_options",
    "point_costs",
    "point_state",
    "run_sweep",
    "run_sweep_command",
    "select",
    "sweep_from_dict",
]

SECTIONS = ("sweep", "base", "grid", "points", "presets")
# Keys of a [[points]] entry that are the sweep's, not TrainConfig fields.
POINT_KEYS = ("label", "init_from", "factorize")
# Fields the sweep sets itself.
SWEEP_SET_FIELDS = ("out", "init_from")
# Fields that never change a result and may differ between machines or sessions (where the
# data and the runs are, console output); ignored when a run folder's config is compared.
IGNORED_FIELDS = frozenset({"out", "quiet", "data_dir", "init_from"})
# Fields that describe bookkeeping, left out of the report's "shared settings" line.
BOOKKEEPING_FIELDS = frozenset(
    {"out", "quiet", "data_dir", "init_from", "eval_every", "checkpoint_every_steps"}
)
DEFAULT_PRESET = "cpu"
# CIFAR-10 and the synthetic set are stored at 32x32 (resolution=None keeps that).
STORED_RESOLUTION = 32
CONVERTED = "converted"  # a factorized point's converted source, inside its run folder
CONVERSION_FILE = "conversion.json"
# A run's files that its record keeps (those present), summary.json last: a record is complete
# once it has one (see _write_record).
RECORD_FILES = ("config.json", "metrics.jsonl", CONVERSION_FILE, "summary.json")
DEFAULT_RESULTS_DIR = "experiments/results"
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=,+-]*")

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


class SweepError(ValueError):
    """A bad sweep file, or a run folder that does not belong to the sweep."""


# --------------------------------------------------------------------------------------------
# The sweep file


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of a sweep.

    Attributes:
      label: its name (and its run folder's), unique in the sweep.
      overrides: what the point sets over ``[base]`` and the preset (its grid values, or its
        ``[[points]]`` fields).
      config: the complete :class:`~jaxsep.train.TrainConfig`, ``out`` its run folder.
      init_from: the label of the point whose best checkpoint it factorizes, or None.
      factorize: the depth multiplier of that conversion, or None.
      record: its record folder ``<results-dir>/<sweep id>/<label>/`` (see the module
        docstring), or None to keep no record.
    """

    label: str
    overrides: Mapping[str, Any]
    config: Any  # TrainConfig (imported lazily)
    init_from: str | None = None
    factorize: int | None = None
    record: Path | None = None

    @property
    def out(self) -> Path:
        return Path(self.config.out)


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A loaded sweep file: its points for one preset.

    Attributes:
      name: ``[sweep] name``.
      preset: the preset chosen.
      description: ``[sweep] description`` ("" if none).
      points: in the file's order (grid points first).
      runs_dir: the folder holding ``<id>/<label>/`` run folders.
      source: the file it was read from (None when built from a dict).
      results_dir: the folder of the result files and of the ``<id>/<label>/`` records.
    """

    name: str
    preset: str
    description: str
    points: tuple[Point, ...]
    runs_dir: Path
    source: Path | None = None
    results_dir: Path = Path(DEFAULT_RESULTS_DIR)

    @property
    def id(self) -> str:
        """``<name>_<preset>``: the runs' folder and the result files' stem."""
        return f"{self.name}_{self.preset}"

    @property
    def labels(self) -> list[str]:
        return [p.label for p in self.points]

    def point(self, label: str) -> Point:
        for point in self.points:
            if point.label == label:
                return point
        raise SweepError(
            f"sweep {self.name!r} has no point {label!r}; its points are {self.labels}"
        )

    def with_results_dir(self, results_dir: str | os.PathLike) -> Sweep:
        """The same sweep with its result files and records in ``results_dir``."""
        results_dir = Path(results_dir)
        if results_dir == self.results_dir:
            return self
        points = tuple(dataclasses.replace(p, record=results_dir / self.id / p.label)
                       for p in self.points)
        return dataclasses.replace(self, points=points, results_dir=results_dir)


def load_sweep(
    path: str | os.PathLike,
    *,
    preset: str = DEFAULT_PRESET,
    runs_dir: str | os.PathLike = "runs",
    results_dir: str | os.PathLike = DEFAULT_RESULTS_DIR,
) -> Sweep:
    """Reads a sweep file (see the module docstring) for ``preset``, its runs in ``runs_dir``
    and its result files and records in ``results_dir``.

    Raises:
      SweepError: the file is not valid TOML, has unknown sections or fields, lacks the
        preset, or one of its points is not a valid TrainConfig.
    """
    path = Path(path)
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError as error:
        raise SweepError(f"sweep file {str(path)!r} does not exist") from error
    except tomllib.TOMLDecodeError as error:
        raise SweepError(f"{path}: not valid TOML: {error}") from error
    except OSError as error:
        raise SweepError(f"cannot read the sweep file {str(path)!r}: {error}") from error
    return sweep_from_dict(data, preset=preset, runs_dir=runs_dir, results_dir=results_dir,
                           source=path)


def _where(source: Path | None) -> str:
    return f"{source}: " if source is not None else "sweep: "


def _table(data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise SweepError(f"{where}[{key}] must be a table, but got {value!r}")
    return dict(value)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return str(value)


def _check_label(label: Any, where: str) -> str:
    if not isinstance(label, str) or not _LABEL.fullmatch(label):
        raise SweepError(
            f"{where}a point label must be a non-empty string of letters, digits and . _ = , "
            f"+ - (it names a folder), but got {label!r}"
        )
    return label


def sweep_from_dict(
    data: Mapping[str, Any],
    *,
    preset: str = DEFAULT_PRESET,
    runs_dir: str | os.PathLike = "runs",
    results_dir: str | os.PathLike = DEFAULT_RESULTS_DIR,
    source: Path | None = None,
) -> Sweep:
    """Builds a :class:`Sweep` from the parsed TOML ``data`` (see :func:`load_sweep`)."""
    from jaxsep.train import TrainConfig

    where = _where(source)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise SweepError(f"{where}unknown section(s) {unknown}; a sweep file has {list(SECTIONS)}")
    head = _table(data, "sweep", where)
    name = head.get("name")
    if not isinstance(name, str) or not _LABEL.fullmatch(name):
        raise SweepError(
            f"{where}[sweep] name must be a non-empty string of letters, digits and . _ = , + - "
            f"(it names folders and files), but got {name!r}"
        )
    extra = sorted(set(head) - {"name", "description"})
    if extra:
        raise SweepError(f"{where}[sweep] has unknown key(s) {extra}; it takes name, description")
    description = head.get("description", "")
    if not isinstance(description, str):
        raise SweepError(f"{where}[sweep] description must be a string, but got {description!r}")

    def check_fields(values: Mapping[str, Any], table: str, allowed_extra: Iterable[str] = ()):
        bad = sorted(set(values) - fields - set(allowed_extra))
        if bad:
            raise SweepError(
                f"{where}[{table}] has unknown TrainConfig field(s) {bad}; the fields are "
                f"{sorted(fields)}"
            )
        sweep_set = sorted(set(values) & set(SWEEP_SET_FIELDS) - set(allowed_extra))
        if sweep_set:
            raise SweepError(
                f"{where}[{table}] must not set {sweep_set}: the sweep sets it (runs go to "
                "<runs-dir>/<sweep>_<preset>/<point>/; see --runs-dir)"
            )

    base = _table(data, "base", where)
    check_fields(base, "base")
    presets = _table(data, "presets", where)
    if preset not in presets:
        raise SweepError(
            f"{where}preset must be one of the file's presets {sorted(presets)}, but got {preset!r}"
        )
    chosen = presets[preset]
    if not isinstance(chosen, dict):
        raise SweepError(f"{where}[presets.{preset}] must be a table, but got {chosen!r}")
    chosen = dict(chosen)
    preset_grid = chosen.pop("grid", {})
    if not isinstance(preset_grid, dict):
        raise SweepError(f"{where}[presets.{preset}.grid] must be a table, but got {preset_grid!r}")
    check_fields(chosen, f"presets.{preset}")

    grid = _table(data, "grid", where)
    grid.update(preset_grid)
    check_fields(grid, "grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}[grid] {key} must be a non-empty list, but got {values!r}")

    entries = data.get("points", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise SweepError(f"{where}points must be an array of tables ([[points]])")

    runs_dir = Path(runs_dir)
    results_dir = Path(results_dir)
    sweep_id = f"{name}_{preset}"
    common = {**base, **chosen}
    specs: list[tuple[str, dict[str, Any], str | None, int | None]] = []
    if grid:
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            overrides = dict(zip(keys, values))
            label = ",".join(f"{k}={_format_value(v)}" for k, v in overrides.items())
            specs.append((label, overrides, None, None))
    for index, entry in enumerate(entries):
        entry = dict(entry)
        table = f"points #{index + 1}"
        check_fields(entry, table, POINT_KEYS)
        label = entry.pop("label", None)
        init_from = entry.pop("init_from", None)
        factorize = entry.pop("factorize", None)
        if (init_from is None) != (factorize is None):
            raise SweepError(
                f"{where}[{table}] needs both init_from (a point label) and factorize (the depth "
                f"multiplier), or neither, but got init_from={init_from!r}, factorize={factorize!r}"
            )
        if factorize is not None:
            if isinstance(factorize, bool) or not isinstance(factorize, int) or factorize < 1:
                raise SweepError(
                    f"{where}[{table}] factorize must be an int >= 1, but got {factorize!r}"
                )
            clash = sorted(set(entry) & {"conv", "groups", "depth_multiplier"})
            if clash:
                raise SweepError(
                    f"{where}[{table}] is factorized (conv='factorized', depth_multiplier="
                    f"{factorize}), so it must not set {clash}"
                )
        if label is None:
            if not entry and factorize is None:
                raise SweepError(f"{where}[{table}] needs a label or at least one field")
            parts = dict(entry)
            if factorize is not None:
                parts = {"init_from": init_from, "factorize": factorize, **parts}
            label = ",".join(f"{k}={_format_value(v)}" for k, v in parts.items())
        specs.append((_check_label(label, where), entry, init_from, factorize))
    if not specs:
        specs.append(("base", {}, None, None))

    points: list[Point] = []
    for label, overrides, init_from, factorize in specs:
        if label in {p.label for p in points}:
            raise SweepError(f"{where}two points are labelled {label!r}; labels must be unique")
        out = runs_dir / sweep_id / label
        values = {**common, **overrides, "out": str(out)}

        def build(values: dict[str, Any]) -> Any:
            try:
                return TrainConfig.from_dict(values)
            except (TypeError, ValueError) as error:
                raise SweepError(f"{where}point {label!r}: {error}") from error

        config = build(values)
        if factorize is not None:
            origin = next((p for p in points if p.label == init_from), None)
            if origin is None:
                raise SweepError(
                    f"{where}point {label!r}: init_from must name a point listed before it, but "
                    f"got {init_from!r} (points so far: {[p.label for p in points]})"
                )
            _check_factorize_source(where, label, config, origin.config)
            missing = sorted({"depth_multiplier", "init_from"} - fields)
            if missing:
                raise SweepError(
                    f"{where}point {label!r}: factorized points need the TrainConfig fields "
                    f"depth_multiplier and init_from, but this jaxsep.train lacks {missing}"
                )
            config = build({**values, "conv": "factorized", "groups": None,
                            "depth_multiplier": factorize, "init_from": str(out / CONVERTED)})
        points.append(Point(label, overrides, config, init_from, factorize,
                            results_dir / sweep_id / label))
    return Sweep(name, preset, description, tuple(points), runs_dir, source, results_dir)


def _check_factorize_source(where: str, label: str, config: Any, source: Any) -> None:
    if source.model != "mobilenet_v1" or source.conv != "standard":
        raise SweepError(
            f"{where}point {label!r}: init_from must name a mobilenet_v1 point with "
            f"conv='standard', but it names one with model={source.model!r}, conv={source.conv!r}"
        )
    for name in ("model", "width", "variant"):
        if getattr(config, name) != getattr(source, name):
            raise SweepError(
                f"{where}point {label!r}: {name} must equal its init_from point's, but got "
                f"{getattr(config, name)!r} and {getattr(source, name)!r}"
            )


# --------------------------------------------------------------------------------------------
# Model options and counts


def model_options(config: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`jaxsep.models.create` that a config's model options
    give (those that shape the model; not dtypes or the depthwise lowering)."""
    options: dict[str, Any] = {"width_multiplier": config.width, "variant": config.variant}
    for field, keyword in (
        ("conv", "conv"),
        ("groups", "groups"),
        ("depth_multiplier", "depth_multiplier"),
        ("dropout", "dropout_rate"),
    ):
        value = getattr(config, field, None)
        if value is not None:
            options[keyword] = value
    return options


def point_costs(config: Any) -> tuple[int, int]:
    """``(params, multiply-adds per image)`` of a config's model, counted abstractly by
    :func:`jaxsep.summary.summary` exactly as ``jaxsep info`` counts them."""
    from flax import nnx

    from jaxsep import models
    from jaxsep.summary import summary

    size = config.resolution or STORED_RESOLUTION
    model = nnx.eval_shape(lambda: models.create(config.model, **model_options(config)))
    totals = summary(model, (1, size, size, 3), show=False).totals
    return totals.params, totals.macs


# --------------------------------------------------------------------------------------------
# Run folders


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _epochs_done(out: Path) -> int:
    try:
        return sum(1 for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip())
    except OSError:
        return 0


def _differences(saved: Any, config: Any) -> dict[str, tuple[Any, Any]]:
    """The fields in which a saved config differs from a point's, those that never change a
    result (IGNORED_FIELDS) left out."""
    return {k: v for k, v in saved.differences(config).items() if k not in IGNORED_FIELDS}


def _complete(folder: Path, point: Point, differences: Mapping[str, Any]) -> bool:
    """Whether ``folder`` holds the finished run of ``point``: the same configuration (no
    ``differences``) and a ``summary.json`` of all of its epochs."""
    summary = _read_json(folder / "summary.json")
    return not differences and summary is not None and summary.get("epochs") == point.config.epochs


def point_state(point: Point, *, records: bool = True) -> str:
    """``"new"`` (nothing in its run folder), ``"partial"`` (started: the harness resumes
    it), ``"finished"`` (``summary.json`` of every epoch of this configuration) or, with
    ``records``, ``"recorded"``: not finished in its run folder, but its record folder holds
    the finished run of this configuration (so it is not trained again; it has no checkpoint).

    Raises:
      SweepError: the run folder holds a run of another configuration (fields other than
        ``out``, ``quiet``, ``data_dir`` and ``init_from`` differ; a changed ``epochs`` is
        allowed: the harness extends the run).
    """
    state = _run_state(point)
    if state != "finished" and records and _recorded(point):
        return "recorded"
    return state


def _run_state(point: Point) -> str:
    """:func:`point_state` from the run folder alone."""
    from jaxsep.train import TrainConfig
    from jaxsep.train.config import RESUMABLE_FIELDS

    out = point.out
    config_file = out / "config.json"
    if not config_file.is_file():
        checkpoints = out / "checkpoints"
        if checkpoints.is_dir() and any(checkpoints.iterdir()):
            raise SweepError(
                f"point {point.label!r}: {str(out)!r} has checkpoints but no config.json; move "
                "it away to rerun the point"
            )
        return "new"
    try:
        saved = TrainConfig.load(config_file)
    except (TypeError, ValueError) as error:
        raise SweepError(f"point {point.label!r}: cannot read {config_file}: {error}") from error
    differences = _differences(saved, point.config)
    fixed = {k: v for k, v in differences.items() if k not in RESUMABLE_FIELDS}
    if fixed:
        listed = ", ".join(f"{k}: {a!r} (in the folder) vs {b!r} (in the sweep)"
                           for k, (a, b) in sorted(fixed.items()))
        raise SweepError(
            f"point {point.label!r}: {str(out)!r} holds a run of a different configuration "
            f"({listed}); the sweep will not mix results. Restore the sweep file, or move the "
            "folder away (or use another --runs-dir) to start the point over"
        )
    return "finished" if _complete(out, point, differences) else "partial"


def _recorded(point: Point) -> bool:
    """Whether the point's record folder holds its finished run (the run folder's test). An
    unreadable record counts as none: the point trains and its record is rewritten."""
    from jaxsep.train import TrainConfig

    if point.record is None or not (point.record / "summary.json").is_file():
        return False
    try:
        saved = TrainConfig.load(point.record / "config.json")
    except (OSError, TypeError, ValueError):
        return False
    return _complete(point.record, point, _differences(saved, point.config))


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _write_record(point: Point) -> bool:
    """Makes the point's record folder a copy of its run folder's RECORD_FILES (each written
    atomically; a file the run lacks is removed) when the run has finished and the two differ;
    returns whether anything was written. ``summary.json`` goes first and comes back last, so
    a record cut short is never taken for a finished one."""
    if point.record is None or _run_state(point) != "finished":
        return False
    wanted = {name: _read_bytes(point.out / name) for name in RECORD_FILES}
    if wanted == {name: _read_bytes(point.record / name) for name in RECORD_FILES}:
        return False
    (point.record / "summary.json").unlink(missing_ok=True)
    for name, data in wanted.items():
        if data is None:
            (point.record / name).unlink(missing_ok=True)
        else:
            atomic_write(point.record / name, data)
    return True


# --------------------------------------------------------------------------------------------
# Running


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What :func:`run_sweep` did with one point: ``action`` is "skipped" (finished
    before), "trained" (started or resumed, and finished) or "failed" (``error`` says why)."""

    label: str
    action: str
    error: str | None = None


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def select(sweep: Sweep, only: Sequence[str] | None) -> list[Point]:
    """The points named in ``only`` (all when None), in the sweep's order."""
    if not only:
        return list(sweep.points)
    unknown = [label for label in only if label not in sweep.labels]
    if unknown:
        raise SweepError(
            f"--only: sweep {sweep.name!r} has no point(s) {unknown}; its points are {sweep.labels}"
        )
    return [p for p in sweep.points if p.label in set(only)]


def _check_retrain(sweep: Sweep, retrain: Sequence[str] | None) -> set[str]:
    unknown = [label for label in retrain or () if label not in sweep.labels]
    if unknown:
        raise SweepError(
            f"--retrain: sweep {sweep.name!r} has no point(s) {unknown}; its points are "
            f"{sweep.labels}"
        )
    return set(retrain or ())


def _no_checkpoint(point: Point, source: Point) -> str:
    return (
        f"point {point.label!r} starts from point {source.label!r}'s best checkpoint, but "
        f"that point is finished only by its record ({source.record}): its run folder "
        f"{str(source.out)!r}, and so its checkpoint, is gone. Train it again by rerunning with "
        f"--retrain {source.label} (or restore {str(source.out)!r})"
    )


def run_sweep(
    sweep: Sweep,
    *,
    only: Sequence[str] | None = None,
    retrain: Sequence[str] | None = None,
    keep_going: bool = False,
    quiet: bool | None = None,
    log: Callable[[str], None] = _stderr,
) -> list[Outcome]:
    """Trains every point (or those in ``only``) that has not finished, in order.

    Every point's run folder is checked first (:func:`point_state`), so a folder of another
    configuration, or a factorized point to train whose source has only its record (no
    checkpoint), stops the sweep before anything is trained. Finished points are skipped,
    those finished in their record too; started ones are resumed by
    :func:`jaxsep.train.train_and_evaluate`. Each point that finishes (and each finished one
    skipped) gets its record (see the module docstring).

    Args:
      sweep: from :func:`load_sweep`.
      only: labels of the points to run (default all).
      retrain: labels of points whose record is ignored: they are trained again unless their
        run folder has finished them (run even if ``only`` leaves them out).
      keep_going: after a point fails (an exception other than an interruption), go on with
        the next one and report the failure in the outcomes; by default the error propagates.
      quiet: overrides the points' ``quiet`` (no progress bars) when not None.
      log: receives one line per point.

    Raises:
      SweepError: a bad selection, a run folder of another configuration, or a factorized
        point whose source's checkpoint is gone.
      jaxsep.train.TrainingInterrupted: SIGINT/SIGTERM; the point saved a checkpoint and
        rerunning the sweep resumes it.
    """
    from jaxsep.train import TrainingInterrupted, train_and_evaluate

    retrain = _check_retrain(sweep, retrain)
    points = select(sweep, [*only, *retrain] if only else None)

    def state_of(point: Point) -> str:
        return point_state(point, records=point.label not in retrain)

    states = {p.label: state_of(p) for p in points}
    for point in points:
        if (point.factorize is not None and states[point.label] in ("new", "partial")
                and _read_json(point.out / CONVERSION_FILE) is None):
            source = sweep.point(point.init_from)
            source_state = states[source.label] if source.label in states else state_of(source)
            if source_state == "recorded":  # convert_point would fail after hours of training
                raise SweepError(_no_checkpoint(point, source))
    outcomes = []
    for number, point in enumerate(points, 1):
        config = point.config if quiet is None else point.config.replace(quiet=quiet)
        prefix = f"[{number}/{len(points)}] {sweep.id}/{point.label}"
        state = states[point.label]
        if state == "finished":
            _write_record(point)  # a run finished before records were kept
            log(f"{prefix}: finished before, skipped")
            outcomes.append(Outcome(point.label, "skipped"))
            continue
        if state == "recorded":
            log(f"{prefix}: finished before (recorded in {point.record}), skipped")
            outcomes.append(Outcome(point.label, "skipped"))
            continue
        done = _epochs_done(point.out)
        epochs = f"{config.epochs} epoch" + ("s" if config.epochs != 1 else "")
        log(f"{prefix}: " + (f"resuming after {done} of {epochs}" if state == "partial"
                             else f"training {epochs}") + f" in {point.out}")
        try:
            if point.factorize is not None:
                conversion = convert_point(sweep, point, log=log)
                log(f"{prefix}: after the conversion: test accuracy "
                    f"{_percent(conversion['test_accuracy'])}")
            train_and_evaluate(config)
        except TrainingInterrupted:
            raise
        except Exception as error:
            if not keep_going:
                raise
            log(f"{prefix}: failed: {type(error).__name__}: {error}")
            outcomes.append(Outcome(point.label, "failed", f"{type(error).__name__}: {error}"))
            continue
        _write_record(point)
        outcomes.append(Outcome(point.label, "trained"))
    return outcomes


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


# --------------------------------------------------------------------------------------------
# Factorized points


def convert_point(sweep: Sweep, point: Point, *, log: Callable[[str], None] = _stderr) -> dict:
    """Writes a factorized point's ``converted/`` run folder and ``conversion.json`` (once;
    later calls read ``conversion.json``) and returns that record: the source, the depth
    multiplier, each layer's relative error, and the converted model's test accuracy and
    loss before any fine-tuning."""
    import jax
    from flax import nnx

    from jaxsep import models
    from jaxsep.train import evaluate_run, restore_best, save_best

    if point.factorize is None:
        raise SweepError(f"point {point.label!r} is not a factorized point")
    record_file = point.out / CONVERSION_FILE
    record = _read_json(record_file)
    if record is not None:
        return record
    source = sweep.point(point.init_from)
    state = point_state(source)
    if state == "recorded":
        raise SweepError(_no_checkpoint(point, source))
    if state != "finished":
        raise SweepError(
            f"point {point.label!r} starts from point {source.label!r}'s best checkpoint, but "
            f"that point has not finished; run it first (--only {source.label})"
        )
    converted_dir = point.out / CONVERTED
    if converted_dir.exists():  # a conversion cut short: it is deterministic, redo it
        shutil.rmtree(converted_dir)
    log(f"{sweep.id}/{point.label}: factorizing {source.label}'s best checkpoint with depth "
        f"multiplier {point.factorize}")
    model = models.create(source.config.model, rngs=nnx.Rngs(0), **model_options(source.config))
    _, params, batch_stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    tree, meta = restore_best(source.out, {"params": params, "batch_stats": batch_stats})
    nnx.update(model, tree["params"], tree["batch_stats"])
    model.eval()
    converted, errors = models.factorize_mobilenet_v1(
        model, point.factorize, impl=point.config.impl
    )
    converted.train()
    _, new_params, new_stats, _ = nnx.split(converted, nnx.Param, nnx.BatchStat, ...)
    converted_dir.mkdir(parents=True)
    atomic_write(converted_dir / "config.json",
                  point.config.replace(out=None, init_from=None).to_json().encode())
    save_best(converted_dir, {"params": new_params, "batch_stats": new_stats},
               {"epoch": 0, "source": str(source.out), "source_epoch": int(meta["epoch"])})
    evaluation = evaluate_run(converted_dir, which="best")
    record = {
        "source": source.label,
        "source_run": str(source.out),
        "source_best_epoch": int(meta["epoch"]),
        "source_test_accuracy": meta.get("test_accuracy"),
        "depth_multiplier": point.factorize,
        "relative_errors": [float(e) for e in errors],
        "mean_relative_error": float(sum(errors) / len(errors)),
        "test_accuracy": evaluation["test_accuracy"],
        "test_loss": evaluation["test_loss"],
        "num_test": evaluation["num_test"],
        "jax_version": jax.__version__,
    }
    atomic_write(record_file, (json.dumps(record, indent=2) + "\n").encode())
    return record


# --------------------------------------------------------------------------------------------
# Collection


def _state_or_foreign(point: Point) -> str:
    try:
        return point_state(point)
    except SweepError:
        return "foreign"  # a folder of another configuration: reported, never read


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
    summary = _read_json(folder / "summary.json") if state in ("finished", "recorded") else None
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
            f"partial ({_epochs_done(point.out)}/{config.epochs} epochs)" if state == "partial"
            else "not run" if state == "new" else "other configuration in folder"
        )
        row["epochs"] = config.epochs
        row["dataset"] = config.dataset
    if row["params"] is None or row["macs"] is None:
        row["params"], row["macs"] = point_costs(config)
    if point.factorize is not None:
        conversion = _read_json(folder / CONVERSION_FILE)
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
# Dry run


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


# --------------------------------------------------------------------------------------------
# The subcommand


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """Declares ``jaxsep sweep``'s arguments."""
    parser.add_argument("file", metavar="FILE", help="a sweep file, e.g. experiments/width.toml")
    parser.add_argument(
        "--preset", default=DEFAULT_PRESET, metavar="NAME",
        help=f"the file's [presets.NAME] to apply (default {DEFAULT_PRESET}; e.g. full)",
    )
    parser.add_argument(
        "--dry-run", action="store_true",
        help="print the grid with each point's parameters and multiply-adds; train nothing",
    )
    parser.add_argument("--runs-dir", default="runs", metavar="DIR",
                        help="where run folders go: DIR/<sweep>_<preset>/<point>/ (default runs)")
    parser.add_argument(
        "--results-dir", default=DEFAULT_RESULTS_DIR, metavar="DIR",
        help="where <sweep>_<preset>.csv/.md/.png go, and the records of finished points: "
        f"DIR/<sweep>_<preset>/<point>/ (default {DEFAULT_RESULTS_DIR}); a point finished in "
        "its record is skipped even without its run folder",
    )
    parser.add_argument("--only", nargs="+", metavar="LABEL",
                        help="run only these points (the results still list every point)")
    parser.add_argument(
        "--retrain", nargs="+", metavar="LABEL", default=[],
        help="ignore these points' records: train them again unless their run folder has "
        "finished them (e.g. a factorized point's source, whose checkpoint a record lacks); "
        "they run even when --only leaves them out",
    )
    parser.add_argument("--collect-only", action="store_true",
                        help="train nothing; rewrite the results from the run folders and "
                        "records (back-filling the records of finished runs)")
    parser.add_argument("--keep-going", action="store_true",
                        help="after a point fails, go on with the next (exit status 1 at the end)")
    parser.add_argument("--quiet", action="store_true", default=None,
                        help="no progress bars; one log line per epoch")
    parser.add_argument("--no-plot", dest="plot", action="store_false",
                        help="write the CSV and Markdown only")


def run_sweep_command(args: argparse.Namespace, *, prog: str = "jaxsep sweep") -> int:
    """Runs ``jaxsep sweep``; returns the exit status: 0 done, 1 a point failed (or diverged),
    2 a bad sweep file or a run folder of another configuration, 128 + signal number when a
    signal stopped a point after it saved a checkpoint."""
    from jaxsep.train.command import run_error_status

    try:
        sweep = load_sweep(args.file, preset=args.preset, runs_dir=args.runs_dir,
                           results_dir=args.results_dir)
        if args.dry_run:
            print(dry_run_table(sweep, args.only, args.retrain))
            return 0
        outcomes: list[Outcome] = []
        if not args.collect_only:
            outcomes = run_sweep(sweep, only=args.only, retrain=args.retrain,
                                 keep_going=args.keep_going, quiet=args.quiet)
    except SweepError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a point's run: reported as `jaxsep train` reports it
        return run_error_status(prog, error)
    collected = collect(sweep, plot=args.plot)
    written = [collected.csv, collected.markdown] + ([collected.png] if collected.png else [])
    print(f"{prog}: wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    failed = [o for o in outcomes if o.action == "failed"]
    if failed:
        print(f"{prog}: error: {len(failed)} point(s) failed: "
              + "; ".join(f"{o.label}: {o.error}" for o in failed), file=sys.stderr)
        return 1
    return 0
