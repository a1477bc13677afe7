"""torchvision's names: one naming scheme per family, one :class:`Source` per model name.

torchvision numbers the layers of its MobileNets and EfficientNets inside ``features``
(``features.{i}``; a ``Conv2dNormActivation`` is ``.0`` conv, ``.1`` BatchNorm) and puts the
classifier after a dropout (``classifier.1``, ``classifier.3`` for MobileNetV3). Padding is
symmetric (``(k - 1) // 2``); BatchNorm is PyTorch's (eps 1e-5, momentum 0.1) unless noted.
The preprocessing is that of each name's ``DEFAULT`` weights in torchvision 0.29.
"""

from __future__ import annotations

from collections.abc import Iterator

from flax import nnx

from jaxsep.convert._convert import Source, conv_norm, tv_preprocessing

__all__ = ["SOURCES"]

Pairs = Iterator[tuple[str, nnx.Module]]

TORCH_BN = dict(padding="symmetric", bn_epsilon=1e-5, bn_momentum=0.9)


def mobilenet_v2_pairs(model: nnx.Module) -> Pairs:
    """``features.0`` stem, ``features.{1..17}.conv`` inverted residuals (``conv.0`` expand,
    ``conv.1`` depthwise, ``conv.2`` projection, ``conv.3`` its BatchNorm; without expansion
    the numbers shift down by one), ``features.18`` head, ``classifier.1``."""
    yield from conv_norm("features.0.0", "features.0.1", model.stem)
    for i, block in enumerate(model.blocks, start=1):
        layers = [block.depthwise] if block.expand is None else [block.expand, block.depthwise]
        for j, layer in enumerate(layers):
            yield from conv_norm(f"features.{i}.conv.{j}.0", f"features.{i}.conv.{j}.1", layer)
        j = len(layers)
        yield from conv_norm(f"features.{i}.conv.{j}", f"features.{i}.conv.{j + 1}", block.project)
    last = len(model.blocks) + 1
    yield from conv_norm(f"features.{last}.0", f"features.{last}.1", model.head)
    yield "classifier.1", model.classifier


def _sources() -> dict[str, Source]:
    sources = {
        "mobilenet_v2": Source(
            "mobilenet_v2", dict(TORCH_BN), mobilenet_v2_pairs, tv_preprocessing(224, 232),
            classifier="classifier.1",
        ),
    }
    return sources


SOURCES: dict[str, Source] = _sources()
