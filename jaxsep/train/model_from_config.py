"""From a :class:`~jaxsep.train.TrainConfig` to its model: the one mapping of config fields to
:func:`jaxsep.models.create` keywords (used by the trainer, ``jaxsep eval`` and sweeps), the
abstract model, and its compiled initialization program."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from jaxsep import models
from jaxsep.models._registry import INIT_COMPILER_OPTIONS

__all__ = [
    "NUM_CLASSES",
    "SHAPE_KEYWORDS",
    "abstract_model",
    "init_program",
    "model_kwargs",
    "model_options",
]

NUM_CLASSES = 10  # num_classes=None: CIFAR-10 and the synthetic stand-in, also for "imagenet"
# The keywords of model_kwargs that decide the parameters' shapes (not dtypes or lowerings).
SHAPE_KEYWORDS = frozenset(
    {"num_classes", "width_multiplier", "variant", "conv", "groups", "depth_multiplier",
     "dropout_rate", "scaling"}
)
# config field -> models.create keyword, for the optional fields (None: the model's default)
_OPTIONAL = (
    ("conv", "conv"),
    ("groups", "groups"),
    ("depth_multiplier", "depth_multiplier"),
    ("dropout", "dropout_rate"),
)


def model_kwargs(config: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`jaxsep.models.create` for ``config``'s model: the
    classifier has ``num_classes`` outputs (default 10, the data's), parameters are float32,
    activations ``compute_dtype``, the depthwise lowering ``impl``, then ``model_args``;
    fields left None take the model's defaults."""
    kwargs: dict[str, Any] = {
        **(getattr(config, "model_args", None) or {}),
        "num_classes": getattr(config, "num_classes", None) or NUM_CLASSES,
        "width_multiplier": config.width,
        "variant": config.variant,
        "param_dtype": jnp.float32,
    }
    if config.compute_dtype == "bfloat16":
        kwargs["dtype"] = jnp.bfloat16
    for field, keyword in _OPTIONAL:
        value = getattr(config, field, None)
        if value is not None:
            kwargs[keyword] = value
    if config.impl != "auto":
        kwargs["impl"] = config.impl
    return kwargs


def model_options(config: Any) -> dict[str, Any]:
    """The part of :func:`model_kwargs` that decides the parameters' shapes (not dtypes or
    the depthwise lowering): what parameter and multiply-add counts and checkpoint
    conversions need."""
    return {k: v for k, v in model_kwargs(config).items() if k in SHAPE_KEYWORDS}


def abstract_model(config: Any) -> nnx.Module:
    """The model's structure (nothing allocated); a bad combination of model options is a
    ValueError naming the model."""
    kwargs = model_kwargs(config)
    try:
        return nnx.eval_shape(lambda: models.create(config.model, rngs=nnx.Rngs(0), **kwargs))
    except (TypeError, ValueError) as error:
        given = {k: v for k, v in kwargs.items() if k not in ("param_dtype", "num_classes")}
        raise ValueError(
            f"TrainConfig: cannot build model {config.model!r} with {given}: {error}"
        ) from error


_INIT_CACHE: dict[Any, Any] = {}


def init_program(config: Any, sharding: NamedSharding):
    """The compiled program ``seed -> (params, batch_stats, rest)`` of ``config``'s model,
    its outputs placed by ``sharding``; cached per model (a rerun in the same process, as in
    the tests and sweeps, compiles it once)."""
    name, kwargs_items = config.model, tuple(sorted(model_kwargs(config).items()))
    key = (name, kwargs_items, sharding)
    compiled = _INIT_CACHE.get(key)
    if compiled is None:

        def init(seed: jax.Array) -> tuple[Any, Any, Any]:
            model = models.create(name, rngs=nnx.Rngs(jax.random.key(seed)), **dict(kwargs_items))
            _, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
            return params, batch_stats, rest

        lowered = jax.jit(init, out_shardings=sharding).lower(
            jax.ShapeDtypeStruct((), jnp.uint32, sharding=sharding)
        )
        compiled = lowered.compile(compiler_options=INIT_COMPILER_OPTIONS)
        _INIT_CACHE[key] = compiled
    return compiled
