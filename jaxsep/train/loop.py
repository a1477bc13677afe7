"""``train_and_evaluate(config)``: the training loop, which writes a run folder, checkpoints,
resumes exactly, stops cleanly on SIGINT/SIGTERM and calls per-step hooks.

Why it is shaped this way: everything that decides the future is in the checkpoint and all
randomness derives from ``(seed, epoch, step)``, so a resumed run computes exactly what an
uninterrupted one computes; each step is dispatched before the previous step's loss is read,
so the host never idles the device. The run folder's files, the resume rule, signals and
multi-host runs are described in ``docs/harness.md``.

The other rooms of the harness: :mod:`~jaxsep.train.run_folder` (the folder and the resume
rule), :mod:`~jaxsep.train.checkpoints`, :mod:`~jaxsep.train.setup` (checks, data, mesh,
initial parameters), :mod:`~jaxsep.train.evaluate`, :mod:`~jaxsep.train.hooks` and
:mod:`~jaxsep.train.runtime` (signals, logs, multi-host). This module re-exports the names
it has always had.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsep import cost, data as jdata
from jaxsep._io import atomic_write
from jaxsep.train import checkpoints, init_from, run_folder, steps as S
from jaxsep.train.checkpoints import load_checkpoint, restore_best, save_best
from jaxsep.train.config import TrainConfig
from jaxsep.train.evaluate import Evaluator, evaluate_run
from jaxsep.train.hooks import (
    CheckpointEvery,
    Hook,
    Loop,
    ProgressBar,
    Step,
    as_hooks,
    deprecated_sigterm_hook_env,
)
from jaxsep.train.optim import learning_rate_schedule
from jaxsep.train.runtime import (
    NonFiniteLossError,
    StopRequest,
    TrainingInterrupted,
    config_errors,
    describe_devices,
    logger,
    maybe_initialize_distributed,
    visible_logs,
)
from jaxsep.train.setup import Setup, count_macs, preflight, setup as build_setup
from jaxsep.xla_options import compiler_options

__all__ = [
    "EPOCH_FIELDS",
    "NonFiniteLossError",
    "TIMING_FIELDS",
    "TrainingInterrupted",
    "evaluate_run",
    "load_checkpoint",
    "maybe_initialize_distributed",
    "restore_best",
    "save_best",
    "train_and_evaluate",
]

# One metrics.jsonl line: these keys, in this order.
EPOCH_FIELDS = (
    "epoch",
    "global_step",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "learning_rate",
    "images_per_second",
    "epoch_seconds",
    "eval_seconds",
    "elapsed_seconds",
)
# The fields that measure time (they differ between otherwise identical runs).
TIMING_FIELDS = ("images_per_second", "epoch_seconds", "eval_seconds", "elapsed_seconds")


def __getattr__(name: str) -> Any:
    if name == "SIGTERM_HOOK_ENV":  # deprecated: nothing reads it; see hooks.StopAtStep
        return deprecated_sigterm_hook_env()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def train_and_evaluate(
    config: TrainConfig,
    *,
    resume: bool | None = None,
    devices: Sequence[Any] | None = None,
    hooks: Iterable[Hook | Callable[[Step, Loop], Any]] = (),
) -> dict[str, Any]:
    """Trains ``config.model`` on ``config.dataset`` and evaluates it; the library entry point
    of ``jaxsep train``.

    Args:
      config: every hyperparameter (see :class:`TrainConfig`).
      resume: None (default): continue from the last checkpoint in ``config.out`` when there
        is one, else start; True: there must be a checkpoint to continue from; False: start,
        and refuse a folder that already holds checkpoints.
      devices: the devices of the data-parallel mesh (default ``jax.devices()``).
      hooks: called after each optimizer step (and at epoch starts and ends), after the
        loop's own progress bar and in-epoch checkpoints: :class:`~jaxsep.train.hooks.Hook`
        objects or callables ``hook(step, loop)`` (see :mod:`jaxsep.train.hooks`).

    Returns:
      The summary dict (also written to ``out/summary.json``): final and best test accuracy,
      parameters, multiply-adds per example, times, throughput and device.

    Raises:
      ValueError / TypeError / FileNotFoundError: bad configuration, before any compute.
      NonFiniteLossError: the loss diverged (the last good checkpoint is kept).
      TrainingInterrupted: SIGINT/SIGTERM, or a hook's stop request; a checkpoint was saved
        unless no step had run (``checkpoint`` is then None).
    """
    maybe_initialize_distributed()
    started = time.perf_counter()
    with config_errors():
        config = init_from.resolve(config) if isinstance(config, TrainConfig) else config
    abstract, devices, out, resuming = preflight(config, resume, devices)
    with config_errors():
        hooks = as_hooks(hooks)
    # Signals are caught from here on: one that comes while the data loads or the steps
    # compile stops the run before its first step, with a word, instead of killing it.
    with visible_logs(), StopRequest() as stop:
        setup = build_setup(config, abstract, devices)
        trainer = _Trainer(setup, devices, out, started, stop, hooks)
        try:
            if resuming:
                trainer.restore()
            elif config.init_from is not None:
                trainer.initialize_from()
            trainer.stop_if_requested()
            trainer.compile()
            while trainer.position["epoch"] < config.epochs:
                trainer.stop_if_requested()
                trainer.train_epoch()
                trainer.finish_epoch()
            return trainer.summary()
        finally:
            trainer.close()


class _Trainer:
    """The state of one run between steps, and the steps of the loop over it."""

    def __init__(self, setup: Setup, devices: Sequence[Any], out: Path | None, started: float,
                 stop: StopRequest, hooks: list[Hook]):
        config, spec, dataset = setup.config, setup.spec, setup.dataset
        self.config, self.setup, self.spec, self.devices, self.out = config, setup, spec, devices, out
        self.started, self.stop = started, stop
        self.lead = jax.process_index() == 0
        self.schedule = learning_rate_schedule(config, setup.steps_per_epoch)
        self.state = {
            "params": setup.params,
            "batch_stats": setup.batch_stats,
            "opt_state": S.init_optimizer_state(spec, setup.params),
            "sums": S.zero_sums(spec),
        }
        # Everything below, with the state, is what a checkpoint holds.
        self.position = {"epoch": 0, "step_in_epoch": 0, "global_step": 0}
        # The loop's own hooks first, then the caller's.
        self.loop = Loop(config, out, self.lead, stop, self.position, setup.steps_per_epoch)
        own: list[Hook] = [ProgressBar()] if self.lead and not config.quiet else []
        if config.checkpoint_every_steps is not None:
            own.append(CheckpointEvery(config.checkpoint_every_steps))
        self.hooks = own + hooks
        self.metrics: list[dict] = []
        self.best: dict[str, Any] = {"test_accuracy": None, "epoch": None}
        self.initialized_from: dict[str, Any] | None = None  # init_from's record, kept on resume
        # Seconds of earlier sessions (and of the current epoch before a mid-epoch resume).
        self.carried = {"elapsed_seconds": 0.0, "train_seconds": 0.0, "epoch_seconds": 0.0}
        self.session_train_seconds = 0.0
        self.compile_seconds = 0.0
        self.manager = self.best_manager = None
        if out is not None:
            if self.lead:  # (re)written: resumable fields such as epochs may have changed
                atomic_write(out / run_folder.CONFIG_FILE, config.to_json())
            self.manager = checkpoints.manager(
                out / run_folder.CHECKPOINTS, checkpoints.KEEP_CHECKPOINTS
            )
            self.best_manager = checkpoints.manager(out / run_folder.BEST, 1)
        replicated = spec.replicated
        self.images = S.to_device(dataset.train_images, replicated)
        self.labels = S.to_device(dataset.train_labels, replicated)
        self.used = setup.steps_per_epoch * config.batch_size  # the last partial batch is dropped
        self.evaluator = Evaluator(setup)
        self.train_step = None
        logger.info(
            "%s: %s x%s (%s), %d train / %d test examples, %d steps per epoch, %d device(s) %s",
            out if out is not None else "(no out)", config.model, config.width,
            config.compute_dtype, dataset.num_train, dataset.num_test, setup.steps_per_epoch,
            len(devices), devices[0].device_kind,
        )

    def _scalar(self, value: Any, dtype: Any) -> jax.Array:
        return S.to_device(np.asarray(value, dtype), self.spec.replicated)

    def _order(self, epoch: int) -> jax.Array:
        """This epoch's example order (its first ``used`` entries) on device."""
        permutation = jdata.epoch_permutation(
            self.setup.dataset.num_train, seed=self.config.seed, epoch=epoch
        )
        return S.to_device(permutation[: self.used].astype(np.int32), self.spec.replicated)

    # ---- checkpoints --------------------------------------------------------------------

    def restore(self) -> None:
        step = self.manager.latest_step()
        self.state, meta = checkpoints.restore(self.manager, step, checkpoints.abstract(self.state))
        if meta.get("format") != checkpoints.CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint {self.out / 'checkpoints' / str(step)} has an unknown format")
        self.position.update({key: int(meta[key]) for key in self.position})
        self.metrics = list(meta["metrics"])
        self.best = dict(meta["best"])
        self.initialized_from = meta.get("initialized_from")
        self.carried = {key: float(meta[key]) for key in self.carried}
        logger.info(
            "resuming from %s: epoch %d, step %d of %d", self.out / "checkpoints" / str(step),
            self.position["epoch"] + 1, self.position["step_in_epoch"],
            self.setup.steps_per_epoch,
        )

    def initialize_from(self) -> None:
        """Replaces the initial parameters and BatchNorm statistics by ``init_from``'s, all
        but a new classifier head (the optimizer state stays fresh; preflight checked the
        shapes; see :mod:`jaxsep.train.init_from`)."""
        params, batch_stats, record = init_from.initial_variables(
            self.config, self.state["params"], self.state["batch_stats"], self.spec.replicated)
        self.state.update(params=params, batch_stats=batch_stats,
                          opt_state=S.init_optimizer_state(self.spec, params))
        self.initialized_from = record
        logger.info("initialized from %s (new head: %s)", record["folder"], record["new_head"])

    def save(self) -> str | None:
        """Checkpoints the state and the loop's position; returns the folder (None without
        ``out``)."""
        if self.manager is None:
            return None
        meta = {
            "format": checkpoints.CHECKPOINT_FORMAT,
            **self.position,
            "metrics": self.metrics,
            "best": self.best,
            "initialized_from": self.initialized_from,
            "elapsed_seconds": self.carried["elapsed_seconds"] + time.perf_counter() - self.started,
            "train_seconds": self.carried["train_seconds"] + self.session_train_seconds,
            "epoch_seconds": self.carried["epoch_seconds"],
            "config": self.config.to_dict(),
        }
        step = self.position["global_step"]
        checkpoints.save(self.manager, step, self.state, meta)
        return str(self.out / run_folder.CHECKPOINTS / str(step))

    def last_checkpoint(self) -> str | None:
        if self.manager is None or self.manager.latest_step() is None:
            return None
        return str(self.out / run_folder.CHECKPOINTS / str(self.manager.latest_step()))

    def close(self) -> None:
        try:
            for hook in self.hooks:
                hook.close(self.loop)
        finally:
            for manager in (self.manager, self.best_manager):
                if manager is not None:
                    manager.close()

    # ---- stopping -------------------------------------------------------------------------

    def stop_if_requested(self) -> None:
        """Between steps (before the first, or between epochs, whose end was just saved):
        raises TrainingInterrupted if a signal or a hook asked to stop."""
        signum = self.stop.signum
        if signum is None:
            return
        name, checkpoint = signal.Signals(signum).name, self.last_checkpoint()
        if not self.stop.started and checkpoint is None:
            message = (f"stopped by {name} before the first step; nothing to save; rerun the "
                       "same command to start" + (" (without --resume: there is no checkpoint "
                                                  "to resume from)" if self.out else ""))
        elif not self.stop.started:
            message = (f"stopped by {name} before the first step of this session; the last "
                       f"checkpoint is {checkpoint}; rerun the same command to resume")
        else:
            message = (f"{name}: stopped after epoch {self.position['epoch']} of "
                       f"{self.config.epochs}" + (f"; checkpoint saved to {checkpoint}; rerun "
                       "the same command to resume" if checkpoint else " (no out: nothing saved)"))
        raise TrainingInterrupted(message, signum=signum, checkpoint=checkpoint)

    # ---- steps ----------------------------------------------------------------------------

    def compile(self) -> None:
        """Compiles the train and eval steps ahead of the first step (timed on their own)."""
        start = time.perf_counter()
        setup, replicated = self.setup, self.spec.replicated
        self.train_step = S.jit_train_step.lower(
            setup.train_graphdef, self.spec, self.state, setup.rest, self.images, self.labels,
            jax.ShapeDtypeStruct((self.used,), jnp.int32, sharding=replicated),
            self._scalar(0, np.int32), self._scalar(0, np.int32), self._scalar(0.0, np.float32),
        ).compile(compiler_options=compiler_options())
        self.evaluator.compile(self.state["params"], self.state["batch_stats"])
        self.compile_seconds = time.perf_counter() - start
        logger.info("compiled the train and eval steps in %.1f s", self.compile_seconds)

    def check(self, pending: tuple | None) -> None:
        """Raises NonFiniteLossError if the step in ``pending`` had a non-finite loss or
        produced a non-finite parameter (waits for that step)."""
        if pending is None:
            return
        result, epoch, step, global_step, lr = pending
        if bool(result["finite"]):
            return
        checkpoint = self.last_checkpoint()
        raise NonFiniteLossError(
            f"training stopped: the loss became {float(result['loss'])} (or a parameter "
            f"became non-finite) at epoch {epoch + 1}, step {step + 1} (global step "
            f"{global_step}) with learning rate {lr:.4g}. "
            + (f"The last good checkpoint is {checkpoint}; " if checkpoint else
               "There is no checkpoint; ")
            + "lower --lr, add --warmup-epochs, or check the data.",
            epoch=epoch + 1, step=step + 1, global_step=global_step, learning_rate=lr,
            checkpoint=checkpoint,
        )

    def train_epoch(self) -> None:
        """Runs the remaining steps of the current epoch, calling the hooks after each. Each
        step is dispatched before the previous one's loss is read, so the host never idles
        the device."""
        position, stop, loop = self.position, self.stop, self.loop
        steps_per_epoch = self.setup.steps_per_epoch
        epoch, first_step = position["epoch"], position["step_in_epoch"]
        if first_step == 0:
            self.state["sums"] = S.zero_sums(self.spec)
            self.carried["epoch_seconds"] = 0.0
        order, epoch_array = self._order(epoch), self._scalar(epoch, np.int32)
        for hook in self.hooks:
            hook.start_epoch(loop)
        started = time.perf_counter()

        def account() -> None:  # moves the time since `started` into the epoch's seconds
            nonlocal started
            now = time.perf_counter()
            self.session_train_seconds += now - started
            self.carried["epoch_seconds"] += now - started
            started = now

        pending = None
        for step in range(first_step, steps_per_epoch):
            lr = self.schedule(position["global_step"])
            self.state, result = self.train_step(
                self.state, self.setup.rest, self.images, self.labels, order, epoch_array,
                self._scalar(step, np.int32), self._scalar(lr, np.float32),
            )
            stop.started = True
            position["global_step"] += 1
            position["step_in_epoch"] = step + 1
            self.check(pending)  # the previous step's: finished by now, or soon
            pending = (result, epoch, step, position["global_step"], lr)
            info = Step(epoch=epoch + 1, step=step + 1, steps_per_epoch=steps_per_epoch,
                        global_step=position["global_step"], learning_rate=lr,
                        loss=result["loss"])
            loop.checkpoint_requested = False
            for hook in self.hooks:
                hook.after_step(info, loop)
            # The end of the epoch is saved by finish_epoch; a stop is saved here.
            wanted = loop.checkpoint_requested and step + 1 < steps_per_epoch
            if stop.signum is not None or wanted:
                self.check(pending)  # never save a state that is not finite
                account()
                path = self.save()
                if stop.signum is not None:
                    raise TrainingInterrupted(
                        f"{signal.Signals(stop.signum).name}: stopped at epoch {epoch + 1}, "
                        f"step {step + 1} of {steps_per_epoch}"
                        + (f"; checkpoint saved to {path}; rerun the same command to "
                           "resume" if path else " (no out: nothing saved)"),
                        signum=stop.signum, checkpoint=path,
                    )
        self.check(pending)
        account()

    def finish_epoch(self) -> None:
        """Evaluates (every eval_every epochs and after the last), appends the epoch's metrics
        line, keeps the best parameters, checkpoints the end of the epoch and calls the
        hooks' ``end_epoch``."""
        config, position = self.config, self.position
        epoch = position["epoch"]
        sums = jax.device_get(self.state["sums"])
        test_loss = test_accuracy = None
        eval_start = time.perf_counter()
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            test_loss, test_accuracy = self.evaluator(
                self.state["params"], self.state["batch_stats"]
            )
        steps = int(sums["steps"])
        line = {
            "epoch": epoch + 1,
            "global_step": position["global_step"],
            "train_loss": float(sums["loss"]) / steps,
            "train_accuracy": int(sums["correct"]) / (steps * config.batch_size),
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "learning_rate": self.schedule(position["global_step"] - 1),  # the epoch's last
            "images_per_second": steps * config.batch_size / self.carried["epoch_seconds"],
            "epoch_seconds": self.carried["epoch_seconds"],
            "eval_seconds": time.perf_counter() - eval_start,
            "elapsed_seconds": self.carried["elapsed_seconds"] + time.perf_counter() - self.started,
        }
        self.metrics.append(line)
        logger.info("%s", _format_epoch(line, config.epochs))
        if test_accuracy is not None and (
            self.best["test_accuracy"] is None or test_accuracy > self.best["test_accuracy"]
        ):
            self.best = {"test_accuracy": test_accuracy, "epoch": epoch + 1}
            if self.best_manager is not None:
                checkpoints.save(
                    self.best_manager, epoch + 1,
                    {"params": self.state["params"], "batch_stats": self.state["batch_stats"]},
                    {"format": checkpoints.CHECKPOINT_FORMAT, "epoch": epoch + 1,
                     "test_accuracy": test_accuracy, "test_loss": test_loss,
                     "global_step": position["global_step"]},
                )
        position["epoch"], position["step_in_epoch"] = epoch + 1, 0
        if self.out is not None and self.lead:
            text = "".join(json.dumps(m) + "\n" for m in self.metrics)
            atomic_write(self.out / run_folder.METRICS_FILE, text)
        self.save()
        for hook in self.hooks:
            hook.end_epoch(dict(line), self.loop)

    # ---- the report -------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """The run's summary (written to summary.json)."""
        config, setup, dataset, metrics = self.config, self.setup, self.setup.dataset, self.metrics
        final = next((m for m in reversed(metrics) if m["test_accuracy"] is not None), None)
        train_seconds = self.carried["train_seconds"] + self.session_train_seconds
        images = sum(round(m["images_per_second"] * m["epoch_seconds"]) for m in metrics)
        summary = {
            "model": config.model,
            "width": config.width,
            "conv": config.conv,
            "resolution": config.resolution or int(dataset.train_images.shape[1]),
            "dataset": dataset.name,
            "num_train": dataset.num_train,
            "num_test": dataset.num_test,
            "epochs": len(metrics),
            "seed": config.seed,
            "final_test_accuracy": final["test_accuracy"] if final else None,
            "final_test_loss": final["test_loss"] if final else None,
            "best_test_accuracy": self.best["test_accuracy"],
            "best_epoch": self.best["epoch"],
            "final_train_loss": metrics[-1]["train_loss"] if metrics else None,
            "params": cost.count_params(setup.params),
            "macs": count_macs(setup),
            "learning_rate": config.resolved_lr,
            "weight_decay": config.resolved_weight_decay,
            "images_per_second": images / train_seconds if train_seconds > 0 else None,
            "train_seconds": train_seconds,
            "compile_seconds": self.compile_seconds,
            "wall_seconds": self.carried["elapsed_seconds"] + time.perf_counter() - self.started,
            "device": describe_devices(self.devices),
            "jax_version": jax.__version__,
            "out": str(self.out) if self.out is not None else None,
            "initialized_from": self.initialized_from,
        }
        if self.out is not None and self.lead:
            atomic_write(self.out / run_folder.SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        logger.info(
            "done: final test accuracy %s, best %s (epoch %s), %.0f s",
            _percent(summary["final_test_accuracy"]), _percent(summary["best_test_accuracy"]),
            summary["best_epoch"], summary["wall_seconds"],
        )
        return summary


def _format_epoch(line: dict, epochs: int) -> str:
    text = (
        f"epoch {line['epoch']}/{epochs}  train loss {line['train_loss']:.4f} "
        f"acc {100 * line['train_accuracy']:.2f}%"
    )
    if line["test_accuracy"] is not None:
        text += f"  test loss {line['test_loss']:.4f} acc {100 * line['test_accuracy']:.2f}%"
    return text + (
        f"  lr {line['learning_rate']:.4g}  {line['images_per_second']:.0f} img/s  "
        f"{line['epoch_seconds']:.1f} s"
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"
