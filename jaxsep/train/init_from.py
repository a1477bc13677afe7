"""Where a run's first parameters come from (``TrainConfig.init_from``): a harness run
folder's best checkpoint, or a saved model folder (``jaxsep convert``,
:func:`jaxsep.models.save`).

Variables are copied by path (``params/...``, ``batch_stats/...``). The classifier head (the
variables whose shapes follow ``num_classes``) is freshly initialized from the run's seed when
the run's number of classes differs from the folder's; every other variable must exist in
both with the same shape, which :func:`check` verifies from the configs alone, before any
compute. A saved model folder also gives the run its architecture arguments that no
``TrainConfig`` field sets (padding, BatchNorm eps and momentum, activation, ...; see
:func:`resolve`), so a converted timm or torchvision model is fine-tuned as it was
converted. ``variant`` ("cifar" or "imagenet") changes strides only, no shape, so it may
differ. See ``docs/convert.md``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from jaxsep import models
from jaxsep.models import _saved
from jaxsep.train import checkpoints, run_folder
from jaxsep.train.config import SET_BY_FIELDS, TrainConfig
from jaxsep.train.model_from_config import NUM_CLASSES, abstract_model, model_kwargs

__all__ = ["Source", "check", "initial_variables", "is_saved_model", "read_source", "resolve"]

RUN, MODEL = "run", "model"  # the two kinds of folder
_WHERE = "TrainConfig: init_from"


@dataclasses.dataclass(frozen=True)
class Source:
    """A folder to start from: its kind (``"run"`` or ``"model"``), the model it holds
    (``models.create(model, **model_kwargs)``) and, for a converted model, its ``origin``
    (e.g. ``"timm:mobilenetv3_large_100"``)."""

    path: Path
    kind: str
    model: str
    model_kwargs: dict[str, Any]
    origin: str | None = None

    def describe(self) -> dict[str, Any]:
        """What a run's summary records of it."""
        return {"folder": str(self.path.absolute()), "kind": self.kind, "model": self.model,
                "source": self.origin}


def read_source(folder: str | Path) -> Source:
    """The folder's kind and model, from its ``config.json`` (a saved model's has
    ``"format": "jaxsep.model"``; a run's is a ``TrainConfig``); checks that it holds the
    variables (a best checkpoint, or ``state/``).

    Raises:
      FileNotFoundError: no config.json, or no variables.
      ValueError: a config.json of neither kind.
    """
    path = Path(folder).expanduser()
    config_file = path / run_folder.CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{_WHERE} must be a run folder with a best checkpoint or a saved model folder "
            f"(jaxsep convert, jaxsep.models.save), but {str(path)!r} has no config.json"
        )
    if _is_model_config(config_file):
        config = _saved.read_config(path)
        if not (path / _saved.STATE).is_dir():
            raise FileNotFoundError(f"{_WHERE}: {str(path)!r} has no {_saved.STATE}/ folder")
        return Source(path, MODEL, config["model"], dict(config["model_kwargs"]),
                      config.get("source"))
    try:
        run_config = TrainConfig.load(config_file)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{_WHERE}: {str(config_file)!r} is neither a run's nor a saved model's config: "
            f"{error}"
        ) from None
    if not run_folder.checkpoint_steps(path / run_folder.BEST):
        raise FileNotFoundError(
            f"{_WHERE} must be a run folder with a best checkpoint, but "
            f"{str(path / run_folder.BEST)!r} holds none"
        )
    return Source(path, RUN, run_config.model, model_kwargs(run_config))


def is_saved_model(folder: str | Path) -> bool:
    """Whether ``folder`` has a saved model's ``config.json`` (else: a run folder, or
    neither)."""
    return _is_model_config(Path(folder).expanduser() / run_folder.CONFIG_FILE)


def _is_model_config(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and config.get("format") == _saved.FORMAT


def resolve(config: TrainConfig) -> TrainConfig:
    """``config`` with the architecture of ``init_from``'s model filled in: its arguments that
    no field sets go to ``model_args`` (those given there win), and its dropout when
    ``dropout`` is None. Unchanged without ``init_from``, when the folder has no config.json
    (:func:`check` reports that) or holds another model (its arguments may not fit)."""
    if config.init_from is None:
        return config
    path = Path(config.init_from).expanduser()
    if not (path / run_folder.CONFIG_FILE).is_file():
        return config
    source = read_source(path)
    if source.model != config.model:
        return config
    extra = {k: v for k, v in source.model_kwargs.items() if k not in SET_BY_FIELDS}
    changes: dict[str, Any] = {}
    if extra:
        changes["model_args"] = {**extra, **(config.model_args or {})}
    if config.dropout is None and source.model_kwargs.get("dropout_rate") is not None:
        changes["dropout"] = source.model_kwargs["dropout_rate"]
    return config.replace(**changes) if changes else config


def _abstract(name: str, kwargs: dict[str, Any]) -> nnx.Module:
    return nnx.eval_shape(lambda: models.create(name, rngs=nnx.Rngs(0), **kwargs))


def _num_classes(model: nnx.Module) -> int:
    return int(getattr(model, "num_classes", NUM_CLASSES))


def _variables(model: nnx.Module) -> dict[str, Any]:
    """``{"params": ..., "batch_stats": ...}`` as nested dicts (a checkpoint's tree)."""
    return {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param)),
            "batch_stats": nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))}


def _path(keys: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys)


def _flat(tree: Any) -> dict[str, Any]:
    """``{"params/blocks/0/kernel": leaf, ...}``."""
    return {_path(keys): leaf for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _head(config: TrainConfig, run_model: nnx.Module, classes: int) -> set[str]:
    """The paths whose shapes change when the run's model has ``classes`` outputs."""
    if classes == _num_classes(run_model):
        return set()
    other = _abstract(config.model, {**model_kwargs(config), "num_classes": classes})
    mine, theirs = _flat(_variables(run_model)), _flat(_variables(other))
    return {path for path, leaf in mine.items() if leaf.shape != theirs[path].shape}


def check(config: TrainConfig, run_model: nnx.Module) -> Source:
    """Checks that ``init_from`` holds this run's variables (from the configs alone): every
    path and shape equal, the classifier head aside when the numbers of classes differ.

    Raises:
      FileNotFoundError / ValueError: as :func:`read_source`; a ValueError naming the first
        variables that do not fit (path, this run's shape, the folder's), and the models and
        widths when those differ.
    """
    source = read_source(config.init_from)
    try:
        stored = _abstract(source.model, source.model_kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{_WHERE}: cannot rebuild {source.model!r} of "
                         f"{str(source.path)!r}: {error}") from None
    head = _head(config, run_model, _num_classes(stored))
    mine, theirs = _flat(_variables(run_model)), _flat(_variables(stored))
    problems = []
    for path in sorted(mine.keys() | theirs.keys()):
        if path in head:
            continue
        if path not in theirs:
            problems.append(f"{path} (shape {mine[path].shape}) is not in the folder")
        elif path not in mine:
            problems.append(f"{path} (shape {theirs[path].shape}) in the folder is not in "
                            "this run's model")
        elif mine[path].shape != theirs[path].shape:
            problems.append(f"{path} must have shape {mine[path].shape}, but the folder's has "
                            f"shape {theirs[path].shape}")
    if problems:
        ours = f"{config.model} x{config.width}"
        width = source.model_kwargs.get("width_multiplier", 1.0)
        folder = f"{source.model} x{width}"
        models_differ = (f"; the folder holds {folder}, this run is {ours}"
                         if folder != ours else "")
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError(
            f"{_WHERE} {str(source.path)!r} does not fit this run's model{models_differ}: "
            + "; ".join(problems[:3]) + more
        )
    return source


def initial_variables(
    config: TrainConfig, params: Any, batch_stats: Any, sharding: Any
) -> tuple[Any, Any, dict[str, Any]]:
    """``(params, batch_stats, record)``: the run's freshly initialized ``params`` and
    ``batch_stats`` (``nnx.State``) with every variable but a new head replaced by
    ``init_from``'s, placed by ``sharding``; ``record`` says where they came from (for the
    summary). :func:`check` must have passed."""
    import orbax.checkpoint as ocp

    source = read_source(config.init_from)
    stored = _abstract(source.model, source.model_kwargs)
    head = _head(config, abstract_model(config), _num_classes(stored))

    def target(leaf: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

    if source.kind == MODEL:
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(
                source.path.absolute() / _saved.STATE, jax.tree.map(target, _variables(stored))
            )
    else:
        states = {"params": nnx.state(stored, nnx.Param),
                  "batch_stats": nnx.state(stored, nnx.BatchStat)}
        tree, _ = checkpoints.restore_best(source.path, jax.tree.map(target, states))
        restored = {key: nnx.to_pure_dict(tree[key]) for key in states}
    loaded = _flat(restored)

    def merged(name: str, state: Any) -> Any:
        def pick(keys: tuple, fresh: Any) -> Any:
            path = f"{name}/{_path(keys)}"
            return fresh if path in head else loaded[path]

        values = jax.tree_util.tree_map_with_path(pick, nnx.to_pure_dict(state))
        new = jax.tree.map(lambda x: x, state)  # a new State: the caller's stays as it was
        nnx.replace_by_pure_dict(new, values)
        return new

    record = {**source.describe(), "new_head": sorted(head)}
    return merged("params", params), merged("batch_stats", batch_stats), record
