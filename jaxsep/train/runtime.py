"""How a run meets its process: multi-host start-up, visible log lines, signals turned into a
stop request, errors marked as bad configuration, and the outcomes a run ends with other than
its summary (:class:`TrainingInterrupted`, :class:`NonFiniteLossError`).

See ``docs/harness.md`` (signals, multi-host).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import jax

__all__ = [
    "NonFiniteLossError",
    "StopRequest",
    "TrainingInterrupted",
    "config_errors",
    "describe_devices",
    "logger",
    "maybe_initialize_distributed",
    "visible_logs",
]

logger = logging.getLogger("jaxsep.train")


class NonFiniteLossError(FloatingPointError):
    """The loss (or a parameter) became NaN or infinite. Attributes: ``epoch`` (1-based),
    ``step`` (1-based, inside the epoch), ``global_step``, ``learning_rate``, ``checkpoint``
    (the last good checkpoint's folder, or None)."""

    def __init__(self, message: str, *, epoch: int, step: int, global_step: int,
                 learning_rate: float, checkpoint: str | None):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.global_step = global_step
        self.learning_rate = learning_rate
        self.checkpoint = checkpoint


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM (or a hook's stop request) stopped the run. Attributes: ``signum``,
    ``checkpoint`` (the folder saved, or None: no ``out``, or stopped before the first step,
    with nothing to save), ``exit_code`` (128 + signum)."""

    def __init__(self, message: str, *, signum: int, checkpoint: str | None):
        super().__init__(message)
        self.signum = signum
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def maybe_initialize_distributed() -> bool:
    """Calls ``jax.distributed.initialize()`` when a multi-process environment is configured:
    ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), or a SLURM
    or Open MPI job with more than one task (JAX detects those itself). Returns whether it
    initialized. Safe to call twice."""
    env = os.environ
    explicit = bool(env.get("JAX_COORDINATOR_ADDRESS"))
    slurm = int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env
    mpi = int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1
    if not (explicit or slurm or mpi):
        return False
    if jax.distributed.is_initialized():
        return True
    kwargs: dict[str, Any] = {}
    if explicit:
        kwargs["coordinator_address"] = env["JAX_COORDINATOR_ADDRESS"]
        if env.get("JAX_NUM_PROCESSES"):
            kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
        if env.get("JAX_PROCESS_ID"):
            kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
    try:
        jax.distributed.initialize(**kwargs)
    except RuntimeError as error:
        raise RuntimeError(
            f"jax.distributed.initialize() failed ({error}); it must run before anything "
            "else uses JAX in this process"
        ) from error
    return True


def describe_devices(devices: Sequence[Any]) -> dict[str, Any]:
    """The summary's ``device``: platform, kinds, count and number of processes."""
    kinds = sorted({getattr(d, "device_kind", str(d)) for d in devices})
    return {
        "platform": devices[0].platform,
        "kind": ", ".join(kinds),
        "count": len(devices),
        "processes": jax.process_count(),
    }


class _StdErrHandler(logging.StreamHandler):
    """Writes to the *current* sys.stderr (rich's progress display redirects it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


@contextlib.contextmanager
def visible_logs() -> Iterator[None]:
    """Makes the run's INFO lines visible when nobody configured logging: an application
    that set the ``jaxsep.train`` logger's level, or that shows INFO lines itself, keeps its
    choice."""
    if logger.level != logging.NOTSET or (
        logger.hasHandlers() and logger.getEffectiveLevel() <= logging.INFO
    ):
        yield
        return
    handler = _StdErrHandler()
    logger.addHandler(handler)
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """Marks errors raised inside as bad configuration (the CLI prints them without a
    traceback and exits with 2)."""
    try:
        yield
    except (TypeError, ValueError, OSError) as error:
        error.jaxsep_config_error = True  # type: ignore[attr-defined]
        raise


class StopRequest:
    """A request to stop the run after the current step, saving a checkpoint first.

    SIGINT/SIGTERM set it while it is entered (handlers are installed in the main thread
    only; a second SIGINT raises KeyboardInterrupt at once), and so may a hook
    (:meth:`request`): the loop cannot tell the two apart, so both save and resume alike.
    ``started`` says whether a training step has run; before that there is nothing to save.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.started = False
        self._previous: dict[int, Any] = {}

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Stops the run after the current step as ``signum`` would (exit 128 + signum)."""
        if self.signum is None:
            self.signum = int(signum)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.request(signum)
        if self.started:
            logger.warning(
                "received %s: saving a checkpoint after this step, then stopping "
                "(Ctrl-C again quits without saving)", signal.Signals(signum).name,
            )
        else:
            logger.warning(
                "received %s: stopping before the first step (nothing to save yet)",
                signal.Signals(signum).name,
            )

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
