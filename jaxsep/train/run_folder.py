"""The one authority on a run folder (``config.out``): its files, its state (new, partial,
finished), whether a configuration may continue it, and the resume rule. Used by the
training loop and by sweeps, so the two can never disagree about a folder.

See ``docs/harness.md`` (the files of a run, resume).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxsep.train.config import RESUMABLE_FIELDS, TrainConfig

__all__ = [
    "BEST",
    "CHECKPOINTS",
    "CONFIG_FILE",
    "FINISHED",
    "ForeignRunError",
    "IGNORED_FIELDS",
    "METRICS_FILE",
    "NEW",
    "PARTIAL",
    "RunFolderError",
    "SUMMARY_FILE",
    "checkpoint_steps",
    "epochs_done",
    "has_checkpoint",
    "is_finished",
    "listed",
    "prepare",
    "read_json",
    "saved_config",
    "state",
]

CONFIG_FILE = "config.json"  # the TrainConfig, as given
METRICS_FILE = "metrics.jsonl"  # one line per finished epoch
SUMMARY_FILE = "summary.json"  # written when the run finishes
CHECKPOINTS = "checkpoints"  # checkpoints/<global step>/: the train state and position
BEST = "best"  # best/<epoch>/: parameters and BatchNorm statistics of the best epoch

NEW, PARTIAL, FINISHED = "new", "partial", "finished"
# Fields that never change a result and may differ between machines or sessions (where the
# data and the runs are, console output); a finished run of a config that differs from another
# only in these is that other's finished run too.
IGNORED_FIELDS = frozenset({"out", "quiet", "data_dir", "init_from"})


class RunFolderError(ValueError):
    """A run folder that cannot hold the run asked for."""


class ForeignRunError(RunFolderError):
    """The folder holds a run of another configuration. Attributes: ``out`` and
    ``differences`` (``{field: (saved, given)}``, fields that may not change on resume)."""

    def __init__(self, out: Path, differences: Mapping[str, tuple[Any, Any]]):
        self.out = out
        self.differences = dict(differences)
        super().__init__(
            f"{str(out)!r} already holds a run with a different configuration "
            f"({listed(differences)}); choose a new --out, or delete the folder to start over"
        )


def listed(differences: Mapping[str, tuple[Any, Any]], saved_as: str = "saved",
           given_as: str = "given") -> str:
    """``"lr: 0.05 (saved) vs 0.1 (given), ..."``: differences for a message."""
    return ", ".join(f"{k}: {a!r} ({saved_as}) vs {b!r} ({given_as})"
                     for k, (a, b) in sorted(differences.items()))


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def checkpoint_steps(folder: Path) -> list[int]:
    """The steps of the checkpoints in ``folder`` (``checkpoints/`` or ``best/``), sorted;
    Orbax's temporary folders of a save cut short are not checkpoints."""
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def has_checkpoint(out: Path) -> bool:
    """Whether the run folder ``out`` holds a checkpoint to resume from."""
    return bool(checkpoint_steps(out / CHECKPOINTS))


def epochs_done(out: Path) -> int:
    """The number of lines in ``out``'s metrics.jsonl (0 if none)."""
    try:
        return sum(1 for line in (out / METRICS_FILE).read_text().splitlines() if line.strip())
    except OSError:
        return 0


def saved_config(folder: Path) -> TrainConfig | None:
    """The config in ``folder/config.json``, or None if there is none.

    Raises:
      RunFolderError: the file exists but is not a valid config.
    """
    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        return None
    try:
        return TrainConfig.load(config_file)
    except (OSError, TypeError, ValueError) as error:
        raise RunFolderError(f"cannot read the existing {config_file}: {error}") from error


def _fixed_differences(saved: TrainConfig, config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    return {k: v for k, v in saved.differences(config).items() if k not in RESUMABLE_FIELDS}


def is_finished(folder: Path, config: TrainConfig) -> bool:
    """Whether ``folder`` (a run folder, or a sweep's record of one) holds the finished run
    of ``config``: a config.json equal but for IGNORED_FIELDS and a summary.json of all of
    its epochs. An unreadable folder holds none."""
    try:
        saved = saved_config(folder)
    except RunFolderError:
        return False
    if saved is None:
        return False
    differences = {k for k in saved.differences(config) if k not in IGNORED_FIELDS}
    summary = read_json(folder / SUMMARY_FILE)
    return not differences and summary is not None and summary.get("epochs") == config.epochs


def state(out: Path, config: TrainConfig) -> str:
    """The state of run folder ``out`` for ``config``:

    - ``"new"``: nothing to continue: no folder, no config.json, or a run that stopped before
      its first checkpoint (a run starts afresh there, dropping what it wrote);
    - ``"partial"``: a run of ``config`` with checkpoints (training resumes it);
    - ``"finished"``: a run of ``config`` with a summary.json of all of its epochs
      (:func:`is_finished`).

    Raises:
      ForeignRunError: the folder holds a run whose fields other than RESUMABLE_FIELDS
        differ from ``config``'s (a changed ``epochs`` is allowed: it extends the run).
      RunFolderError: checkpoints without a config.json, or an unreadable config.json.
    """
    checkpoint = has_checkpoint(out)
    if not (out / CONFIG_FILE).is_file():
        if checkpoint:
            raise RunFolderError(
                f"{str(out)!r} has checkpoints but no config.json, so it cannot be resumed "
                "safely; choose a new --out (or move the folder away)"
            )
        return NEW
    if not checkpoint and not (out / SUMMARY_FILE).exists():
        return NEW  # its config.json is replaced, even one that cannot be read
    saved = saved_config(out)
    fixed = _fixed_differences(saved, config)
    if fixed:
        raise ForeignRunError(out, fixed)
    return FINISHED if is_finished(out, config) else PARTIAL


def prepare(config: TrainConfig, resume: bool | None) -> tuple[Path | None, bool]:
    """Creates ``config.out`` (or checks it), applies the resume rule and returns ``(out,
    resuming)``; touches no JAX.

    The rule: a folder with checkpoints of this configuration is resumed (``resume`` None or
    True); one without is started afresh, removing what an earlier start wrote before its
    first checkpoint (``resume=True`` is then an error). ``resume=False`` refuses a folder
    with checkpoints.
    """
    if config.out is None:
        if resume:
            raise ValueError("resume=True needs a run folder, but config.out is None")
        return None, False
    out = Path(config.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"TrainConfig: out must be a folder, but {str(out)!r} is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ValueError(
            f"TrainConfig: out must be a writable folder, but {str(out)!r} is not: "
            f"{error.strerror or error}"
        ) from error
    state(out, config)  # raises for a folder this config may not continue
    resuming = has_checkpoint(out)
    if resume is True and not resuming:
        raise ValueError(
            f"resume: there is no checkpoint in {str(out / CHECKPOINTS)!r} to resume from (a "
            "run stopped before its first step saves none); rerun without --resume (resume="
            "None) to start it afresh"
        )
    if resume is False and resuming:
        raise ValueError(
            f"{str(out)!r} already holds checkpoints; resume it (the default) or choose a new --out"
        )
    if not resuming and (out / CONFIG_FILE).exists():
        # A run that stopped before its first checkpoint: start it afresh, dropping what it
        # wrote (a metrics line or best parameters saved just before it stopped).
        for stale in (METRICS_FILE, SUMMARY_FILE):
            (out / stale).unlink(missing_ok=True)
        shutil.rmtree(out / BEST, ignore_errors=True)
    return out, resuming
