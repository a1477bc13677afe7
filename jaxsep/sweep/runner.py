"""Running a sweep: its points in order, each through
:func:`jaxsep.train.train_and_evaluate`, skipping finished ones and resuming started ones."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from jaxsep.sweep.factorize import _no_checkpoint, convert_point
from jaxsep.sweep.report import _percent
from jaxsep.sweep.spec import Point, Sweep, SweepError, _check_retrain, _stderr, select
from jaxsep.sweep.speed import ensure_speed
from jaxsep.sweep.state import CONVERSION_FILE, _write_record, point_state
from jaxsep.train import run_folder

__all__ = ["Outcome", "measure_sweep", "run_sweep"]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What :func:`run_sweep` or :func:`measure_sweep` did with one point: ``action`` is
    "skipped" (run_sweep: finished before; measure_sweep: not finished), "trained" (started
    or resumed, and finished), "measured", or "failed" (``error`` says why)."""

    label: str
    action: str
    error: str | None = None


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
    skipped) gets its record (see ``docs/sweeps.md``). With ``sweep.measure_speed``, each
    finished point (trained now or before) whose speed is not on record has it measured
    right after, before the next point trains (:func:`jaxsep.sweep.speed.ensure_speed`).

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
                and run_folder.read_json(point.out / CONVERSION_FILE) is None):
            source = sweep.point(point.init_from)
            source_state = states[source.label] if source.label in states else state_of(source)
            if source_state == "recorded":  # convert_point would fail after hours of training
                raise SweepError(_no_checkpoint(point, source))

    def after(point: Point, state: str) -> None:
        """A finished point's speed, measured now that nothing trains, then recorded."""
        if sweep.measure_speed and ensure_speed(point, state, log=log) and state == "finished":
            _write_record(point)

    outcomes = []
    for number, point in enumerate(points, 1):
        config = point.config if quiet is None else point.config.replace(quiet=quiet)
        prefix = f"[{number}/{len(points)}] {sweep.id}/{point.label}"
        state = states[point.label]
        if state == "finished":
            _write_record(point)  # a run finished before records were kept
            log(f"{prefix}: finished before, skipped")
            outcomes.append(Outcome(point.label, "skipped"))
            after(point, state)
            continue
        if state == "recorded":
            log(f"{prefix}: finished before (recorded in {point.record}), skipped")
            outcomes.append(Outcome(point.label, "skipped"))
            after(point, state)
            continue
        done = run_folder.epochs_done(point.out)
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
        after(point, "finished")
    return outcomes


def measure_sweep(
    sweep: Sweep,
    *,
    only: Sequence[str] | None = None,
    log: Callable[[str], None] = _stderr,
) -> list[Outcome]:
    """Measures the speed (:func:`jaxsep.sweep.speed.measure_speed`) of every finished point
    (or those in ``only``) again, overwriting what is on record; trains nothing.

    The speeds a report compares should be measured in one sitting on an otherwise idle
    machine (a virtual machine's speed drifts between days), while training, which takes
    hours, may share the machine; this is that sitting. Points not finished are skipped
    (their speed is measured when they finish, or by the next ``measure_sweep``).

    Returns:
      One :class:`Outcome` per selected point: "measured" or "skipped".
    """
    outcomes = []
    points = select(sweep, only)
    for number, point in enumerate(points, 1):
        prefix = f"[{number}/{len(points)}] {sweep.id}/{point.label}"
        state = point_state(point)
        if state not in ("finished", "recorded"):
            log(f"{prefix}: not finished ({state}), not measured")
            outcomes.append(Outcome(point.label, "skipped"))
            continue
        log(f"{prefix}: measuring its speed")
        ensure_speed(point, state, log=log, again=True)
        if state == "finished":
            _write_record(point)
        outcomes.append(Outcome(point.label, "measured"))
    return outcomes
