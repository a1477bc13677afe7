"""Sweep files: TOML to a :class:`Sweep` of :class:`Point` runs for one preset, the
precedence of ``[base]``, presets and points, and the label rules. The file format is
described in ``docs/sweeps.md``."""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxsep.train.config import TrainConfig

__all__ = [
    "DEFAULT_PRESET",
    "DEFAULT_RESULTS_DIR",
    "Point",
    "Sweep",
    "SweepError",
    "load_sweep",
    "select",
    "sweep_from_dict",
]

SECTIONS = ("sweep", "base", "grid", "points", "presets")
HEAD_KEYS = ("name", "description", "measure_speed")  # the keys of [sweep]
# Keys of a [[points]] entry that are the sweep's, not TrainConfig fields.
POINT_KEYS = ("label", "init_from", "factorize")
# Fields the sweep sets itself.
SWEEP_SET_FIELDS = ("out", "init_from")
DEFAULT_PRESET = "cpu"
# CIFAR-10 and the synthetic set are stored at 32x32 (resolution=None keeps that).
STORED_RESOLUTION = 32
CONVERTED = "converted"  # a factorized point's converted source, inside its run folder
DEFAULT_RESULTS_DIR = "experiments/results"
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=,+-]*")


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
      record: its record folder ``<results-dir>/<sweep id>/<label>/`` (see
        ``docs/sweeps.md``), or None to keep no record.
    """

    label: str
    overrides: Mapping[str, Any]
    config: TrainConfig
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
      measure_speed: ``[sweep] measure_speed``: measure each finished point's inference
        latency and training speed (:mod:`jaxsep.sweep.speed`) and report them beside
        multiply-adds.
    """

    name: str
    preset: str
    description: str
    points: tuple[Point, ...]
    runs_dir: Path
    source: Path | None = None
    results_dir: Path = Path(DEFAULT_RESULTS_DIR)
    measure_speed: bool = False

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
    """Reads a sweep file (see ``docs/sweeps.md``) for ``preset``, its runs in ``runs_dir``
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
    extra = sorted(set(head) - set(HEAD_KEYS))
    if extra:
        raise SweepError(
            f"{where}[sweep] has unknown key(s) {extra}; it takes {', '.join(HEAD_KEYS)}"
        )
    description = head.get("description", "")
    if not isinstance(description, str):
        raise SweepError(f"{where}[sweep] description must be a string, but got {description!r}")
    measure_speed = head.get("measure_speed", False)
    if not isinstance(measure_speed, bool):
        raise SweepError(
            f"{where}[sweep] measure_speed must be true or false, but got {measure_speed!r}"
        )

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
    return Sweep(name, preset, description, tuple(points), runs_dir, source, results_dir,
                 measure_speed)


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
# Choosing points


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


def _stderr(message: str) -> None:
    """The default ``log`` of the sweep's functions."""
    print(message, file=sys.stderr, flush=True)
