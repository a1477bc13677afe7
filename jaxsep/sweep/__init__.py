"""Sweeps (``jaxsep sweep``): a grid of training runs from one TOML file, run through
:func:`jaxsep.train.train_and_evaluate` and collected into a table and a plot.

A sweep is resumable and its small result files (records) outlive the run folders, so a
fresh checkout regenerates the same results; the file format, the records and factorized
points are described in ``docs/sweeps.md``.

Modules: :mod:`~jaxsep.sweep.spec` (the sweep file), :mod:`~jaxsep.sweep.state` (the points'
states and records), :mod:`~jaxsep.sweep.runner` (``run_sweep``),
:mod:`~jaxsep.sweep.factorize` (factorized points), :mod:`~jaxsep.sweep.speed` (a point's
measured latency and training speed), :mod:`~jaxsep.sweep.measures` (time to an accuracy, rank
correlation, Pareto front), :mod:`~jaxsep.sweep.report` (CSV, Markdown, dry run),
:mod:`~jaxsep.sweep.plots` (its figures) and :mod:`~jaxsep.sweep.command` (the subcommand).
"""

from jaxsep.sweep.command import (
    add_sweep_arguments as add_sweep_arguments,
    run_sweep_command as run_sweep_command,
)
from jaxsep.sweep.factorize import convert_point as convert_point
from jaxsep.sweep.speed import (
    measure_speed as measure_speed,
    measure_training as measure_training,
)
from jaxsep.sweep.measures import (
    ACCURACY_TARGETS as ACCURACY_TARGETS,
    LATENCY_BATCHES as LATENCY_BATCHES,
    pareto_front as pareto_front,
    spearman as spearman,
    time_to_accuracy as time_to_accuracy,
)
from jaxsep.sweep.plots import _compact_count as _compact_count
from jaxsep.sweep.report import (
    BOOKKEEPING_FIELDS as BOOKKEEPING_FIELDS,
    CSV_FIELDS as CSV_FIELDS,
    Collected as Collected,
    _shared_and_varying as _shared_and_varying,
    collect as collect,
    correlations as correlations,
    dry_run_table as dry_run_table,
    front_text as front_text,
    point_costs as point_costs,
)
from jaxsep.sweep.runner import Outcome as Outcome, run_sweep as run_sweep
from jaxsep.sweep.spec import (
    CONVERTED as CONVERTED,
    DEFAULT_PRESET as DEFAULT_PRESET,
    DEFAULT_RESULTS_DIR as DEFAULT_RESULTS_DIR,
    POINT_KEYS as POINT_KEYS,
    SECTIONS as SECTIONS,
    STORED_RESOLUTION as STORED_RESOLUTION,
    SWEEP_SET_FIELDS as SWEEP_SET_FIELDS,
    Point as Point,
    Sweep as Sweep,
    SweepError as SweepError,
    load_sweep as load_sweep,
    select as select,
    sweep_from_dict as sweep_from_dict,
)
from jaxsep.sweep.state import (
    CONVERSION_FILE as CONVERSION_FILE,
    SPEED_FILE as SPEED_FILE,
    RECORD_FILES as RECORD_FILES,
    point_state as point_state,
)
from jaxsep.train.model_from_config import model_options as model_options
from jaxsep.train.run_folder import IGNORED_FIELDS as IGNORED_FIELDS

__all__ = [
    "ACCURACY_TARGETS",
    "CSV_FIELDS",
    "Collected",
    "Outcome",
    "Point",
    "Sweep",
    "SweepError",
    "add_sweep_arguments",
    "collect",
    "convert_point",
    "correlations",
    "dry_run_table",
    "front_text",
    "load_sweep",
    "measure_speed",
    "measure_training",
    "model_options",
    "pareto_front",
    "point_costs",
    "point_state",
    "run_sweep",
    "run_sweep_command",
    "select",
    "spearman",
    "sweep_from_dict",
    "time_to_accuracy",
]
