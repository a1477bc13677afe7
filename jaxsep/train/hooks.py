"""Per-step hooks of the training loop (``train_and_evaluate(config, hooks=[...])``), in the
style of CLU's periodic actions: small objects the loop calls after each optimizer step, so
that "something every N steps" is a hook, not an edit of the loop. The loop's own progress
bar and in-epoch checkpoints are hooks too.

A hook may subclass :class:`Hook` and override what it needs, or be a plain callable
``hook(step, loop)`` (its ``after_step``). It sees a :class:`Step` (where the loop is, this
step's learning rate and loss) and the :class:`Loop` (the config, the run folder, and two
requests: a checkpoint now, or a stop as SIGTERM would). See ``docs/harness.md``.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax

from jaxsep._validation import check_int, fail

__all__ = [
    "CheckpointEvery",
    "Hook",
    "LogEvery",
    "Loop",
    "Profile",
    "ProgressBar",
    "Step",
    "StopAtStep",
]


@dataclasses.dataclass(frozen=True)
class Step:
    """One optimizer step, as hooks see it right after the loop dispatched it.

    Attributes:
      epoch: the epoch it belongs to, 1-based (as in metrics.jsonl).
      step: its number inside the epoch, 1-based (``steps_per_epoch`` for the last).
      steps_per_epoch: steps of every epoch.
      global_step: optimizer steps taken so far, this one included (a checkpoint saved now
        is ``checkpoints/<global_step>/``).
      learning_rate: the step's learning rate.
      loss: the mean train loss of the step's batch, a device scalar: reading it
        (``float(step.loss)``) waits for the step, so read it rarely, or one step later as
        :class:`ProgressBar` does, to keep the device busy.
    """

    epoch: int
    step: int
    steps_per_epoch: int
    global_step: int
    learning_rate: float
    loss: jax.Array


class Loop:
    """What hooks see of the running loop, and what they may ask of it.

    Attributes:
      config: the run's :class:`~jaxsep.train.TrainConfig`.
      out: the run folder (None: nothing is written).
      lead: whether this is process 0 (the one that writes files and shows progress).
    """

    def __init__(self, config: Any, out: Path | None, lead: bool, stop: Any,
                 position: dict[str, int], steps_per_epoch: int):
        self.config, self.out, self.lead = config, out, lead
        self._stop, self._position = stop, position
        self.steps_per_epoch = steps_per_epoch
        self.checkpoint_requested = False

    @property
    def epoch(self) -> int:
        """The current epoch, 1-based."""
        return self._position["epoch"] + 1

    @property
    def step_in_epoch(self) -> int:
        """Steps of the current epoch done so far."""
        return self._position["step_in_epoch"]

    @property
    def global_step(self) -> int:
        """Optimizer steps done so far."""
        return self._position["global_step"]

    def request_checkpoint(self) -> None:
        """Saves a checkpoint after the current step (the end of an epoch saves one anyway)."""
        self.checkpoint_requested = True

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Stops the run after the current step exactly as the signal ``signum`` would: a
        checkpoint is saved and :class:`~jaxsep.train.TrainingInterrupted` raised (the CLI
        exits with 128 + signum); rerunning the same command resumes. Requested from
        ``end_epoch``, the run stops before the next epoch, its checkpoint already saved."""
        self._stop.request(signum)


class Hook:
    """A hook of the training loop; every method does nothing unless overridden. The loop
    calls them in the order the hooks were given, on every process (``loop.lead`` tells
    process 0)."""

    def start_epoch(self, loop: Loop) -> None:
        """Before the first step of an epoch in this session (``loop.step_in_epoch`` steps
        of it are done already when a run resumes inside it)."""

    def after_step(self, step: Step, loop: Loop) -> None:
        """After each optimizer step."""

    def end_epoch(self, metrics: dict[str, Any], loop: Loop) -> None:
        """After an epoch's evaluation and checkpoint, with its metrics.jsonl line."""

    def close(self, loop: Loop) -> None:
        """When the session ends: finished, stopped or failed."""


class _Callable(Hook):
    def __init__(self, function: Callable[[Step, Loop], Any]):
        self.function = function

    def after_step(self, step: Step, loop: Loop) -> None:
        self.function(step, loop)


def as_hooks(hooks: Iterable[Hook | Callable[[Step, Loop], Any]] | None) -> list[Hook]:
    """``hooks`` as Hook objects (a callable becomes its ``after_step``)."""
    result = []
    for hook in hooks or ():
        if isinstance(hook, Hook):
            result.append(hook)
        elif callable(hook):
            result.append(_Callable(hook))
        else:
            raise TypeError(
                f"train_and_evaluate: hooks must be Hook objects or callables (step, loop), "
                f"but got {hook!r}"
            )
    return result


def deprecated_sigterm_hook_env() -> str:
    """``SIGTERM_HOOK_ENV`` of ``jaxsep.train`` and ``jaxsep.train.loop``: the environment
    variable of a test seam that :class:`StopAtStep` replaced; nothing reads it any more."""
    import warnings

    warnings.warn(
        "SIGTERM_HOOK_ENV is deprecated and no longer read: stop a run after a step with "
        "train_and_evaluate(config, hooks=[jaxsep.train.hooks.StopAtStep(step)])",
        DeprecationWarning, stacklevel=3,
    )
    return "JAXSEP_TEST_SIGTERM_AT_STEP"


class CheckpointEvery(Hook):
    """Requests a checkpoint every ``steps`` global steps inside an epoch (the loop adds it
    for ``config.checkpoint_every_steps``)."""

    def __init__(self, steps: int):
        self.steps = check_int("CheckpointEvery", "steps", steps)

    def after_step(self, step: Step, loop: Loop) -> None:
        if step.global_step % self.steps == 0 and step.step < step.steps_per_epoch:
            loop.request_checkpoint()


class StopAtStep(Hook):
    """Stops the run after global step ``global_step`` as ``signum`` (default SIGTERM)
    would: a step budget per session, or an interruption in a test."""

    def __init__(self, global_step: int, signum: int = signal.SIGTERM):
        self.global_step = check_int("StopAtStep", "global_step", global_step)
        self.signum = signum

    def after_step(self, step: Step, loop: Loop) -> None:
        if step.global_step == self.global_step:
            loop.request_stop(self.signum)


class LogEvery(Hook):
    """Logs the loss and learning rate every ``steps`` global steps (reading the loss waits
    for that step, once every ``steps``); ``log`` receives the line (default: the
    ``jaxsep.train`` logger). A small example of a custom-logging hook."""

    def __init__(self, steps: int, log: Callable[[str], Any] | None = None):
        self.steps = check_int("LogEvery", "steps", steps)
        self.log = log or logging.getLogger("jaxsep.train").info

    def after_step(self, step: Step, loop: Loop) -> None:
        if step.global_step % self.steps == 0:
            self.log(f"step {step.global_step} (epoch {step.epoch}, {step.step}/"
                     f"{step.steps_per_epoch}): loss {float(step.loss):.4f}, "
                     f"lr {step.learning_rate:.4g}")


class Profile(Hook):
    """Records a ``jax.profiler`` trace of global steps ``first`` to ``last`` (1-based,
    inclusive) into ``log_dir`` (view it with TensorBoard's or Perfetto's trace viewer)."""

    def __init__(self, log_dir: str | Path, first: int, last: int | None = None):
        self.log_dir = str(log_dir)
        self.first = check_int("Profile", "first", first)
        self.last = self.first if last is None else check_int("Profile", "last", last)
        if self.last < self.first:
            fail("Profile", "last", f">= first ({self.first})", last)
        self.tracing = False

    def _start(self, done: int) -> None:
        if not self.tracing and done == self.first - 1:  # the next step is the first traced
            jax.profiler.start_trace(self.log_dir)
            self.tracing = True

    def start_epoch(self, loop: Loop) -> None:
        self._start(loop.global_step)

    def after_step(self, step: Step, loop: Loop) -> None:
        if self.tracing and step.global_step >= self.last:
            jax.block_until_ready(step.loss)  # the device work of the last step, too
            self.close(loop)
        self._start(step.global_step)

    def close(self, loop: Loop) -> None:
        if self.tracing:
            jax.profiler.stop_trace()
            self.tracing = False


class ProgressBar(Hook):
    """A rich progress bar per epoch: steps, the loss (of the step before, so the host never
    waits for the device), images per second, times. The loop adds it on process 0 unless
    ``config.quiet``."""

    def __init__(self) -> None:
        self.progress = None
        self.task = None
        self.previous: Step | None = None
        self.started = 0.0
        self.first = 0

    def start_epoch(self, loop: Loop) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} img/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            f"epoch {loop.epoch}/{loop.config.epochs}", total=loop.steps_per_epoch,
            completed=loop.step_in_epoch, loss="-", speed="-",
        )
        self.first, self.previous, self.started = loop.step_in_epoch, None, time.perf_counter()

    def after_step(self, step: Step, loop: Loop) -> None:
        if self.progress is None:
            return
        if self.previous is not None:
            images = (step.step - self.first) * loop.config.batch_size
            self.progress.update(
                self.task, completed=step.step, loss=f"{float(self.previous.loss):.4f}",
                speed=f"{images / (time.perf_counter() - self.started):.0f}",
            )
        self.previous = step
        if step.step == step.steps_per_epoch:  # before the evaluation's log line
            self.close(loop)

    def close(self, loop: Loop) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
