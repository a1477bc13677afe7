"""The model registry: ``@register_model`` factories, :func:`create` and :func:`list_models`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import jax
from flax import nnx

__all__ = ["create", "list_models", "register_model"]

Factory = TypeVar("Factory", bound=Callable[..., nnx.Module])

_REGISTRY: dict[str, Callable[..., nnx.Module]] = {}


def register_model(factory: Factory) -> Factory:
    """Registers ``factory`` under its ``__name__`` (as timm does); returns it unchanged.

    A factory takes keyword arguments only (``rngs`` among them) and returns an
    ``nnx.Module``.
    """
    name = factory.__name__
    if name in _REGISTRY and _REGISTRY[name] is not factory:
        raise ValueError(f"register_model: a model named {name!r} is already registered")
    _REGISTRY[name] = factory
    return factory


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def create(name: str, **kwargs: Any) -> nnx.Module:
    """Builds the registered model ``name`` with ``kwargs``.

    ``rngs`` defaults to ``nnx.Rngs(0)`` (like ``timm.create_model``, a model needs no explicit
    seed); pass ``rngs=nnx.Rngs(seed)`` to choose one. Wrap in ``nnx.eval_shape(lambda:
    create(...))`` to get the model's structure without allocating its parameters.

    Raises:
      ValueError: ``name`` is not registered (the message lists the names that are).
      TypeError: a keyword the model does not take.
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"create: model must be one of {list_models()}, but got {name!r}"
        )
    rngs = kwargs.pop("rngs", None)
    build = functools.partial(_REGISTRY[name], **kwargs)
    return initialize(build, nnx.Rngs(0) if rngs is None else rngs)


# Initialization runs once: XLA's backend optimizations cost more than they save (~20 s on
# threefry for every parameter on a 2-core CPU). The harness's init program uses it too.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def initialize(build: Callable[..., nnx.Module], rngs: nnx.Rngs) -> nnx.Module:
    """``build(rngs=rngs)`` as one compiled program.

    Built eagerly, a model runs its initializers op by op, and JAX compiles each sampler once
    per parameter shape: seconds on a CPU for a small model (EfficientNet-B0: ~15 s on two
    cores). Traced once and compiled at a low optimization level, one program draws the same
    random bits (values may differ from eager ones by float rounding in the samplers' transforms,
    an ulp or so; ``jaxsep train`` initializes inside its own jit either way). ``rngs`` advances
    as if the model had been built eagerly;
    the model holds its own copy of the streams it keeps (e.g. dropout's). Inside a trace
    (``jax.jit``, ``nnx.eval_shape``) ``build`` simply runs.
    """
    rng_graph, rng_state = nnx.split(rngs)
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(rng_state)):
        return build(rngs=rngs)
    graphdefs = []

    def init(state):
        stream = nnx.merge(rng_graph, state)
        graphdef, model_state = nnx.split(build(rngs=stream))
        graphdefs.append(graphdef)
        return model_state, nnx.state(stream)

    program = jax.jit(init).lower(rng_state).compile(compiler_options=INIT_COMPILER_OPTIONS)
    model_state, rng_state = program(rng_state)
    nnx.update(rngs, rng_state)
    return nnx.merge(graphdefs[0], model_state)
