"""EfficientNet B0-B7 (Tan and Le, 2019, https://arxiv.org/abs/1905.11946) and
EfficientNet-Lite0-4 (TensorFlow's mobile versions, as timm's ``tf_efficientnet_lite*``).

One table of seven stages (MBConv: :class:`jaxsep.models.blocks.InvertedResidual` with
squeeze-and-excite and stochastic depth) scaled per name by the compound coefficients
(:data:`SCALES`): widths ``make_divisible(c * w, 8)``, repeats ``ceil(n * d)``. Built by default
as torchvision builds ``efficientnet_b*``; the differences from timm are options (see
``docs/models.md``):

* BatchNorm: torchvision's B0-B4 and timm's ``efficientnet_*`` use PyTorch's defaults
  (``bn_epsilon=1e-5, bn_momentum=0.9``), torchvision's B5-B7 ``eps=1e-3, momentum=0.01``
  (``bn_epsilon=1e-3, bn_momentum=0.99``); timm's ``tf_efficientnet_*`` (ported from TF) use
  ``1e-3`` and TF padding (``padding="same"``).
* Squeeze-and-excite: ``C_in // 4`` channels of the block's input (torchvision), which is
  timm's ``round(C_in * 0.25)`` for every width here (inputs are multiples of 8); its
  activation is the block's (SiLU) in both.
* The head: ``make_divisible(1280 * w, 8)`` channels (timm; torchvision's ``4 * C_last`` is the
  same number for every B0-B7).

Lite (no torchvision model): ReLU6, no squeeze-and-excite, the 32-channel stem and the
1280-channel head kept at every width, and the first and last stages' single block never
repeated.
"""

from __future__ import annotations

import math
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
from jaxsep.models.layers import activation_fn

__all__ = [
    "EfficientNet",
    "SCALES",
    "STAGES",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "efficientnet_lite3",
    "efficientnet_lite4",
]

Dtype = Any

# EfficientNet-B0 (the paper's Table 1), one row per stage: expansion ratio, kernel, first
# stride, out channels, repeats.
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
DIVISOR = 8
SE_RATIO = 0.25  # of the block's input channels
CIFAR_STAGE_STRIDE_1 = 1  # the 24-channel stage, as MobileNetV2's CIFAR port
# name -> (width coefficient w, depth coefficient d, resolution, dropout before the classifier):
# the reference's (TensorFlow's and timm's) compound scaling.
SCALES: dict[str, tuple[float, float, int, float]] = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3),
    "lite4": (1.4, 1.8, 300, 0.3),
}
# torchvision builds B5-B7 with BatchNorm2d(eps=1e-3, momentum=0.01); the others with PyTorch's
# defaults. (epsilon, Flax momentum).
_TF_BN = (1e-3, 0.99)
_TORCH_BN = (1e-5, 0.9)
DEFAULT_BN = {name: _TF_BN if name in ("b5", "b6", "b7") else _TORCH_BN for name in SCALES}
# torchvision's classifier init: uniform(-1 / sqrt(num_classes), 1 / sqrt(num_classes)).
CLASSIFIER_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")


def stage_repeats(depth: float, lite: bool) -> tuple[int, ...]:
    """Blocks per stage: ``ceil(n * depth)``; Lite keeps the first and last stages' one."""
    last = len(STAGES) - 1
    return tuple(
        n if lite and i in (0, last) else int(math.ceil(n * depth))
        for i, (*_, n) in enumerate(STAGES)
    )


class EfficientNet(nnx.Module):
    """EfficientNet: a 3x3 stem, seven stages of MBConv blocks, a 1x1 head conv, global average
    pool, dropout, the classifier.

    At width 1.0, 224x224: B0 has 5,288,548 parameters and 386 M multiply-adds (torchvision's
    counts), Lite0 4,652,008 and 385 M (timm's).

    Args:
      scale: "b0" ... "b7" or "lite0" ... "lite4" (:data:`SCALES`).
      num_classes: classifier outputs; default 10 for "cifar", 1000 for "imagenet".
      width_multiplier: on top of the scale's width coefficient (widths are
        ``make_divisible(c * w * width_multiplier, 8)``); 1.0 is the named model.
      variant: "imagenet" (the scale's resolution, :attr:`default_resolution`) or "cifar"
        (32x32: the stem and the 24-channel stage at stride 1, as MobileNetV2's CIFAR port, so
        the last map is 4x4).
      activation: of every layer; default "silu" (B) or "relu6" (Lite).
      dropout_rate: before the classifier; default the scale's (0.2 ... 0.5).
      drop_path_rate: stochastic depth: block ``i`` of ``n`` drops its residual branch with
        probability ``drop_path_rate * i / n`` in train mode (torchvision's 0.2).
      padding: "symmetric" (PyTorch's, the default) or "same" (TF's; timm's ``tf_*``).
      bn_epsilon, bn_momentum: of every BatchNorm (Flax's momentum, ``1 -`` PyTorch's);
        default torchvision's for the scale (``1e-3``/``0.99`` for B5-B7, else
        ``1e-5``/``0.9``).
      in_channels, dtype, param_dtype, impl, rngs: as in :class:`MobileNetV1`.

    ``(N, H, W, in_channels) -> (N, num_classes)``.
    """

    def __init__(
        self,
        *,
        scale: str = "b0",
        num_classes: int | None = None,
        width_multiplier: float = 1.0,
        variant: Literal["imagenet", "cifar"] = "imagenet",
        activation: str | None = None,
        dropout_rate: float | None = None,
        drop_path_rate: float = 0.2,
        padding: Literal["same", "symmetric"] = "symmetric",
        bn_epsilon: float | None = None,
        bn_momentum: float | None = None,
        in_channels: int = 3,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        impl: ops.Impl = "auto",
        rngs: nnx.Rngs,
    ):
        name = type(self).__name__
        self.scale = v.check_choice(name, "scale", scale, tuple(SCALES))
        lite = self.scale.startswith("lite")
        width_coefficient, depth, resolution, default_dropout = SCALES[self.scale]
        default_epsilon, default_momentum = DEFAULT_BN[self.scale]
        options, in_channels = _common.model_options(
            self,
            variant=variant,
            num_classes=num_classes,
            width_multiplier=width_multiplier,
            dropout_rate=default_dropout if dropout_rate is None else dropout_rate,
            padding=padding,
            bn_epsilon=default_epsilon if bn_epsilon is None else bn_epsilon,
            bn_momentum=default_momentum if bn_momentum is None else bn_momentum,
            in_channels=in_channels,
        )
        self.default_resolution = resolution if variant == "imagenet" else 32
        if activation is None:
            activation = "relu6" if lite else "silu"
        act = activation_fn(name, "activation", activation)
        self.activation = activation
        self.drop_path_rate = _common.check_rate(name, drop_path_rate, "drop_path_rate")

        width = width_coefficient * self.width_multiplier
        scale = lambda c: make_divisible(c * width, DIVISOR)  # noqa: E731
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        layer = dict(options, **common)
        cifar = variant == "cifar"
        features = STEM_CHANNELS if lite else scale(STEM_CHANNELS)
        self.stem = conv_norm_act(
            in_channels, features, 3, strides=1 if cifar else 2, activation=act, **layer
        )
        repeats = stage_repeats(depth, lite)
        total, index = sum(repeats), 0
        blocks = []
        for stage, ((t, kernel, stride, c, _), n) in enumerate(zip(STAGES, repeats)):
            out = scale(c)
            if cifar and stage == CIFAR_STAGE_STRIDE_1:
                stride = 1
            for i in range(n):
                blocks.append(
                    InvertedResidual(
                        features, out, strides=stride if i == 0 else 1, kernel_size=kernel,
                        hidden_features=make_divisible(features * t, DIVISOR), activation=act,
                        se_features=None if lite else max(1, int(features * SE_RATIO)),
                        se_activation=act, se_gate=jax.nn.sigmoid,
                        drop_path_rate=self.drop_path_rate * index / total, impl=impl, **layer,
                    )
                )
                features, index = out, index + 1
        self.blocks = nnx.List(blocks)
        self.num_features = HEAD_CHANNELS if lite else scale(HEAD_CHANNELS)
        self.head = conv_norm_act(features, self.num_features, 1, activation=act, **layer)
        self.dropout = nnx.Dropout(self.dropout_rate, rngs=rngs)
        self.classifier = classifier(
            self.num_features, self.num_classes, kernel_init=CLASSIFIER_INIT, **common
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = self.head(x)
        return self.classifier(self.dropout(global_average_pool(x)))


@register_model
def efficientnet_b0(**kwargs: Any) -> EfficientNet:
    """:class:`EfficientNet` with ``scale="b0"``; takes its other keyword arguments."""
    return EfficientNet(scale="b0", **kwargs)


@register_model
def efficientnet_b1(**kwargs: Any) -> EfficientNet:
    """:class:`EfficientNet` with ``scale="b1"``; takes its other keyword arguments."""
    return EfficientNet(scale="b1", **kwargs)


@register_model
def efficientnet_b2(**kwargs: Any) -> EfficientNet:
    """:class:`EfficientNet` with ``scale="b2"``; takes its other keyword arguments."""
    return EfficientNet(scale="b2", **kwargs)


@register_model
def efficientnet_b3(**kwargs: Any) -> EfficientNet:
    """:class:`EfficientNet` with ``scale="b3"``; takes its other keyword arguments."""
    return EfficientNet(scale="b3", **kwargs)


@register_model
def efficientnet_b4(**kwargs: Any) -> EfficientNet:
    """:class:`EfficientNet` with ``scale="b4"``; takes its other keyword arguments."""
    return EfficientNet(scale="b4", **kwargs)


@register_model
def efficientnet_b5(**kwargs: Any) -> EfficientNet:
    """:class:`EfficientNet` with ``scale="b5"``; takes its other keyword arguments."""
    return EfficientNet(scale="b5", **kwargs)


@register_model
def efficientnet_b6(**kwargs: Any) -> EfficientNet:
    """:class:`EfficientNet` with ``scale="b6"``; takes its other keyword arguments."""
    return EfficientNet(scale="b6", **kwargs)


@register_model
def efficientnet_b7(**kwargs: Any) -> EfficientNet:
    """:class:`EfficientNet` with ``scale="b7"``; takes its other keyword arguments."""
    return EfficientNet(scale="b7", **kwargs)


@register_model
def efficientnet_lite0(**kwargs: Any) -> EfficientNet:
    """:class:`EfficientNet` with ``scale="lite0"``; takes its other keyword arguments."""
    return EfficientNet(scale="lite0", **kwargs)


@register_model
def efficientnet_lite1(**kwargs: Any) -> EfficientNet:
    """:class:`EfficientNet` with ``scale="lite1"``; takes its other keyword arguments."""
    return EfficientNet(scale="lite1", **kwargs)


@register_model
def efficientnet_lite2(**kwargs: Any) -> EfficientNet:
    """:class:`EfficientNet` with ``scale="lite2"``; takes its other keyword arguments."""
    return EfficientNet(scale="lite2", **kwargs)


@register_model
def efficientnet_lite3(**kwargs: Any) -> EfficientNet:
    """:class:`EfficientNet` with ``scale="lite3"``; takes its other keyword arguments."""
    return EfficientNet(scale="lite3", **kwargs)


@register_model
def efficientnet_lite4(**kwargs: Any) -> EfficientNet:
    """:class:`EfficientNet` with ``scale="lite4"``; takes its other keyword arguments."""
    return EfficientNet(scale="lite4", **kwargs)
