"""ShuffleNet (v1) (Zhang et al., 2018, https://arxiv.org/abs/1707.01083)."""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from jaxsep import _validation as v
from jaxsep import ops
from jaxsep.models import _common
from jaxsep.models._registry import register_model
from jaxsep.models.blocks import (
    BN_EPSILON,
    BN_MOMENTUM,
    ShuffleUnit,
    classifier,
    conv_norm_act,
    global_average_pool,
    make_divisible,
)

__all__ = ["STAGE_CHANNELS", "STAGE_REPEATS", "ShuffleNetV1", "shufflenet_v1"]

Dtype = Any

# The paper's Table 1 at 1x: output channels of stages 2, 3, 4 for each number of groups g.
STAGE_CHANNELS: dict[int, tuple[int, int, int]] = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
STAGE_REPEATS = (4, 8, 4)  # units per stage; the first of each has stride 2
STEM_CHANNELS = 24


class ShuffleNetV1(nnx.Module):
    """ShuffleNet v1: a 3x3 stem, three stages of :class:`ShuffleUnit`, pool, classifier.

    "ShuffleNet s x" scales every channel count by ``s`` (``width_multiplier``): a stage's
    channels become ``make_divisible(c * s, 4 * g)`` (so the ``c / 4`` bottleneck splits into
    ``g`` groups; exact at 1x) and the stem's 24 become ``make_divisible(24 * s, g)``. The first
    1x1 of stage 2 is dense, as in the paper. Head: global average pool, dropout, one fully
    connected layer. At 224x224, 1x, g = 3: 1.9 M parameters and 138 M multiply-adds (the
    paper's "140 MFLOPs" are multiply-adds).

    Args:
      num_classes: classifier outputs; default 10 for "cifar", 1000 for "imagenet".
      groups: ``g``, one of 1, 2, 3, 4, 8 (default 3, the paper's choice).
      width_multiplier: ``s``.
      variant: "imagenet" (224x224: stem stride 2, then a 3x3 max pool with stride 2) or
        "cifar" (32x32: stem stride 1 and no max pool, as in the kuangliu/pytorch-cifar port).
      dropout_rate: of the dropout before the classifier (0 disables it).
      padding: of the 3x3 convolutions, as in :class:`MobileNetV1` (the pools always pad 1,
        as in every reference).
      bn_epsilon, bn_momentum: as in :class:`MobileNetV1`.
      impl: of the depthwise convolutions (see :func:`jaxsep.ops.depthwise_conv`); the
        grouped 1x1 ones run "xla" when it is "xla", else "auto"
        (:func:`jaxsep.models.blocks.grouped_impl`).
      in_channels, dtype, param_dtype, rngs: as in :class:`MobileNetV1`.

    ``(N, H, W, in_channels) -> (N, num_classes)``.
    """

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        groups: int = 3,
        width_multiplier: float = 1.0,
        variant: Literal["imagenet", "cifar"] = "imagenet",
        dropout_rate: float = 0.0,
        padding: Literal["same", "symmetric"] = "same",
        bn_epsilon: float = BN_EPSILON,
        bn_momentum: float = BN_MOMENTUM,
        in_channels: int = 3,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        impl: ops.Impl = "auto",
        rngs: nnx.Rngs,
    ):
        name = type(self).__name__
        options, in_channels = _common.model_options(
            self, variant=variant, num_classes=num_classes, width_multiplier=width_multiplier,
            dropout_rate=dropout_rate, padding=padding, bn_epsilon=bn_epsilon, bn_momentum=bn_momentum,
            in_channels=in_channels,
        )
        groups = v.check_int(name, "groups", groups)
        if groups not in STAGE_CHANNELS:
            raise ValueError(
                f"{name}: groups must be one of {sorted(STAGE_CHANNELS)} (the paper's Table 1), "
                f"but got {groups}"
            )
        self.groups = groups

        width = self.width_multiplier
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        layer = dict(options, **common)  # the keyword arguments of every block
        features = make_divisible(STEM_CHANNELS * width, groups)
        self.use_max_pool = variant == "imagenet"
        self.stem = conv_norm_act(
            in_channels, features, 3, strides=2 if self.use_max_pool else 1, **layer
        )
        units = []
        for stage, (c, repeats) in enumerate(zip(STAGE_CHANNELS[groups], STAGE_REPEATS)):
            out = make_divisible(c * width, 4 * groups)
            for i in range(repeats):
                units.append(
                    ShuffleUnit(
                        features,
                        out,
                        groups=groups,
                        strides=2 if i == 0 else 1,
                        first_grouped=not (stage == 0 and i == 0),
                        impl=impl,
                        **layer,
                    )
                )
                features = out
        self.blocks = nnx.List(units)
        self.num_features = features
        self.dropout = nnx.Dropout(self.dropout_rate, rngs=rngs)
        self.classifier = classifier(features, self.num_classes, **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.stem(x)
        if self.use_max_pool:
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for unit in self.blocks:
            x = unit(x)
        return self.classifier(self.dropout(global_average_pool(x)))


@register_model
def shufflenet_v1(**kwargs: Any) -> ShuffleNetV1:
    """:class:`ShuffleNetV1`; takes its keyword arguments."""
    return ShuffleNetV1(**kwargs)
