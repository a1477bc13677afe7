"""A source model (a timm or torchvision name) -> a jaxsep model with its weights.

Each supported name is one :class:`Source`: the jaxsep model and the arguments that make it
the source's architecture (padding, BatchNorm settings, activation), the naming scheme that
maps the source's tensors onto it (:mod:`jaxsep.convert._mapping`), and the source's image
preprocessing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flax import nnx

from jaxsep import models
from jaxsep.convert import _mapping
from jaxsep.convert.files import to_numpy

__all__ = [
    "TORCH_LAYERS",
    "Converted",
    "Source",
    "convert",
    "staged",
    "timm_preprocessing",
    "tv_preprocessing",
]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # TF-ported weights (tf_*), and timm's newer recipes
INCEPTION_STD = (0.5, 0.5, 0.5)
# PyTorch's layers: symmetric padding, BatchNorm2d(eps=1e-5, momentum=0.1) (Flax's 0.9).
TORCH_LAYERS = dict(padding="symmetric", bn_epsilon=1e-5, bn_momentum=0.9)


def tv_preprocessing(
    crop: int, resize: int, interpolation: str = "bilinear"
) -> dict[str, Any]:
    """torchvision's ``ImageClassification`` transform of a weights enum: shorter side to
    ``resize``, centre crop ``crop``, ImageNet mean and std."""
    return dict(
        resize=resize, crop=crop, crop_mode="center", interpolation=interpolation,
        mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
    )


def timm_preprocessing(
    size: int,
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_mode: str = "center",
) -> dict[str, Any]:
    """timm's eval transform of a pretrained config: shorter side (both sides for
    ``crop_mode="squash"``) to ``floor(size / crop_pct)``, centre crop ``size``."""
    return dict(
        resize=math.floor(size / crop_pct), crop=size, crop_mode=crop_mode,
        interpolation=interpolation, mean=list(mean), std=list(std),
    )


@dataclass(frozen=True)
class Source:
    """One source model name and how it becomes a jaxsep model.

    Attributes:
      model: the registered jaxsep model.
      kwargs: its arguments that give the source's architecture (JSON values).
      pairs: the naming scheme: ``model -> (source prefix, jaxsep module)`` pairs.
      preprocessing: the source's eval transform (see :func:`tv_preprocessing`).
      classifier: the prefix of the classifier's tensors, whose shape gives ``num_classes``.
    """

    model: str
    kwargs: Mapping[str, Any]
    pairs: Callable[[nnx.Module], _mapping.Pairs]
    preprocessing: Mapping[str, Any]
    classifier: str = "classifier"


@dataclass(frozen=True)
class Converted:
    """A converted model, what rebuilds it (``models.create(name, **model_kwargs)``), and
    what else its saved folder records (``extra``: the source and its preprocessing)."""

    model: nnx.Module
    name: str
    model_kwargs: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def convert(
    where: str,
    sources: Mapping[str, Source],
    name: str,
    state_dict: Mapping[str, Any],
    model_kwargs: Mapping[str, Any],
) -> Converted:
    """Builds ``sources[name]``'s model with ``state_dict``'s weights (see ``from_timm``).

    ``model_kwargs`` are added to the source's arguments (runtime choices such as ``impl``
    or ``dtype``, or ``num_classes``); without ``num_classes`` it is read off the
    classifier's weight, so a fine-tuned checkpoint converts as it is.
    """
    if not isinstance(name, str) or name not in sources:
        raise ValueError(f"{where}: name must be one of {sorted(sources)}, but got {name!r}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"{where}: state_dict must be a mapping of names to arrays, but got "
            f"{type(state_dict).__name__}"
        )
    source = sources[name]
    state = {key: to_numpy(value) for key, value in state_dict.items()}
    kwargs = {"variant": "imagenet", **source.kwargs, **model_kwargs}
    classifier = state.get(f"{source.classifier}.weight")
    if "num_classes" not in model_kwargs and classifier is not None and np.ndim(classifier) == 2:
        kwargs["num_classes"] = int(np.shape(classifier)[0])
    where = f"{where}({name!r})"
    model = nnx.eval_shape(lambda: models.create(source.model, **kwargs))
    model = _mapping.apply(where, model, source.pairs, state)
    return Converted(model, source.model, kwargs, {"preprocessing": dict(source.preprocessing)})


def export(source: Source, model: nnx.Module) -> dict[str, np.ndarray]:
    """``model``'s variables under ``source``'s names and layouts (the inverse of
    :func:`convert`; for tests and for going back)."""
    return _mapping.export(model, source.pairs)


def staged(blocks: Sequence[nnx.Module], repeats: Sequence[int]) -> Iterator[
    tuple[int, int, nnx.Module]
]:
    """``(stage, index in stage, block)`` of a flat block list cut into stages of ``repeats``
    blocks (timm numbers blocks ``blocks.{stage}.{index}``)."""
    if sum(repeats) != len(blocks):
        raise RuntimeError(f"convert: {len(blocks)} blocks do not split into stages {repeats}")
    blocks = iter(blocks)
    for stage, count in enumerate(repeats):
        for index in range(count):
            yield stage, index, next(blocks)


def conv_norm(conv: str, norm: str, layer: nnx.Module) -> list[_mapping.Pair]:
    """The two pairs of a :class:`jaxsep.models.ConvNormAct`: its conv and its BatchNorm."""
    return [(conv, layer.conv), (norm, layer.norm)]
