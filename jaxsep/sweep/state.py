"""The state of a sweep's points, on top of :mod:`jaxsep.train.run_folder` (the one authority
on a run folder), and their records: the small result files of a finished point, copied next
to the sweep's results so that they outlive the run folders (see ``docs/sweeps.md``)."""

from __future__ import annotations

from pathlib import Path

from jaxsep._io import atomic_write
from jaxsep.sweep.spec import Point, SweepError
from jaxsep.train import run_folder

__all__ = ["CONVERSION_FILE", "SPEED_FILE", "RECORD_FILES", "point_state"]

CONVERSION_FILE = "conversion.json"  # a factorized point's conversion record
SPEED_FILE = "speed.json"  # a point's latency and training speed (jaxsep.sweep.speed)
# A run's files that its record keeps (those present), summary.json last: a record is complete
# once it has one (see _write_record).
RECORD_FILES = (run_folder.CONFIG_FILE, run_folder.METRICS_FILE, CONVERSION_FILE, SPEED_FILE,
                run_folder.SUMMARY_FILE)


def point_state(point: Point, *, records: bool = True) -> str:
    """``"new"`` (nothing to continue in its run folder), ``"partial"`` (started: the
    harness resumes it), ``"finished"`` (``summary.json`` of every epoch of this
    configuration) or, with ``records``, ``"recorded"``: not finished in its run folder, but
    its record folder holds the finished run of this configuration (so it is not trained
    again; it has no checkpoint). The states of :func:`jaxsep.train.run_folder.state`.

    Raises:
      SweepError: the run folder holds a run of another configuration (fields other than
        ``out``, ``quiet``, ``data_dir`` and ``init_from`` differ; a changed ``epochs`` is
        allowed: the harness extends the run), or cannot be read.
    """
    state = _run_state(point)
    if state != run_folder.FINISHED and records and _recorded(point):
        return "recorded"
    return state


def _run_state(point: Point) -> str:
    """:func:`point_state` from the run folder alone."""
    try:
        return run_folder.state(point.out, point.config)
    except run_folder.ForeignRunError as error:
        listed = run_folder.listed(error.differences, "in the folder", "in the sweep")
        raise SweepError(
            f"point {point.label!r}: {str(point.out)!r} holds a run of a different "
            f"configuration ({listed}); the sweep will not mix results. Restore the sweep "
            "file, or move the folder away (or use another --runs-dir) to start the point over"
        ) from error
    except run_folder.RunFolderError as error:
        raise SweepError(f"point {point.label!r}: {error}") from error


def _state_or_foreign(point: Point) -> str:
    try:
        return point_state(point)
    except SweepError:
        return "foreign"  # a folder of another configuration: reported, never read


def _recorded(point: Point) -> bool:
    """Whether the point's record folder holds its finished run (the run folder's test). An
    unreadable record counts as none: the point trains and its record is rewritten."""
    return point.record is not None and run_folder.is_finished(point.record, point.config)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _write_record(point: Point) -> bool:
    """Makes the point's record folder a copy of its run folder's RECORD_FILES (each written
    atomically; a file the run lacks is removed, but for the speed.json of a record of the
    same run) when the run has finished and the two differ; returns whether anything was
    written. ``summary.json`` goes first and comes back last, so a record cut short is never
    taken for a finished one."""
    if point.record is None or _run_state(point) != run_folder.FINISHED:
        return False
    wanted = {name: _read_bytes(point.out / name) for name in RECORD_FILES}
    config = run_folder.CONFIG_FILE
    if wanted[SPEED_FILE] is None and wanted[config] == _read_bytes(point.record / config):
        # measured after the run (jaxsep.sweep.speed), maybe from the record alone: a
        # record of the same run keeps it
        wanted[SPEED_FILE] = _read_bytes(point.record / SPEED_FILE)
    if wanted == {name: _read_bytes(point.record / name) for name in RECORD_FILES}:
        return False
    (point.record / run_folder.SUMMARY_FILE).unlink(missing_ok=True)
    for name, data in wanted.items():
        if data is None:
            (point.record / name).unlink(missing_ok=True)
        else:
            atomic_write(point.record / name, data)
    return True
