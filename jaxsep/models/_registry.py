"""The model registry: ``@register_model`` factories, :func:`create` and :func:`list_models`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

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
    kwargs.setdefault("rngs", nnx.Rngs(0))
    return _REGISTRY[name](**kwargs)
