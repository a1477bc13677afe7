"""timm's names: one naming scheme per family, one :class:`Source` per model name.

timm builds every family here with its ``EfficientNet`` / ``MobileNetV3`` classes: a stem
``conv_stem`` + ``bn1``, blocks numbered ``blocks.{stage}.{index}``, a head ``conv_head`` +
``bn2`` (absent in MobileNetV1), and ``classifier``. BatchNorm is PyTorch's (eps 1e-5,
momentum 0.1) and the padding symmetric, except in the ``tf_`` ports of TensorFlow weights:
eps 1e-3, momentum 0.01 and TF "SAME" padding.
"""

from __future__ import annotations

from collections.abc import Iterator

from flax import nnx

from jaxsep.convert._convert import (
    INCEPTION_MEAN,
    INCEPTION_STD,
    Source,
    conv_norm,
    staged,
    timm_preprocessing,
)
from jaxsep.models.mobilenet_v2 import STAGES as V2_STAGES

__all__ = ["SOURCES"]

Pairs = Iterator[tuple[str, nnx.Module]]

TORCH_BN = dict(padding="symmetric", bn_epsilon=1e-5, bn_momentum=0.9)
TF_BN = dict(padding="same", bn_epsilon=1e-3, bn_momentum=0.99)

# timm's MobileNetV1 stages (its arch_def: blocks of 64, 128, 256, 512, 1024 channels).
V1_REPEATS = (1, 2, 2, 6, 2)
V2_REPEATS = tuple(n for _, _, n, _ in V2_STAGES)


def _stem(model: nnx.Module) -> Pairs:
    yield from conv_norm("conv_stem", "bn1", model.stem)


def mobilenet_v1_pairs(model: nnx.Module) -> Pairs:
    """timm ``mobilenetv1_*``: depthwise-separable blocks ``conv_dw``/``bn1``,
    ``conv_pw``/``bn2``; no head conv."""
    yield from _stem(model)
    for stage, index, block in staged(model.blocks, V1_REPEATS):
        prefix = f"blocks.{stage}.{index}"
        yield from conv_norm(f"{prefix}.conv_dw", f"{prefix}.bn1", block.spatial)
        yield from conv_norm(f"{prefix}.conv_pw", f"{prefix}.bn2", block.pointwise)
    yield "classifier", model.classifier


def mobilenet_v2_pairs(model: nnx.Module) -> Pairs:
    """timm ``mobilenetv2_*``: the first block (no expansion) is a depthwise-separable block
    (``conv_dw``/``bn1``, ``conv_pw``/``bn2``), the others inverted residuals
    (``conv_pw``/``bn1``, ``conv_dw``/``bn2``, ``conv_pwl``/``bn3``)."""
    yield from _stem(model)
    for stage, index, block in staged(model.blocks, V2_REPEATS):
        prefix = f"blocks.{stage}.{index}"
        if block.expand is None:
            yield from conv_norm(f"{prefix}.conv_dw", f"{prefix}.bn1", block.depthwise)
            yield from conv_norm(f"{prefix}.conv_pw", f"{prefix}.bn2", block.project)
        else:
            yield from conv_norm(f"{prefix}.conv_pw", f"{prefix}.bn1", block.expand)
            yield from conv_norm(f"{prefix}.conv_dw", f"{prefix}.bn2", block.depthwise)
            yield from conv_norm(f"{prefix}.conv_pwl", f"{prefix}.bn3", block.project)
    yield from conv_norm("conv_head", "bn2", model.head)
    yield "classifier", model.classifier


def _sources() -> dict[str, Source]:
    sources = {}
    inception = dict(mean=INCEPTION_MEAN, std=INCEPTION_STD)
    # The preprocessing is that of each name's default pretrained tag in timm 1.0.
    for name, width, crop_pct in (("mobilenetv1_100", 1.0, 0.875), ("mobilenetv1_125", 1.25, 0.9)):
        sources[name] = Source(
            "mobilenet_v1",
            dict(width_multiplier=width, activation="relu6", **TORCH_BN),
            mobilenet_v1_pairs,
            timm_preprocessing(224, crop_pct, **inception),
        )
    for suffix in ("035", "050", "075", "100", "140"):
        sources[f"mobilenetv2_{suffix}"] = Source(
            "mobilenet_v2",
            dict(width_multiplier=int(suffix) / 100, **TORCH_BN),
            mobilenet_v2_pairs,
            timm_preprocessing(224),
        )
    return sources


SOURCES: dict[str, Source] = _sources()
