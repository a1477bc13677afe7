"""timm's names: one naming scheme per family, one :class:`Source` per model name.

timm builds every family here with its ``EfficientNet`` / ``MobileNetV3`` classes: a stem
``conv_stem`` + ``bn1``, blocks numbered ``blocks.{stage}.{index}``, a head ``conv_head`` +
``bn2`` (MobileNetV1 has none; MobileNetV3's is a last stage ``blocks.{n}.0.conv`` + ``bn1``,
then ``conv_head``, a 1x1 convolution with bias on the pooled features), and ``classifier``.
A block is a ``DepthwiseSeparableConv`` (``conv_dw``/``bn1``, ``se``, ``conv_pw``/``bn2``)
where nothing expands, else an ``InvertedResidual`` (``conv_pw``/``bn1``, ``conv_dw``/``bn2``,
``se``, ``conv_pwl``/``bn3``); squeeze-and-excite is ``se.conv_reduce``, ``se.conv_expand``.

BatchNorm is PyTorch's (eps 1e-5) and the padding symmetric, except in the ``tf_`` ports of
TensorFlow weights: eps 1e-3 and TF "SAME" padding. timm builds these models without dropout
or stochastic depth unless asked (``drop_rate``, ``drop_path_rate``), so the sources below do
too.
"""

from __future__ import annotations

from collections.abc import Iterator

from flax import nnx

from jaxsep.convert._convert import (
    INCEPTION_MEAN,
    INCEPTION_STD,
    TORCH_LAYERS,
    Source,
    conv_norm,
    staged,
    timm_preprocessing,
)
from jaxsep.convert._mapping import Pair
from jaxsep.models.efficientnet import SCALES as EFFICIENTNET_SCALES, stage_repeats
from jaxsep.models.mobilenet_v2 import STAGES as V2_STAGES

__all__ = ["SOURCES"]

Pairs = Iterator[Pair]

# The tf_ ports: TF "SAME" padding, BatchNorm eps 1e-3 (timm keeps PyTorch's momentum).
TF_LAYERS = dict(padding="same", bn_epsilon=1e-3, bn_momentum=0.9)
NO_DROP = dict(dropout_rate=0.0)

# timm's stages (its arch_def rows), in blocks. MobileNetV1 groups its 13 blocks by stride;
# MobileNetV3's last stage is the 1x1 conv jaxsep calls the head.
V1_REPEATS = (1, 2, 2, 6, 2)
V2_REPEATS = tuple(n for _, _, n, _ in V2_STAGES)
V3_REPEATS = {"large": (1, 2, 3, 4, 2, 3), "small": (1, 2, 3, 2, 3)}


def _stem(model: nnx.Module) -> Pairs:
    yield from conv_norm("conv_stem", "bn1", model.stem)


def _block(prefix: str, block: nnx.Module) -> Pairs:
    """An :class:`jaxsep.models.InvertedResidual` under timm's names."""
    if block.expand is None:  # timm's DepthwiseSeparableConv
        yield from conv_norm(f"{prefix}.conv_dw", f"{prefix}.bn1", block.depthwise)
        yield from _squeeze_excite(prefix, block)
        yield from conv_norm(f"{prefix}.conv_pw", f"{prefix}.bn2", block.project)
    else:
        yield from conv_norm(f"{prefix}.conv_pw", f"{prefix}.bn1", block.expand)
        yield from conv_norm(f"{prefix}.conv_dw", f"{prefix}.bn2", block.depthwise)
        yield from _squeeze_excite(prefix, block)
        yield from conv_norm(f"{prefix}.conv_pwl", f"{prefix}.bn3", block.project)


def _squeeze_excite(prefix: str, block: nnx.Module) -> Pairs:
    if block.se is not None:
        yield f"{prefix}.se.conv_reduce", block.se.reduce
        yield f"{prefix}.se.conv_expand", block.se.expand


def _stages(model: nnx.Module, repeats: tuple[int, ...]) -> Pairs:
    for stage, index, block in staged(model.blocks, repeats):
        yield from _block(f"blocks.{stage}.{index}", block)


def mobilenet_v1_pairs(model: nnx.Module) -> Pairs:
    """timm ``mobilenetv1_*``: depthwise-separable blocks (``conv_dw``/``bn1``,
    ``conv_pw``/``bn2``), no head conv."""
    yield from _stem(model)
    for stage, index, block in staged(model.blocks, V1_REPEATS):
        prefix = f"blocks.{stage}.{index}"
        yield from conv_norm(f"{prefix}.conv_dw", f"{prefix}.bn1", block.spatial)
        yield from conv_norm(f"{prefix}.conv_pw", f"{prefix}.bn2", block.pointwise)
    yield "classifier", model.classifier


def mobilenet_v2_pairs(model: nnx.Module) -> Pairs:
    """timm ``mobilenetv2_*``."""
    yield from _stem(model)
    yield from _stages(model, V2_REPEATS)
    yield from conv_norm("conv_head", "bn2", model.head)
    yield "classifier", model.classifier


def mobilenet_v3_pairs(model: nnx.Module) -> Pairs:
    """timm ``mobilenetv3_*``: the head is the last stage, ``conv_head`` jaxsep's
    ``pre_logits`` (a 1x1 convolution in timm, a linear layer in jaxsep)."""
    repeats = V3_REPEATS[model.size]
    yield from _stem(model)
    yield from _stages(model, repeats)
    yield from conv_norm(f"blocks.{len(repeats)}.0.conv", f"blocks.{len(repeats)}.0.bn1",
                         model.head)
    yield "conv_head", model.pre_logits, "pointwise"
    yield "classifier", model.classifier


def efficientnet_pairs(model: nnx.Module) -> Pairs:
    """timm ``efficientnet_*``, ``tf_efficientnet_*`` (B0-B7 and Lite0-4)."""
    _, depth, _, _ = EFFICIENTNET_SCALES[model.scale]
    yield from _stem(model)
    yield from _stages(model, stage_repeats(depth, model.scale.startswith("lite")))
    yield from conv_norm("conv_head", "bn2", model.head)
    yield "classifier", model.classifier


def _sources() -> dict[str, Source]:
    """The preprocessing is that of each name's default pretrained tag in timm 1.0.31."""
    inception = dict(mean=INCEPTION_MEAN, std=INCEPTION_STD)
    sources = {}
    for name, width, crop_pct in (("mobilenetv1_100", 1.0, 0.875), ("mobilenetv1_125", 1.25, 0.9)):
        sources[name] = Source(
            "mobilenet_v1",
            dict(width_multiplier=width, activation="relu6", **TORCH_LAYERS, **NO_DROP),
            mobilenet_v1_pairs,
            timm_preprocessing(224, crop_pct, **inception),
        )
    for suffix in ("035", "050", "075", "100", "140"):
        sources[f"mobilenetv2_{suffix}"] = Source(
            "mobilenet_v2",
            dict(width_multiplier=int(suffix) / 100, **TORCH_LAYERS, **NO_DROP),
            mobilenet_v2_pairs,
            timm_preprocessing(224),
        )
    for size, suffix, interpolation in (
        ("large", "075", "bilinear"), ("large", "100", "bicubic"), ("small", "050", "bicubic"),
        ("small", "075", "bicubic"), ("small", "100", "bicubic"),
    ):
        sources[f"mobilenetv3_{size}_{suffix}"] = Source(
            f"mobilenet_v3_{size}",
            dict(width_multiplier=int(suffix) / 100, scaling="timm", **TORCH_LAYERS, **NO_DROP),
            mobilenet_v3_pairs,
            timm_preprocessing(224, interpolation=interpolation),
        )
    for size, suffix in (("large", "075"), ("large", "100"), ("small", "075"), ("small", "100")):
        sources[f"tf_mobilenetv3_{size}_{suffix}"] = Source(
            f"mobilenet_v3_{size}",
            dict(width_multiplier=int(suffix) / 100, scaling="timm", **TF_LAYERS, **NO_DROP),
            mobilenet_v3_pairs,
            timm_preprocessing(224, interpolation="bilinear", **inception),
        )
    # name -> (size, crop_pct, interpolation, crop_mode, mean and std) of its default tag
    efficientnets = {
        "efficientnet_b0": (224, 0.875, "bicubic", "center", {}),
        "efficientnet_b1": (240, 0.9, "bicubic", "center", inception),
        "efficientnet_b2": (256, 0.875, "bicubic", "center", {}),
        "efficientnet_b3": (288, 0.875, "bicubic", "center", {}),
        "efficientnet_b4": (320, 0.875, "bicubic", "center", {}),
        "efficientnet_b5": (448, 1.0, "bicubic", "squash", {}),
        "efficientnet_b6": (528, 0.942, "bicubic", "center", {}),
        "efficientnet_b7": (600, 0.949, "bicubic", "center", {}),
        "efficientnet_lite0": (224, 0.875, "bicubic", "center", {}),
        "efficientnet_lite1": (240, 0.882, "bicubic", "center", {}),
        "efficientnet_lite2": (260, 0.89, "bicubic", "center", {}),
        "efficientnet_lite3": (300, 0.904, "bicubic", "center", {}),
        "efficientnet_lite4": (380, 0.922, "bicubic", "center", {}),
        "tf_efficientnet_b0": (224, 0.875, "bicubic", "center", {}),
        "tf_efficientnet_b1": (240, 0.882, "bicubic", "center", {}),
        "tf_efficientnet_b2": (260, 0.89, "bicubic", "center", {}),
        "tf_efficientnet_b3": (300, 0.904, "bicubic", "center", {}),
        "tf_efficientnet_b4": (380, 0.922, "bicubic", "center", {}),
        "tf_efficientnet_b5": (456, 0.934, "bicubic", "center", {}),
        "tf_efficientnet_b6": (528, 0.942, "bicubic", "center", {}),
        "tf_efficientnet_b7": (600, 0.949, "bicubic", "center", {}),
        "tf_efficientnet_lite0": (224, 0.875, "bicubic", "center", inception),
        "tf_efficientnet_lite1": (240, 0.882, "bicubic", "center", inception),
        "tf_efficientnet_lite2": (260, 0.89, "bicubic", "center", inception),
        "tf_efficientnet_lite3": (300, 0.904, "bilinear", "center", inception),
        "tf_efficientnet_lite4": (380, 0.92, "bilinear", "center", inception),
    }
    for name, (size, crop_pct, interpolation, crop_mode, norm) in efficientnets.items():
        sources[name] = Source(
            "efficientnet_" + name.rpartition("_")[2],
            dict(**(TF_LAYERS if name.startswith("tf_") else TORCH_LAYERS), drop_path_rate=0.0,
                 **NO_DROP),
            efficientnet_pairs,
            timm_preprocessing(size, crop_pct, interpolation, crop_mode=crop_mode, **norm),
        )
    return sources


SOURCES: dict[str, Source] = _sources()
