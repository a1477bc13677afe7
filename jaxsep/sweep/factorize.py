"""Factorized points: a sweep point that starts from another point's best checkpoint with
each full 3x3 convolution replaced by its depthwise + pointwise factorization (see
``docs/sweeps.md``)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable

import jax
from flax import nnx

from jaxsep import models
from jaxsep._io import atomic_write
from jaxsep.sweep.spec import CONVERTED, Point, Sweep, SweepError, _stderr
from jaxsep.sweep.state import CONVERSION_FILE, point_state
from jaxsep.train import evaluate_run, restore_best, run_folder, save_best
from jaxsep.train.model_from_config import model_options

__all__ = ["convert_point"]


def _no_checkpoint(point: Point, source: Point) -> str:
    return (
        f"point {point.label!r} starts from point {source.label!r}'s best checkpoint, but "
        f"that point is finished only by its record ({source.record}): its run folder "
        f"{str(source.out)!r}, and so its checkpoint, is gone. Train it again by rerunning with "
        f"--retrain {source.label} (or restore {str(source.out)!r})"
    )


def convert_point(sweep: Sweep, point: Point, *, log: Callable[[str], None] = _stderr) -> dict:
    """Writes a factorized point's ``converted/`` run folder and ``conversion.json`` (once;
    later calls read ``conversion.json``) and returns that record: the source, the depth
    multiplier, each layer's relative error, and the converted model's test accuracy and
    loss before any fine-tuning."""
    if point.factorize is None:
        raise SweepError(f"point {point.label!r} is not a factorized point")
    record_file = point.out / CONVERSION_FILE
    record = run_folder.read_json(record_file)
    if record is not None:
        return record
    source = sweep.point(point.init_from)
    state = point_state(source)
    if state == "recorded":
        raise SweepError(_no_checkpoint(point, source))
    if state != "finished":
        raise SweepError(
            f"point {point.label!r} starts from point {source.label!r}'s best checkpoint, but "
            f"that point has not finished; run it first (--only {source.label})"
        )
    converted_dir = point.out / CONVERTED
    if converted_dir.exists():  # a conversion cut short: it is deterministic, redo it
        shutil.rmtree(converted_dir)
    log(f"{sweep.id}/{point.label}: factorizing {source.label}'s best checkpoint with depth "
        f"multiplier {point.factorize}")
    model = models.create(source.config.model, rngs=nnx.Rngs(0), **model_options(source.config))
    _, params, batch_stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    tree, meta = restore_best(source.out, {"params": params, "batch_stats": batch_stats})
    nnx.update(model, tree["params"], tree["batch_stats"])
    model.eval()
    converted, errors = models.factorize_mobilenet_v1(
        model, point.factorize, impl=point.config.impl
    )
    converted.train()
    _, new_params, new_stats, _ = nnx.split(converted, nnx.Param, nnx.BatchStat, ...)
    converted_dir.mkdir(parents=True)
    atomic_write(converted_dir / run_folder.CONFIG_FILE,
                  point.config.replace(out=None, init_from=None).to_json().encode())
    save_best(converted_dir, {"params": new_params, "batch_stats": new_stats},
               {"epoch": 0, "source": str(source.out), "source_epoch": int(meta["epoch"])})
    evaluation = evaluate_run(converted_dir, which="best")
    record = {
        "source": source.label,
        "source_run": str(source.out),
        "source_best_epoch": int(meta["epoch"]),
        "source_test_accuracy": meta.get("test_accuracy"),
        "depth_multiplier": point.factorize,
        "relative_errors": [float(e) for e in errors],
        "mean_relative_error": float(sum(errors) / len(errors)),
        "test_accuracy": evaluation["test_accuracy"],
        "test_loss": evaluation["test_loss"],
        "num_test": evaluation["num_test"],
        "jax_version": jax.__version__,
    }
    atomic_write(record_file, (json.dumps(record, indent=2) + "\n").encode())
    return record
