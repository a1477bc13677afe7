"""A model saved as a folder: which model (name and arguments) and its variables.

::

    DIR/config.json   {"format": "jaxsep.model", "version": 1, "model": NAME,
                       "model_kwargs": {...}, ...any extra fields (e.g. "source",
                       "preprocessing" from jaxsep convert)}
    DIR/state/        an Orbax checkpoint of {"params": ..., "batch_stats": ...}
                      (nested dicts of arrays, as nnx.to_pure_dict gives them)

:func:`save` writes the state first and ``config.json`` last (atomically), so a folder with a
``config.json`` is complete. :func:`load` builds the model abstractly, restores every
parameter and BatchNorm statistic into it, and returns it in eval mode.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxsep._io import atomic_write
from jaxsep.models._registry import create, list_models

__all__ = ["FORMAT", "fill_random_streams", "load", "read_config", "save"]

FORMAT = "jaxsep.model"
VERSION = 1
CONFIG = "config.json"
STATE = "state"


def save(
    model: nnx.Module,
    directory: str | os.PathLike,
    *,
    name: str,
    model_kwargs: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Writes ``model`` to the new folder ``directory``; returns its path.

    ``name`` and ``model_kwargs`` must rebuild ``model``'s structure through
    :func:`jaxsep.models.create` (JSON values only: runtime choices such as ``impl`` or
    ``dtype`` are given to :func:`load` instead). ``extra`` adds top-level fields to
    ``config.json``.

    Raises:
      FileExistsError: ``directory`` exists and is not empty.
      ValueError: ``name`` is not a registered model.
      TypeError: a value that JSON cannot hold.
    """
    import orbax.checkpoint as ocp

    if name not in list_models():
        raise ValueError(f"save: name must be one of {list_models()}, but got {name!r}")
    directory = Path(directory).expanduser().absolute()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise FileExistsError(f"save: {str(directory)!r} exists and is not an empty folder")
    config = {
        "format": FORMAT,
        "version": VERSION,
        "model": name,
        "model_kwargs": dict(model_kwargs),
        **dict(extra or {}),
    }
    try:
        text = json.dumps(config, indent=2) + "\n"
    except TypeError as error:
        raise TypeError(f"save: config.json takes JSON values only: {error}") from None
    directory.mkdir(parents=True, exist_ok=True)
    tree = {
        "params": nnx.to_pure_dict(nnx.state(model, nnx.Param)),
        "batch_stats": nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)),
    }
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / STATE, tree)
        checkpointer.wait_until_finished()
    atomic_write(directory / CONFIG, text)
    return directory


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """A saved model's ``config.json``, checked to be one.

    Raises:
      FileNotFoundError: no ``config.json`` in ``directory``.
      ValueError: it is not a saved model's config.
    """
    path = Path(directory).expanduser() / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"load: {str(path.parent)!r} is not a saved model (no {CONFIG})")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"load: {str(path)!r} is not JSON: {error}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(
            f"load: {str(path)!r} is not a saved model's config (format must be {FORMAT!r})"
        )
    if config.get("version") != VERSION:
        raise ValueError(
            f"load: {str(path)!r} has format version {config.get('version')!r}; this jaxsep "
            f"reads version {VERSION}"
        )
    return config


def load(directory: str | os.PathLike, **overrides: Any) -> nnx.Module:
    """The model saved in ``directory`` (by :func:`save` or ``jaxsep convert``), in eval mode.

    ``overrides`` are added to the saved model arguments, for runtime choices such as
    ``impl="xla"`` or ``dtype=jnp.bfloat16``; one that changes a variable's shape fails.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).expanduser().absolute()
    config = read_config(directory)
    kwargs = {**config["model_kwargs"], **overrides}
    model = nnx.eval_shape(lambda: create(config["model"], **kwargs))
    params = nnx.state(model, nnx.Param)
    batch_stats = nnx.state(model, nnx.BatchStat)
    target = {
        "params": jax.tree.map(_abstract, nnx.to_pure_dict(params)),
        "batch_stats": jax.tree.map(_abstract, nnx.to_pure_dict(batch_stats)),
    }
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(directory / STATE, target)
    nnx.replace_by_pure_dict(params, restored["params"])
    nnx.replace_by_pure_dict(batch_stats, restored["batch_stats"])
    nnx.update(model, params, batch_stats)
    fill_random_streams(model)
    model.eval()
    return model


def _abstract(leaf: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)


def fill_random_streams(model: nnx.Module) -> None:
    """Gives an abstract (``nnx.eval_shape``) model's random streams (dropout's) a fixed key
    and a zero count, so that the model runs in train mode too."""
    for _, variable in nnx.iter_graph(model):
        if not isinstance(variable, nnx.Variable):
            continue
        value = variable.get_value()
        if not isinstance(value, jax.ShapeDtypeStruct):
            continue
        if isinstance(variable, nnx.RngKey):
            variable.set_value(jax.random.key(0))
        elif isinstance(variable, nnx.RngCount):
            variable.set_value(jnp.zeros(value.shape, value.dtype))
