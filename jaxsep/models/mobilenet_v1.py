"""MobileNetV1 (Howard et al., 2017, https://arxiv.org/abs/1704.04861)."""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from jaxsep import _validation as v
from jaxsep._choices import CONV_KINDS
from jaxsep import algebra, nn, ops
from jaxsep.models import _common
from jaxsep.models._registry import register_model
from jaxsep.models.layers import activation_fn, conv_padding
from jaxsep.models.blocks import (
    BN_EPSILON,
    BN_MOMENTUM,
    CONV_INIT,
    ConvNormAct,
    DepthwiseSeparableBlock,
    classifier,
    conv_norm_act,
    global_average_pool,
)

__all__ = [
    "CONV_CHOICES",
    "LAYERS",
    "MobileNetV1",
    "factorize_mobilenet_v1",
    "mobilenet_v1",
    "v1_channels",
]

Dtype = Any

# The paper's Table 1 at width 1: the stem's channels, then (out channels, stride) of each of
# the 13 3x3 layers. The table prints stride 2 for the last layer; the reference (TF-slim) and
# every port use 1 (the map is already 7x7).
STEM_CHANNELS = 32
LAYERS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),  # the five 14x14x512 layers, dropped by shallow=True (the paper's Table 5)
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
SHALLOW_DROPPED = range(6, 11)
MIN_DEPTH = 8  # TF-slim's min_depth
CONV_CHOICES = CONV_KINDS


def v1_channels(channels: int, width_multiplier: float) -> int:
    """TF-slim's (and Keras') rounding of MobileNetV1 widths: ``max(int(c * alpha), 8)``."""
    return max(int(channels * width_multiplier), MIN_DEPTH)


class MobileNetV1(nnx.Module):
    """MobileNetV1: a 3x3 stem, 13 depthwise-separable blocks, average pool, classifier.

    Every channel count is the paper's times ``width_multiplier`` (alpha), rounded as TF-slim
    rounds it (:func:`v1_channels`), the stem and the last layer included. Head (the paper's
    rule): global average pool over the ``1024 * alpha``-channel map, optional dropout, one
    fully connected layer ``1024 * alpha -> num_classes``. At 224x224 this gives the paper's
    counts: 4.2 M parameters and 569 M multiply-adds at alpha 1, 1.3 M / 149 M at 0.5
    (the counts include BatchNorm's scale and bias, as Keras' do: 4,231,976 at alpha 1).

    Args:
      num_classes: classifier outputs; default 10 for "cifar", 1000 for "imagenet".
      width_multiplier: alpha.
      variant: "imagenet" (224x224 inputs; stem stride 2) or "cifar" (32x32 inputs; stem
        stride 1, as in the kuangliu/pytorch-cifar port).
      conv: each 3x3 layer is "separable" (the paper's MobileNet: depthwise 3x3 - BN - ReLU,
        pointwise 1x1 - BN - ReLU), "standard" (the paper's "Conv MobileNet": one full 3x3
        conv - BN - ReLU in place of each pair; 29.3 M parameters, 4866 M multiply-adds) or
        "grouped" (a grouped 3x3 ``C -> C`` conv with ``groups`` groups, then the pointwise)
        or "factorized" (the "standard" model with each full 3x3 conv replaced by a
        depthwise 3x3 with ``depth_multiplier`` M and a pointwise ``C * M -> O``, nothing
        between them, then the standard layer's BN - ReLU: what
        :func:`factorize_mobilenet_v1` builds from a trained "standard" model). The stem is
        always a standard 3x3 convolution.
      groups: the groups of every grouped 3x3 layer; only (and required) with "grouped". It
        must divide every such layer's input channels.
      depth_multiplier: M of the "factorized" layers; only with "factorized" (default 1).
      shallow: drop the five 14x14x512 layers (the paper's "Shallow MobileNet", Table 5).
      dropout_rate: of the dropout before the classifier (0 disables it).
      activation: after every convolution: "relu" (the paper's, TF-slim's, Keras') or
        "relu6" (timm's ``mobilenetv1_100``), or another name of
        :data:`jaxsep.models.layers.ACTIVATIONS`.
      padding: "same" (TF/Keras "SAME": a stride-2 layer pads an even input ``(0, 1)``) or
        "symmetric" (PyTorch's ``k // 2``: ``(1, 1)``; timm's), see
        :func:`jaxsep.models.layers.conv_padding`.
      bn_epsilon, bn_momentum: of every BatchNorm; ``bn_momentum`` is Flax's, ``1 -``
        PyTorch's (the defaults are PyTorch's ``eps=1e-5, momentum=0.1``).
      in_channels: of the input images.
      dtype: the computation dtype (e.g. ``jnp.bfloat16``); None follows the inputs.
      param_dtype: the parameters' dtype.
      impl: of the depthwise convolutions (see :func:`jaxsep.ops.depthwise_conv`); with
        "grouped", the grouped ones run "xla" when it is "xla", else "auto"
        (:func:`jaxsep.models.blocks.grouped_impl`).
      rngs: parameter initialization and dropout.

    ``(N, H, W, in_channels) -> (N, num_classes)``.
    """

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        width_multiplier: float = 1.0,
        variant: Literal["imagenet", "cifar"] = "imagenet",
        conv: Literal["separable", "standard", "grouped"] = "separable",
        groups: int | None = None,
        depth_multiplier: int | None = None,
        shallow: bool = False,
        dropout_rate: float = 0.0,
        activation: str = "relu",
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
        act = activation_fn(name, "activation", activation)
        if conv not in CONV_CHOICES:
            raise ValueError(f"{name}: conv must be one of {CONV_CHOICES}, but got {conv!r}")
        if conv == "grouped":
            if groups is None:
                raise ValueError(f"{name}: conv='grouped' needs groups, but got groups=None")
            groups = v.check_int(name, "groups", groups)
        elif groups is not None:
            raise ValueError(
                f"{name}: groups applies only to conv='grouped', but got conv={conv!r} and "
                f"groups={groups!r}"
            )
        if conv == "factorized":
            depth_multiplier = v.check_int(
                name, "depth_multiplier", 1 if depth_multiplier is None else depth_multiplier
            )
        elif depth_multiplier is not None:
            raise ValueError(
                f"{name}: depth_multiplier applies only to conv='factorized', but got "
                f"conv={conv!r} and depth_multiplier={depth_multiplier!r}"
            )
        self.conv = conv
        self.groups = groups
        self.depth_multiplier = depth_multiplier
        self.shallow = bool(shallow)
        self.activation = activation

        width = self.width_multiplier
        layers = [
            (v1_channels(c, width), s)
            for i, (c, s) in enumerate(LAYERS)
            if not (self.shallow and i in SHALLOW_DROPPED)
        ]
        stem = v1_channels(STEM_CHANNELS, width)
        if conv == "grouped":
            bad = [c for c in [stem] + [c for c, _ in layers[:-1]] if c % groups]
            if bad:
                raise ValueError(
                    f"{name}: groups must divide the input channels of every grouped 3x3 layer "
                    f"at width_multiplier={width}, but {groups} does not divide {bad[0]}"
                )

        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        norm = dict(bn_epsilon=self.bn_epsilon, bn_momentum=self.bn_momentum)
        conv_options = dict(activation=act, **options, **common)
        stem_stride = 2 if variant == "imagenet" else 1
        self.stem = conv_norm_act(in_channels, stem, 3, strides=stem_stride, **conv_options)
        blocks = []
        features = stem
        for out, stride in layers:
            if conv == "standard":
                block = conv_norm_act(features, out, 3, strides=stride, **conv_options)
            elif conv == "factorized":
                pair = nn.SeparableConv(
                    features, out, (3, 3), depth_multiplier=depth_multiplier, strides=stride,
                    padding=conv_padding(self.padding, 3), use_bias=False,
                    depthwise_init=CONV_INIT, pointwise_init=CONV_INIT,
                    dtype=dtype, param_dtype=param_dtype, impl=impl, rngs=rngs,
                )
                block = ConvNormAct(pair, activation=act, **norm, **common)
            else:
                block = DepthwiseSeparableBlock(
                    features, out, strides=stride, groups=groups, impl=impl, **conv_options
                )
            blocks.append(block)
            features = out
        self.blocks = nnx.List(blocks)
        self.num_features = features
        self.dropout = nnx.Dropout(self.dropout_rate, rngs=rngs)
        self.classifier = classifier(features, self.num_classes, **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(self.dropout(global_average_pool(x)))


def factorize_mobilenet_v1(
    model: MobileNetV1, depth_multiplier: int, *, impl: ops.Impl = "auto"
) -> tuple[MobileNetV1, tuple[float, ...]]:
    """Converts a "standard" MobileNetV1 into a "factorized" one with
    :func:`jaxsep.factorize_conv`.

    Each full 3x3 kernel ``(3, 3, C, O)`` of the 13 layers becomes the closest depthwise
    ``(3, 3, 1, C * M)`` + pointwise ``(C * M, O)`` pair (a rank-M truncated SVD per input
    channel); the layer's BatchNorm (parameters and running statistics) and ReLU follow as
    before. The stem (a 3x3 conv from the image's channels, standard in every MobileNetV1)
    and the classifier are copied unchanged. With ``M >= min(9, O)`` for every layer the
    converted model computes the same function (up to float rounding).

    Args:
      model: a :class:`MobileNetV1` built with ``conv="standard"`` (real, not abstract).
      depth_multiplier: M.
      impl: of the new depthwise steps.

    Returns:
      ``(converted, errors)``: a new ``conv="factorized"`` model with the same width,
      variant, classes, dropout, activation, padding, BatchNorm settings and train/eval mode, and each layer's
      ``||W - fused||_F / ||W||_F`` (13 floats, 8 when ``shallow``).
    """
    name = "factorize_mobilenet_v1"
    if not isinstance(model, MobileNetV1):
        raise TypeError(f"{name}: model must be a MobileNetV1, but got {type(model).__name__}")
    if model.conv != "standard":
        raise ValueError(
            f"{name}: model must be built with conv='standard', but got conv={model.conv!r}"
        )
    depth_multiplier = v.check_int(name, "depth_multiplier", depth_multiplier)
    stem_conv = model.stem.conv
    # Built abstractly (nothing initialized): every variable is then taken from ``model``.
    converted = nnx.eval_shape(lambda: MobileNetV1(
        num_classes=model.num_classes,
        width_multiplier=model.width_multiplier,
        variant=model.variant,
        conv="factorized",
        depth_multiplier=depth_multiplier,
        shallow=model.shallow,
        dropout_rate=model.dropout_rate,
        activation=model.activation,
        padding=model.padding,
        bn_epsilon=model.bn_epsilon,
        bn_momentum=model.bn_momentum,
        in_channels=stem_conv.in_features,
        dtype=stem_conv.dtype,
        param_dtype=stem_conv.param_dtype,
        impl=impl,
        rngs=nnx.Rngs(0),
    ))
    for part in ("stem", "dropout", "classifier"):
        nnx.update(getattr(converted, part), nnx.state(getattr(model, part)))
    errors = []
    for old, new in zip(model.blocks, converted.blocks):
        dw, pw, error = algebra.factorize_conv(old.conv.kernel[...], depth_multiplier)
        new.conv.depthwise_kernel.set_value(dw)
        new.conv.pointwise_kernel.set_value(pw)
        nnx.update(new.norm, nnx.state(old.norm))
        errors.append(float(error))
    leaves = jax.tree.leaves(nnx.state(converted))
    if any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves):
        raise RuntimeError(f"{name}: a variable of the converted model was left uninitialized")
    if model.stem.norm.use_running_average:
        converted.eval()
    return converted, tuple(errors)


@register_model
def mobilenet_v1(**kwargs: Any) -> MobileNetV1:
    """:class:`MobileNetV1`; takes its keyword arguments."""
    return MobileNetV1(**kwargs)
