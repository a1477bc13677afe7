"""MobileNetV2 (Sandler et al., 2018, https://arxiv.org/abs/1801.04381)."""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from jaxsep import ops
from jaxsep.models import _common
from jaxsep.models._registry import register_model
from jaxsep.models.blocks import (
    BN_EPSILON,
    BN_MOMENTUM,
    InvertedResidual,
    classifier,
    conv_norm_act,
    global_average_pool,
    make_divisible,
)

__all__ = ["MobileNetV2", "STAGES", "mobilenet_v2"]

Dtype = Any

# The paper's Table 2: (expansion t, out channels c, repeats n, first stride s) per stage.
STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
DIVISOR = 8  # channel counts are multiples of this (make_divisible)
CIFAR_STAGE_STRIDE_1 = 1  # the stage whose stride the CIFAR port sets to 1 (the 24-channel one)


class MobileNetV2(nnx.Module):
    """MobileNetV2: a 3x3 stem, 17 inverted residuals, a 1x1 head conv, pool, classifier.

    Channels: every stage's ``c`` and the stem's 32 become ``make_divisible(c * alpha, 8)``
    (the TensorFlow reference's rounding, as in torchvision and timm); hidden widths are
    ``round(C_in * t)``. Head (the paper's rule): the last 1x1 conv has
    ``make_divisible(1280 * max(1, alpha), 8)`` channels -- kept at 1280 below alpha 1, scaled
    above -- then global average pool, dropout and one fully connected layer. At 224x224 and
    alpha 1 this is 3.5 M parameters (3,504,872 with BatchNorm's scale and bias, as
    torchvision counts; the paper rounds to 3.4 M) and 300 M multiply-adds.

    Args:
      num_classes: classifier outputs; default 10 for "cifar", 1000 for "imagenet".
      width_multiplier: alpha.
      variant: "imagenet" (224x224) or "cifar" (32x32: stem stride 1 and the 24-channel stage
        at stride 1, as in the kuangliu/pytorch-cifar port; blocks stay the paper's).
      dropout_rate: of the dropout before the classifier (torchvision's 0.2 by default).
      padding, bn_epsilon, bn_momentum: as in :class:`MobileNetV1`. torchvision's and timm's
        ``mobilenet_v2`` (and ``mobilenetv2_*``) are this model with ``padding="symmetric"``:
        their channel rounding (stem, blocks, hidden and head widths) is the same as here.
      in_channels, dtype, param_dtype, impl, rngs: as in :class:`MobileNetV1`.

    ``(N, H, W, in_channels) -> (N, num_classes)``.
    """

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        width_multiplier: float = 1.0,
        variant: Literal["imagenet", "cifar"] = "imagenet",
        dropout_rate: float = 0.2,
        padding: Literal["same", "symmetric"] = "same",
        bn_epsilon: float = BN_EPSILON,
        bn_momentum: float = BN_MOMENTUM,
        in_channels: int = 3,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        impl: ops.Impl = "auto",
        rngs: nnx.Rngs,
    ):
        options, in_channels = _common.model_options(
            self, variant=variant, num_classes=num_classes, width_multiplier=width_multiplier,
            dropout_rate=dropout_rate, padding=padding, bn_epsilon=bn_epsilon, bn_momentum=bn_momentum,
            in_channels=in_channels,
        )

        width = self.width_multiplier
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        layer = dict(options, **common)  # the keyword arguments of every block
        cifar = variant == "cifar"
        features = make_divisible(STEM_CHANNELS * width, DIVISOR)
        self.stem = conv_norm_act(
            in_channels, features, 3, strides=1 if cifar else 2, activation=jax.nn.relu6, **layer
        )
        blocks = []
        for stage, (t, c, n, s) in enumerate(STAGES):
            out = make_divisible(c * width, DIVISOR)
            if cifar and stage == CIFAR_STAGE_STRIDE_1:
                s = 1
            for i in range(n):
                blocks.append(
                    InvertedResidual(
                        features, out, strides=s if i == 0 else 1, expand_ratio=t, impl=impl,
                        **layer,
                    )
                )
                features = out
        self.blocks = nnx.List(blocks)
        self.num_features = make_divisible(HEAD_CHANNELS * max(1.0, width), DIVISOR)
        self.head = conv_norm_act(
            features, self.num_features, 1, activation=jax.nn.relu6, **layer
        )
        self.dropout = nnx.Dropout(self.dropout_rate, rngs=rngs)
        self.classifier = classifier(self.num_features, self.num_classes, **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = self.head(x)
        return self.classifier(self.dropout(global_average_pool(x)))


@register_model
def mobilenet_v2(**kwargs: Any) -> MobileNetV2:
    """:class:`MobileNetV2`; takes its keyword arguments."""
    return MobileNetV2(**kwargs)
