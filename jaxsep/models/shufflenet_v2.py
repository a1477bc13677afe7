"""ShuffleNet V2 (Ma et al., 2018, https://arxiv.org/abs/1807.11164), as torchvision's
``shufflenet_v2_x0_5`` ... ``shufflenet_v2_x2_0`` (timm has none).

Unlike MobileNet widths, the paper's four widths are not a rounding rule but a table of stage
channels (:data:`STAGE_CHANNELS`), so ``width_multiplier`` picks a row: 0.5, 1.0, 1.5 or 2.0.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from jaxsep import _validation as v
from jaxsep import nn, ops
from jaxsep.models import _common
from jaxsep.models._registry import register_model
from jaxsep.models.blocks import (
    BN_EPSILON,
    BN_MOMENTUM,
    classifier,
    conv_norm_act,
    depthwise_norm_act,
    global_average_pool,
)

__all__ = ["STAGE_CHANNELS", "STAGE_REPEATS", "ShuffleNetV2", "ShuffleUnitV2", "shufflenet_v2"]

Dtype = Any

# The paper's Table 5 (torchvision's stages_out_channels): width -> channels of the stem,
# stages 2, 3, 4 and the last 1x1 convolution.
STAGE_CHANNELS: dict[float, tuple[int, int, int, int, int]] = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}
STAGE_REPEATS = (4, 8, 4)  # units per stage; the first of each has stride 2


class ShuffleUnitV2(nnx.Module):
    """ShuffleNet V2's unit: two branches of ``O / 2`` channels, concatenated, then a channel
    shuffle with 2 groups.

    Stride 1 (``C == O``): the input's first half passes unchanged (channel split), the second
    goes through 1x1 - BN - ReLU, 3x3 depthwise - BN, 1x1 - BN - ReLU. Stride 2: both branches
    see the whole input: the left one 3x3 depthwise (stride 2) - BN, 1x1 - BN - ReLU; the right
    one as above with its first 1x1 from ``C`` channels and the depthwise at stride 2.

    Args:
      in_features: ``C``.
      out_features: ``O`` (even).
      strides: 1 or 2.
      padding, bn_epsilon, bn_momentum: as in :mod:`jaxsep.models.blocks`.
      dtype, param_dtype, impl, rngs: as in :class:`jaxsep.models.blocks.ShuffleUnit`.

    ``(N, H, W, C) -> (N, H / s, W / s, O)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        strides: int = 1,
        padding: str = "symmetric",
        bn_epsilon: float = BN_EPSILON,
        bn_momentum: float = BN_MOMENTUM,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        impl: ops.Impl = "auto",
        rngs: nnx.Rngs,
    ):
        name = type(self).__name__
        if strides not in (1, 2):
            v.fail(name, "strides", "1 or 2", strides)
        if out_features % 2:
            v.fail(name, "out_features", "even (two branches of O / 2)", out_features)
        if strides == 1 and in_features != out_features:
            raise ValueError(
                f"{name}: a stride-1 unit splits and keeps half its input, so in_features must "
                f"equal out_features, but got {in_features} and {out_features}"
            )
        branch = out_features // 2
        common = dict(
            bn_epsilon=bn_epsilon, bn_momentum=bn_momentum, dtype=dtype, param_dtype=param_dtype,
            rngs=rngs,
        )
        depthwise = dict(strides=strides, activation=None, padding=padding, impl=impl, **common)
        self.in_features, self.out_features = in_features, out_features
        self.strides = strides
        if strides == 2:
            self.left_depthwise = depthwise_norm_act(in_features, **depthwise)
            self.left_pointwise = conv_norm_act(in_features, branch, 1, **common)
        else:
            self.left_depthwise = self.left_pointwise = nnx.data(None)
        self.right_expand = conv_norm_act(
            in_features if strides == 2 else branch, branch, 1, **common
        )
        self.right_depthwise = depthwise_norm_act(branch, **depthwise)
        self.right_pointwise = conv_norm_act(branch, branch, 1, **common)
        self.shuffle = nn.ChannelShuffle(2, in_features=out_features)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.strides == 1:
            left, right = jnp.split(x, 2, axis=-1)
        else:
            left = self.left_pointwise(self.left_depthwise(x))
            right = x
        right = self.right_pointwise(self.right_depthwise(self.right_expand(right)))
        return self.shuffle(jnp.concatenate([left, right.astype(left.dtype)], axis=-1))


class ShuffleNetV2(nnx.Module):
    """ShuffleNet V2: a 3x3 stem (stride 2) and a 3x3 max pool (stride 2), three stages of
    :class:`ShuffleUnitV2`, a 1x1 conv - BN - ReLU, global average pool, the classifier.

    At 224x224, torchvision's counts: 1,366,792 / 2,278,604 / 3,503,624 / 7,393,996 parameters
    and 40 / 145 / 296 / 583 M multiply-adds at widths 0.5 / 1.0 / 1.5 / 2.0.

    Args:
      num_classes: classifier outputs; default 10 for "cifar", 1000 for "imagenet".
      width_multiplier: 0.5, 1.0, 1.5 or 2.0, the row of :data:`STAGE_CHANNELS`.
      variant: "imagenet" (224x224) or "cifar" (32x32: stem stride 1 and no max pool, as in
        ShuffleNetV1's CIFAR port; the last map is 4x4).
      dropout_rate: before the classifier (0, torchvision has none).
      padding: of the 3x3 convolutions: "symmetric" (torchvision's, the default) or "same";
        the max pool always pads 1.
      bn_epsilon, bn_momentum: of every BatchNorm (Flax's momentum, ``1 -`` PyTorch's).
      in_channels, dtype, param_dtype, impl, rngs: as in :class:`MobileNetV1`.

    ``(N, H, W, in_channels) -> (N, num_classes)``.
    """

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        width_multiplier: float = 1.0,
        variant: Literal["imagenet", "cifar"] = "imagenet",
        dropout_rate: float = 0.0,
        padding: Literal["same", "symmetric"] = "symmetric",
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
        self.width_multiplier = v.check_choice(
            name, "width_multiplier", self.width_multiplier, tuple(STAGE_CHANNELS)
        )

        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        layer = dict(options, **common)
        stem, *stages, last = STAGE_CHANNELS[self.width_multiplier]
        self.use_max_pool = variant == "imagenet"
        self.stem = conv_norm_act(
            in_channels, stem, 3, strides=2 if self.use_max_pool else 1, **layer
        )
        units = []
        features = stem
        for out, repeats in zip(stages, STAGE_REPEATS):
            for i in range(repeats):
                units.append(
                    ShuffleUnitV2(features, out, strides=2 if i == 0 else 1, impl=impl, **layer)
                )
                features = out
        self.blocks = nnx.List(units)
        self.num_features = last
        self.head = conv_norm_act(features, last, 1, **layer)
        self.dropout = nnx.Dropout(self.dropout_rate, rngs=rngs)
        self.classifier = classifier(last, self.num_classes, **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.stem(x)
        if self.use_max_pool:
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for unit in self.blocks:
            x = unit(x)
        x = self.head(x)
        return self.classifier(self.dropout(global_average_pool(x)))


@register_model
def shufflenet_v2(**kwargs: Any) -> ShuffleNetV2:
    """:class:`ShuffleNetV2`; takes its keyword arguments."""
    return ShuffleNetV2(**kwargs)
