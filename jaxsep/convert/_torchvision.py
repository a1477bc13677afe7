"""torchvision's names: one naming scheme per family, one :class:`Source` per model name.

torchvision numbers the layers of its MobileNets and EfficientNets inside ``features``
(``features.{i}``; a ``Conv2dNormActivation`` is ``.0`` conv and ``.1`` BatchNorm; the
MobileNetV3 and EfficientNet blocks hold theirs in ``.block.{j}``, squeeze-and-excite as
``fc1``/``fc2``) and puts the classifier after a dropout (``classifier.1``; MobileNetV3 has a
hidden layer ``classifier.0`` and ``classifier.3``). ShuffleNetV2 names its parts ``conv1``,
``stage2``-``stage4`` (units of ``branch1`` and ``branch2``), ``conv5`` and ``fc``. Padding is
symmetric (``(k - 1) // 2``); BatchNorm is PyTorch's (eps 1e-5, momentum 0.1) except in
MobileNetV3 and EfficientNet-B5..B7 (eps 1e-3, momentum 0.01).
"""

from __future__ import annotations

from collections.abc import Iterator

from flax import nnx

from jaxsep.convert._convert import (
    TORCH_LAYERS,
    Source,
    conv_norm,
    staged,
    tv_preprocessing,
)
from jaxsep.convert._mapping import Pair
from jaxsep.models.efficientnet import SCALES as EFFICIENTNET_SCALES, stage_repeats
from jaxsep.models.shufflenet_v2 import STAGE_REPEATS as SHUFFLENET_V2_REPEATS

__all__ = ["SOURCES"]

Pairs = Iterator[Pair]

# MobileNetV3's and EfficientNet-B5..B7's BatchNorm2d(eps=1e-3, momentum=0.01).
EPS_1E3_LAYERS = dict(padding="symmetric", bn_epsilon=1e-3, bn_momentum=0.99)


def _features(index: int, layer: nnx.Module) -> Pairs:
    """A ``Conv2dNormActivation`` at ``features.{index}``."""
    yield from conv_norm(f"features.{index}.0", f"features.{index}.1", layer)


def mobilenet_v2_pairs(model: nnx.Module) -> Pairs:
    """``features.0`` stem, ``features.{1..17}.conv`` inverted residuals (``conv.0`` expand,
    ``conv.1`` depthwise, ``conv.2`` projection, ``conv.3`` its BatchNorm; without expansion
    the numbers shift down by one), ``features.18`` head, ``classifier.1``."""
    yield from _features(0, model.stem)
    for i, block in enumerate(model.blocks, start=1):
        layers = [block.depthwise] if block.expand is None else [block.expand, block.depthwise]
        for j, layer in enumerate(layers):
            yield from conv_norm(f"features.{i}.conv.{j}.0", f"features.{i}.conv.{j}.1", layer)
        j = len(layers)
        yield from conv_norm(f"features.{i}.conv.{j}", f"features.{i}.conv.{j + 1}", block.project)
    yield from _features(len(model.blocks) + 1, model.head)
    yield "classifier.1", model.classifier


def _block(prefix: str, block: nnx.Module) -> Pairs:
    """A MobileNetV3 ``InvertedResidual`` or EfficientNet ``MBConv``: ``{prefix}.{j}`` for
    the expansion (if any), the depthwise step, squeeze-and-excite (if any), the projection."""
    j = 0
    if block.expand is not None:
        yield from conv_norm(f"{prefix}.{j}.0", f"{prefix}.{j}.1", block.expand)
        j += 1
    yield from conv_norm(f"{prefix}.{j}.0", f"{prefix}.{j}.1", block.depthwise)
    j += 1
    if block.se is not None:
        yield f"{prefix}.{j}.fc1", block.se.reduce
        yield f"{prefix}.{j}.fc2", block.se.expand
        j += 1
    yield from conv_norm(f"{prefix}.{j}.0", f"{prefix}.{j}.1", block.project)


def mobilenet_v3_pairs(model: nnx.Module) -> Pairs:
    """``features.0`` stem, ``features.{i}.block`` blocks, the last ``features`` the head,
    ``classifier.0`` jaxsep's ``pre_logits``, ``classifier.3`` the classifier."""
    yield from _features(0, model.stem)
    for i, block in enumerate(model.blocks, start=1):
        yield from _block(f"features.{i}.block", block)
    yield from _features(len(model.blocks) + 1, model.head)
    yield "classifier.0", model.pre_logits
    yield "classifier.3", model.classifier


def efficientnet_pairs(model: nnx.Module) -> Pairs:
    """``features.0`` stem, ``features.{stage + 1}.{index}.block`` blocks, ``features.8``
    head, ``classifier.1``."""
    _, depth, _, _ = EFFICIENTNET_SCALES[model.scale]
    repeats = stage_repeats(depth, lite=False)
    yield from _features(0, model.stem)
    for stage, index, block in staged(model.blocks, repeats):
        yield from _block(f"features.{stage + 1}.{index}.block", block)
    yield from _features(len(repeats) + 1, model.head)
    yield "classifier.1", model.classifier


def shufflenet_v2_pairs(model: nnx.Module) -> Pairs:
    """``conv1`` stem, ``stage{2,3,4}.{index}`` units (``branch1``: depthwise ``.0``/``.1``,
    pointwise ``.2``/``.3``, in the first unit of a stage only; ``branch2``: pointwise
    ``.0``/``.1``, depthwise ``.3``/``.4``, pointwise ``.5``/``.6``), ``conv5`` head, ``fc``."""
    yield from conv_norm("conv1.0", "conv1.1", model.stem)
    for stage, index, unit in staged(model.blocks, SHUFFLENET_V2_REPEATS):
        prefix = f"stage{stage + 2}.{index}"
        if unit.left_depthwise is not None:
            yield from conv_norm(f"{prefix}.branch1.0", f"{prefix}.branch1.1", unit.left_depthwise)
            yield from conv_norm(f"{prefix}.branch1.2", f"{prefix}.branch1.3", unit.left_pointwise)
        yield from conv_norm(f"{prefix}.branch2.0", f"{prefix}.branch2.1", unit.right_expand)
        yield from conv_norm(f"{prefix}.branch2.3", f"{prefix}.branch2.4", unit.right_depthwise)
        yield from conv_norm(f"{prefix}.branch2.5", f"{prefix}.branch2.6", unit.right_pointwise)
    yield from conv_norm("conv5.0", "conv5.1", model.head)
    yield "fc", model.classifier


def _sources() -> dict[str, Source]:
    """The preprocessing is that of each name's ``DEFAULT`` weights in torchvision 0.29."""
    sources = {
        "mobilenet_v2": Source(
            "mobilenet_v2", dict(TORCH_LAYERS), mobilenet_v2_pairs, tv_preprocessing(224, 232),
            classifier="classifier.1",
        ),
    }
    for size, resize in (("large", 232), ("small", 256)):
        sources[f"mobilenet_v3_{size}"] = Source(
            f"mobilenet_v3_{size}", dict(scaling="torchvision", dropout_rate=0.2, **EPS_1E3_LAYERS),
            mobilenet_v3_pairs, tv_preprocessing(224, resize), classifier="classifier.3",
        )
    for suffix, resize in (("0_5", 256), ("1_0", 256), ("1_5", 232), ("2_0", 232)):
        sources[f"shufflenet_v2_x{suffix}"] = Source(
            "shufflenet_v2", dict(width_multiplier=float(suffix.replace("_", ".")), **TORCH_LAYERS),
            shufflenet_v2_pairs, tv_preprocessing(224, resize), classifier="fc",
        )
    # name -> (crop, resize, interpolation) of its DEFAULT weights
    efficientnets = {
        "b0": (224, 256, "bicubic"), "b1": (240, 255, "bilinear"), "b2": (288, 288, "bicubic"),
        "b3": (300, 320, "bicubic"), "b4": (380, 384, "bicubic"), "b5": (456, 456, "bicubic"),
        "b6": (528, 528, "bicubic"), "b7": (600, 600, "bicubic"),
    }
    for scale, (crop, resize, interpolation) in efficientnets.items():
        layers = EPS_1E3_LAYERS if scale in ("b5", "b6", "b7") else TORCH_LAYERS
        sources[f"efficientnet_{scale}"] = Source(
            f"efficientnet_{scale}",
            dict(**layers, drop_path_rate=0.2),
            efficientnet_pairs, tv_preprocessing(crop, resize, interpolation),
            classifier="classifier.1",
        )
    return sources


SOURCES: dict[str, Source] = _sources()
