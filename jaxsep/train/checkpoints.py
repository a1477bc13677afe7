"""Orbax checkpoints of a run: one manager factory, a public save/restore pair, the best
parameters (``save_best``/``restore_best``), and reading a checkpoint for inspection.

A checkpoint is a composite of ``state`` (a pytree of arrays) and ``meta`` (JSON). Saves are
synchronous into a temporary folder that Orbax renames into place, so a save cut short is
never taken for a checkpoint. See ``docs/harness.md`` for the run folder's layout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxsep._validation import check_choice

__all__ = [
    "CHECKPOINT_FORMAT",
    "KEEP_CHECKPOINTS",
    "WHICH",
    "abstract",
    "load_checkpoint",
    "manager",
    "restore",
    "restore_best",
    "save",
    "save_best",
    "stored_shapes",
]

CHECKPOINT_FORMAT = 1
KEEP_CHECKPOINTS = 2  # of checkpoints/: the last two, so a save cut short leaves one
# A run's two kinds of checkpoint: "best" (best/: parameters and BatchNorm statistics of the
# best test accuracy) and "last" (checkpoints/: the whole train state and the loop's position).
WHICH = ("best", "last")


def manager(directory: Path, keep: int | None = 1, *, read_only: bool = False):
    """An Orbax ``CheckpointManager`` of ``directory``: for saving and restoring (created
    if missing, keeping the last ``keep`` steps), or ``read_only`` (never created; reads
    checkpoints without knowing their structure: metadata, NumPy restores)."""
    import orbax.checkpoint as ocp

    if read_only:
        return ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(create=False),
            item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()},
        )
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=False, create=True
    )
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save(manager: Any, step: int, tree: Any, meta: dict) -> None:
    """Saves ``tree`` (arrays) and ``meta`` (JSON) as checkpoint ``step`` of ``manager``
    (from :func:`manager`), replacing one of that step, and waits until it is written."""
    import orbax.checkpoint as ocp

    if step in manager.all_steps():
        manager.delete(step)
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)),
        force=True,
    )
    manager.wait_until_finished()


def restore(manager: Any, step: int, abstract_tree: Any) -> tuple[Any, dict]:
    """Checkpoint ``step`` of ``manager``: ``(tree, meta)``, the tree restored into the
    structure, dtypes and shardings of ``abstract_tree`` (see :func:`abstract`)."""
    import orbax.checkpoint as ocp

    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_tree), meta=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], restored["meta"]


def abstract(tree: Any) -> Any:
    """``tree``'s arrays as ``jax.ShapeDtypeStruct`` with their shardings (a restore target)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
    )


def restore_best(run: str | os.PathLike, target: Any) -> tuple[Any, dict]:
    """A run's best checkpoint (``run/best/``), restored into the structure, dtypes and
    shardings of ``target`` (``{"params", "batch_stats"}``), and its metadata (``epoch``,
    ``test_accuracy``, ...). For code that builds on a finished run, as ``init_from`` does."""
    folder = Path(run) / "best"
    if not folder.is_dir():  # checked first: the manager would create the folder
        raise FileNotFoundError(f"restore_best: no checkpoint folder {str(folder)!r}")
    best = manager(folder, 1)
    try:
        step = best.latest_step()
        if step is None:
            raise FileNotFoundError(f"restore_best: no checkpoint in {str(folder)!r}")
        return restore(best, step, abstract(target))
    finally:
        best.close()


def save_best(run: str | os.PathLike, tree: Any, meta: dict) -> None:
    """Writes ``tree`` (``{"params", "batch_stats"}``) as ``run``'s best checkpoint, in the
    harness's format, at step ``meta["epoch"]``; ``init_from`` and ``jaxsep eval`` read it."""
    best = manager(Path(run) / "best", 1)
    try:
        save(best, int(meta["epoch"]), tree, {"format": CHECKPOINT_FORMAT, **meta})
    finally:
        best.close()


def _metadata(reader: Any, step: int) -> Any:
    metadata = reader.item_metadata(step)["state"]
    return getattr(metadata, "tree", metadata)


def stored_shapes(folder: Path, step: int | None = None) -> list[tuple[int, ...]]:
    """The sorted shapes of the arrays in a checkpoint of ``folder`` (default its latest),
    read from its metadata only."""
    reader = manager(folder, read_only=True)
    try:
        step = reader.latest_step() if step is None else step
        metadata = _metadata(reader, step)
    finally:
        reader.close()
    return sorted(tuple(leaf.shape) for leaf in jax.tree.leaves(metadata))


def load_checkpoint(
    run: str | os.PathLike, *, which: str = "last", step: int | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run's checkpoint as host (NumPy) arrays, for inspection: ``(tree, meta)``.

    ``tree`` is ``{"params", "batch_stats", "opt_state", "sums"}`` for ``which="last"`` (the
    train state) and ``{"params", "batch_stats"}`` for ``which="best"``, with nested dicts in
    place of ``nnx.State``; ``meta`` holds the loop's position, metrics and best accuracy
    ("last") or the epoch and accuracy ("best"). ``step`` picks a checkpoint (default the
    latest).
    """
    import orbax.checkpoint as ocp

    check_choice("load_checkpoint", "which", which, WHICH)
    folder = Path(run).expanduser() / ("best" if which == "best" else "checkpoints")
    if not folder.is_dir():
        raise FileNotFoundError(f"load_checkpoint: no checkpoint folder {str(folder)!r}")
    reader = manager(folder, read_only=True)
    try:
        step = reader.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"load_checkpoint: no checkpoint in {str(folder)!r}")
        as_numpy = jax.tree.map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), _metadata(reader, step)
        )
        restored = reader.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(restore_args=as_numpy), meta=ocp.args.JsonRestore()
            ),
        )
    finally:
        reader.close()
    tree = jax.tree.map(np.asarray, restored["state"])
    return tree, restored["meta"]
