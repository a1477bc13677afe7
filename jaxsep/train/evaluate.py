"""Test accuracy: the evaluator the loop runs after each epoch, and :func:`evaluate_run`,
which reloads a saved run's checkpoint and measures it (``jaxsep eval``)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxsep._validation import check_choice
from jaxsep.train import checkpoints, run_folder, steps as S
from jaxsep.train.config import TrainConfig
from jaxsep.train.model_from_config import abstract_model
from jaxsep.train.runtime import maybe_initialize_distributed, visible_logs
from jaxsep.train.setup import Setup, setup as build_setup
from jaxsep.xla_options import compiler_options

__all__ = ["Evaluator", "evaluate_run"]


class Evaluator:
    """Mean loss and accuracy over exactly a setup's test split: the split lives on device,
    padded to whole eval batches whose padding is masked out."""

    def __init__(self, setup: Setup):
        self.setup = setup
        dataset = setup.dataset
        replicated = setup.eval_spec.replicated
        pad = setup.padded_test - dataset.num_test
        images = np.concatenate(
            [dataset.test_images, np.zeros((pad, *dataset.test_images.shape[1:]), np.uint8)]
        )
        labels = np.concatenate([dataset.test_labels, np.zeros((pad,), np.int32)])
        self.images = S.to_device(images, replicated)
        self.labels = S.to_device(labels, replicated)
        self.num_valid = S.to_device(np.int32(dataset.num_test), replicated)
        self.starts = [
            S.to_device(np.int32(start), replicated)
            for start in range(0, setup.padded_test, setup.eval_spec.batch_size)
        ]
        self.compiled = None
        self.compile_seconds = 0.0

    def compile(self, params: Any, batch_stats: Any) -> None:
        start = time.perf_counter()
        self.compiled = S.jit_eval_step.lower(
            self.setup.eval_graphdef, self.setup.eval_spec, params, batch_stats,
            self.setup.rest, self.images, self.labels, self.starts[0], self.num_valid,
        ).compile(compiler_options=compiler_options())
        self.compile_seconds = time.perf_counter() - start

    def __call__(self, params: Any, batch_stats: Any) -> tuple[float, float]:
        """(mean test loss, test accuracy) over exactly the test split's examples."""
        if self.compiled is None:
            self.compile(params, batch_stats)
        sums = [
            self.compiled(params, batch_stats, self.setup.rest, self.images, self.labels,
                          start, self.num_valid)
            for start in self.starts
        ]
        sums = jax.device_get(sums)
        count = self.setup.dataset.num_test
        loss = math.fsum(float(s["loss"]) for s in sums) / count
        correct = sum(int(s["correct"]) for s in sums)
        return loss, correct / count


def evaluate_run(
    run: str | os.PathLike,
    *,
    which: str = "best",
    data_dir: str | None = None,
    devices: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Reloads a run's checkpoint and measures its test accuracy (``jaxsep eval``).

    Args:
      run: the run folder (``config.out`` of :func:`train_and_evaluate`).
      which: "best" (the best test accuracy's parameters) or "last" (the last checkpoint).
      data_dir: where the data is now, if it moved (default: the run's ``data_dir``).
      devices: as in :func:`train_and_evaluate`.

    Returns:
      ``{"test_accuracy", "test_loss", "num_test", "epoch", "step_in_epoch", "checkpoint",
      "dataset"}``.
    """
    maybe_initialize_distributed()
    run = Path(run).expanduser()
    check_choice("evaluate_run", "which", which, checkpoints.WHICH)
    if not (run / run_folder.CONFIG_FILE).is_file():
        raise FileNotFoundError(f"evaluate_run: {str(run)!r} is not a run folder (no config.json)")
    config = TrainConfig.load(run / run_folder.CONFIG_FILE)
    if data_dir is not None:
        config = config.replace(data_dir=str(data_dir))
    config = config.replace(out=None)
    folder = run / (run_folder.BEST if which == "best" else run_folder.CHECKPOINTS)
    if not run_folder.checkpoint_steps(folder):
        hint = " (no evaluation has finished yet; try which='last')" if which == "best" else ""
        raise FileNotFoundError(f"evaluate_run: no checkpoint in {str(folder)!r}{hint}")
    abstract = abstract_model(config)
    devices = list(devices) if devices is not None else jax.devices()
    count = len(devices)
    if config.batch_size % count:  # eval only: any batch the devices divide will do
        config = config.replace(batch_size=-(-config.batch_size // count) * count)
    with visible_logs():
        setup = build_setup(config, abstract, devices)
        manager = checkpoints.manager(
            folder, 1 if which == "best" else checkpoints.KEEP_CHECKPOINTS
        )
        try:
            step = manager.latest_step()
            target: dict[str, Any] = {"params": setup.params, "batch_stats": setup.batch_stats}
            if which == "last":
                target["opt_state"] = S.init_optimizer_state(setup.spec, setup.params)
                target["sums"] = S.zero_sums(setup.spec)
            restored, meta = checkpoints.restore(manager, step, checkpoints.abstract(target))
        finally:
            manager.close()
        loss, accuracy = Evaluator(setup)(restored["params"], restored["batch_stats"])
    return {
        "test_accuracy": accuracy,
        "test_loss": loss,
        "num_test": setup.dataset.num_test,
        # best: the epoch it was measured after; last: the epochs finished before it
        "epoch": int(meta["epoch"]),
        "step_in_epoch": 0 if which == "best" else int(meta["step_in_epoch"]),
        "checkpoint": str(folder / str(step)),
        "dataset": setup.dataset.name,
    }
