"""``from_timm``, ``from_torchvision`` and the converted-model folder (``jaxsep convert``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flax import nnx

from jaxsep import models
from jaxsep.convert import _timm, _torchvision
from jaxsep.convert._convert import Converted, Source, convert

__all__ = ["SOURCES", "Converted", "convert_source", "from_timm", "from_torchvision", "save",
           "source_names"]

# library -> its names
SOURCES: dict[str, dict[str, Source]] = {
    "timm": _timm.SOURCES,
    "torchvision": _torchvision.SOURCES,
}
# Model arguments that choose how the model runs, not what it is: not saved with it.
RUNTIME_KWARGS = ("impl", "dtype", "rngs")


def from_timm(name: str, state_dict: Mapping[str, Any], **model_kwargs: Any) -> nnx.Module:
    """The jaxsep model of timm's ``name`` with ``state_dict``'s weights, in eval mode.

    The model is built with timm's padding, BatchNorm eps and momentum and activations;
    kernels are transposed to jaxsep's layouts (OIHW -> HWIO, depthwise ``(C, 1, kh, kw)`` ->
    ``(kh, kw, 1, C)``, 1x1 ``(O, C, 1, 1)`` -> ``(C, O)``, linear ``(O, C)`` -> ``(C, O)``)
    and BatchNorm's running statistics copied. Names: :func:`source_names` ``("timm")``;
    the differences between the sources and the parity tests: ``docs/convert.md``.

    Args:
      name: a timm model name, e.g. "mobilenetv3_large_100" (no pretrained tag).
      state_dict: tensor name -> array (NumPy, JAX, or torch tensors when torch is
        installed), e.g. from :func:`jaxsep.convert.load_state_dict` or
        ``timm_model.state_dict()``.
      **model_kwargs: more arguments of the jaxsep model, e.g. ``impl="xla"``;
        ``num_classes`` defaults to the classifier's rows in ``state_dict``.

    Raises:
      ValueError: an unknown ``name`` (the message lists the names), or a ``state_dict`` that
        does not fit: missing or unexpected keys, or a shape that differs (each named with
        the expected and the given shape). Nothing is returned then.
    """
    return convert("from_timm", _timm.SOURCES, name, state_dict, model_kwargs).model


def from_torchvision(
    name: str, state_dict: Mapping[str, Any], **model_kwargs: Any
) -> nnx.Module:
    """The jaxsep model of torchvision's ``name`` (e.g. "mobilenet_v3_large") with
    ``state_dict``'s weights, in eval mode; as :func:`from_timm` with torchvision's
    architecture settings and names (:func:`source_names` ``("torchvision")``)."""
    return convert("from_torchvision", _torchvision.SOURCES, name, state_dict, model_kwargs).model


def source_names(library: str | None = None) -> list[str]:
    """The supported names of ``library`` ("timm" or "torchvision"), or all as
    ``"library:name"``, sorted."""
    if library is None:
        return sorted(f"{lib}:{name}" for lib, names in SOURCES.items() for name in names)
    if library not in SOURCES:
        raise ValueError(f"source_names: library must be one of {tuple(SOURCES)}, but got "
                         f"{library!r}")
    return sorted(SOURCES[library])


def convert_source(source: str, state_dict: Mapping[str, Any], **model_kwargs: Any) -> Converted:
    """Converts ``"timm:NAME"`` or ``"torchvision:NAME"``; the model with what :func:`save`
    needs (its jaxsep name, arguments and the source's preprocessing)."""
    library, _, name = source.partition(":") if isinstance(source, str) else ("", "", "")
    if library not in SOURCES or not name:
        raise ValueError(
            f"convert: source must be 'timm:NAME' or 'torchvision:NAME', but got {source!r}"
        )
    converted = convert(f"from_{library}", SOURCES[library], name, state_dict, model_kwargs)
    return Converted(
        converted.model, converted.name, converted.model_kwargs,
        {"source": source, **converted.extra},
    )


def save(converted: Converted, directory: str | os.PathLike) -> Path:
    """Writes a converted model to the new folder ``directory`` (``config.json`` with the
    model's name and arguments, the source and its preprocessing; an Orbax checkpoint of its
    state), which :func:`jaxsep.models.load` reads back. Returns the folder's path."""
    kwargs = {k: v for k, v in converted.model_kwargs.items() if k not in RUNTIME_KWARGS}
    return models.save(
        converted.model, directory, name=converted.name, model_kwargs=kwargs,
        extra=converted.extra,
    )
