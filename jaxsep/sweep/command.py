"""The ``jaxsep sweep`` subcommand: its arguments and its runner, for :mod:`jaxsep.cli`."""

from __future__ import annotations

import argparse
import sys

from jaxsep.sweep.report import collect, correlation_text, dry_run_table
from jaxsep.sweep.runner import Outcome, measure_sweep, run_sweep
from jaxsep.sweep.spec import DEFAULT_PRESET, DEFAULT_RESULTS_DIR, SweepError, load_sweep

__all__ = ["add_sweep_arguments", "run_sweep_command"]


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
    parser.add_argument(
        "--measure", action="store_true",
        help="train nothing; measure the speed (inference latency, training images/s) of "
        "every finished point again, overwriting what is on record, so that all are measured "
        "in one sitting; run it alone on the machine",
    )
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
        if args.measure and args.collect_only:
            raise SweepError("--measure and --collect-only exclude each other: --measure "
                             "rewrites the results after measuring")
        if args.measure and not sweep.measure_speed:
            raise SweepError(f"--measure: {args.file} does not measure speed; set "
                             "measure_speed = true in its [sweep] table")
        if args.measure:
            measure_sweep(sweep, only=args.only)
        elif not args.collect_only:
            outcomes = run_sweep(sweep, only=args.only, retrain=args.retrain,
                                 keep_going=args.keep_going, quiet=args.quiet)
    except SweepError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a point's run: reported as `jaxsep train` reports it
        return run_error_status(prog, error)
    collected = collect(sweep, plot=args.plot)
    written = [collected.csv, collected.markdown, collected.png, collected.speed_png]
    print(f"{prog}: wrote " + ", ".join(str(p) for p in written if p), file=sys.stderr)
    if sweep.measure_speed:
        print(f"{prog}: {correlation_text(collected.rows)}", file=sys.stderr)
    failed = [o for o in outcomes if o.action == "failed"]
    if failed:
        print(f"{prog}: error: {len(failed)} point(s) failed: "
              + "; ".join(f"{o.label}: {o.error}" for o in failed), file=sys.stderr)
        return 1
    return 0
