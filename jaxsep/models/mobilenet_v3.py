"""MobileNetV3 (Howard et al., 2019, https://arxiv.org/abs/1905.02244), large and small.

Built as torchvision builds it by default; every difference from timm's ``mobilenetv3_*`` is an
option (see ``docs/models.md``):

* BatchNorm: torchvision uses ``eps=1e-3, momentum=0.01`` (the defaults here:
  ``bn_epsilon=1e-3, bn_momentum=0.99``); timm's ``mobilenetv3_*`` PyTorch's defaults
  (``bn_epsilon=1e-5, bn_momentum=0.9``); timm's ``tf_mobilenetv3_*`` are ``1e-3`` with
  ``padding="same"``.
* Widths other than 1.0 (``scaling``): torchvision scales the table's expanded widths, the
  stem and the 1280 (1024) head; timm expands each block's scaled input by the table's ratio,
  keeps the stem at 16 below width 0.75 and the head at 1280 (1024). Equal at width 1.0.
* Layout only: torchvision's head is ``Linear(960, 1280)``, timm's a 1x1 convolution with bias
  on the pooled features, the same function.

Channels: every width is ``make_divisible(c * width, 8)``; squeeze-and-excite has
``make_divisible(hidden / 4, 8)`` channels, ReLU and hard-sigmoid (both sources).
"""

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
    InvertedResidual,
    classifier,
    conv_norm_act,
    global_average_pool,
    make_divisible,
)
from jaxsep.models.layers import ACTIVATIONS

__all__ = ["MobileNetV3", "SCALINGS", "SIZES", "STAGES", "mobilenet_v3_large", "mobilenet_v3_small"]

Dtype = Any

# The paper's Tables 1 and 2, as torchvision writes them, one row per block: kernel, expanded
# channels, timm's expansion ratio (its "e"), out channels, squeeze-and-excite, activation
# ("relu" or "hard_swish"), stride.
_RE, _HS = "relu", "hard_swish"
STAGES: dict[str, tuple[tuple[int, int, float, int, bool, str, int], ...]] = {
    "large": (
        (3, 16, 1.0, 16, False, _RE, 1),
        (3, 64, 4.0, 24, False, _RE, 2),
        (3, 72, 3.0, 24, False, _RE, 1),
        (5, 72, 3.0, 40, True, _RE, 2),
        (5, 120, 3.0, 40, True, _RE, 1),
        (5, 120, 3.0, 40, True, _RE, 1),
        (3, 240, 6.0, 80, False, _HS, 2),
        (3, 200, 2.5, 80, False, _HS, 1),
        (3, 184, 2.3, 80, False, _HS, 1),
        (3, 184, 2.3, 80, False, _HS, 1),
        (3, 480, 6.0, 112, True, _HS, 1),
        (3, 672, 6.0, 112, True, _HS, 1),
        (5, 672, 6.0, 160, True, _HS, 2),
        (5, 960, 6.0, 160, True, _HS, 1),
        (5, 960, 6.0, 160, True, _HS, 1),
    ),
    "small": (
        (3, 16, 1.0, 16, True, _RE, 2),
        (3, 72, 4.5, 24, False, _RE, 2),
        (3, 88, 3.67, 24, False, _RE, 1),
        (5, 96, 4.0, 40, True, _HS, 2),
        (5, 240, 6.0, 40, True, _HS, 1),
        (5, 240, 6.0, 40, True, _HS, 1),
        (5, 120, 3.0, 48, True, _HS, 1),
        (5, 144, 3.0, 48, True, _HS, 1),
        (5, 288, 6.0, 96, True, _HS, 2),
        (5, 576, 6.0, 96, True, _HS, 1),
        (5, 576, 6.0, 96, True, _HS, 1),
    ),
}
SIZES = tuple(STAGES)
STEM_CHANNELS = 16
LAST_CONV_EXPANSION = 6  # the last 1x1 conv has 6x the last block's channels (960, 576)
HEAD_CHANNELS = {"large": 1280, "small": 1024}  # the hidden layer of the classifier
SCALINGS = ("torchvision", "timm")
TIMM_FIXED_STEM_BELOW = 0.75  # timm keeps the 16-channel stem for width < 0.75
DIVISOR = 8


class MobileNetV3(nnx.Module):
    """MobileNetV3: a 3x3 stem (hard-swish), the table's inverted residuals, a 1x1 conv (6x the
    last block's channels, hard-swish), global average pool, a hidden fully connected layer
    (1280 or 1024, with bias, hard-swish), dropout, the classifier.

    At 224x224 and width 1.0: large 5,483,032 parameters and 217 M multiply-adds, small
    2,542,856 and 57 M (torchvision's counts; see ``docs/models.md`` for the MAC convention).

    Args:
      size: "large" or "small".
      num_classes: classifier outputs; default 10 for "cifar", 1000 for "imagenet".
      width_multiplier: alpha (timm names 0.5, 0.75, 1.0: ``mobilenetv3_small_050`` ...).
      variant: "imagenet" (224x224) or "cifar" (32x32: the stem and the first stride-2 block
        at stride 1, so the last map is 4x4, as MobileNetV2's CIFAR port).
      scaling: the width rule of "torchvision" or "timm" (the module docstring).
      dropout_rate: before the classifier (torchvision's 0.2).
      padding: "symmetric" (PyTorch's, the default) or "same" (TF's; timm's ``tf_*``).
      bn_epsilon, bn_momentum: of every BatchNorm (Flax's momentum, ``1 -`` PyTorch's).
      in_channels, dtype, param_dtype, impl, rngs: as in :class:`MobileNetV1`.

    ``(N, H, W, in_channels) -> (N, num_classes)``.
    """

    def __init__(
        self,
        *,
        size: Literal["large", "small"] = "large",
        num_classes: int | None = None,
        width_multiplier: float = 1.0,
        variant: Literal["imagenet", "cifar"] = "imagenet",
        scaling: Literal["torchvision", "timm"] = "torchvision",
        dropout_rate: float = 0.2,
        padding: Literal["same", "symmetric"] = "symmetric",
        bn_epsilon: float = 1e-3,
        bn_momentum: float = 0.99,
        in_channels: int = 3,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        impl: ops.Impl = "auto",
        rngs: nnx.Rngs,
    ):
        name = type(self).__name__
        self.size = v.check_choice(name, "size", size, SIZES)
        self.scaling = v.check_choice(name, "scaling", scaling, SCALINGS)
        options, in_channels = _common.model_options(
            self, variant=variant, num_classes=num_classes, width_multiplier=width_multiplier,
            dropout_rate=dropout_rate, padding=padding, bn_epsilon=bn_epsilon, bn_momentum=bn_momentum,
            in_channels=in_channels,
        )

        width = self.width_multiplier
        timm = self.scaling == "timm"
        scale = lambda c: make_divisible(c * width, DIVISOR)  # noqa: E731
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        layer = dict(options, **common)
        cifar = variant == "cifar"
        stages = STAGES[self.size]
        first_stride_2 = next(i for i, row in enumerate(stages) if row[-1] == 2)

        features = STEM_CHANNELS if timm and width < TIMM_FIXED_STEM_BELOW else scale(16)
        self.stem = conv_norm_act(
            in_channels, features, 3, strides=1 if cifar else 2,
            activation=jax.nn.hard_swish, **layer,
        )
        blocks = []
        for i, (kernel, expanded, ratio, out, se, act, stride) in enumerate(stages):
            hidden = make_divisible(features * ratio, DIVISOR) if timm else scale(expanded)
            out = scale(out)
            blocks.append(
                InvertedResidual(
                    features, out, strides=1 if cifar and i == first_stride_2 else stride,
                    kernel_size=kernel, hidden_features=hidden, activation=ACTIVATIONS[act],
                    se_features=make_divisible(hidden / 4, DIVISOR) if se else None,
                    se_activation=jax.nn.relu, se_gate=jax.nn.hard_sigmoid, impl=impl, **layer,
                )
            )
            features = out
        self.blocks = nnx.List(blocks)
        last = make_divisible(stages[-1][3] * LAST_CONV_EXPANSION * width, DIVISOR) if timm else (
            LAST_CONV_EXPANSION * features
        )
        self.head = conv_norm_act(features, last, 1, activation=jax.nn.hard_swish, **layer)
        hidden_head = HEAD_CHANNELS[self.size]
        self.num_features = hidden_head if timm else scale(hidden_head)
        self.pre_logits = classifier(last, self.num_features, **common)
        self.dropout = nnx.Dropout(self.dropout_rate, rngs=rngs)
        self.classifier = classifier(self.num_features, self.num_classes, **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = jax.nn.hard_swish(self.pre_logits(global_average_pool(self.head(x))))
        return self.classifier(self.dropout(x))


@register_model
def mobilenet_v3_large(**kwargs: Any) -> MobileNetV3:
    """:class:`MobileNetV3` with ``size="large"``; takes its other keyword arguments."""
    return MobileNetV3(size="large", **kwargs)


@register_model
def mobilenet_v3_small(**kwargs: Any) -> MobileNetV3:
    """:class:`MobileNetV3` with ``size="small"``; takes its other keyword arguments."""
    return MobileNetV3(size="small", **kwargs)
