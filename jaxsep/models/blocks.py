"""Building blocks of the model families: MobileNetV1's depthwise-separable block, the inverted
residual (MobileNetV2, and with squeeze-excite and stochastic depth MobileNetV3 and
EfficientNet's MBConv) and ShuffleNet's unit. (ShuffleNetV2's unit is in
:mod:`jaxsep.models.shufflenet_v2`; squeeze-excite, stochastic depth and the activations in
:mod:`jaxsep.models.layers`.)

Every block is built from :mod:`jaxsep.nn` convolutions, ``nnx.BatchNorm`` and an activation;
all images are channels-last ``(N, H, W, C)``.

Conventions shared by every model here (those of torchvision's MobileNets):

* convolutions have no bias (BatchNorm follows each one);
* BatchNorm uses PyTorch's defaults: ``momentum=0.9`` in Flax's convention (PyTorch's 0.1),
  ``epsilon=1e-5``; every block takes ``bn_epsilon`` and ``bn_momentum`` to change them.
  Flax's momentum is the weight of the old running value, PyTorch's that of the new batch:
  ``bn_momentum = 1 - torch_momentum`` (torchvision's MobileNetV3 and EfficientNet-B5..B7 use
  ``BatchNorm2d(eps=1e-3, momentum=0.01)``: ``bn_epsilon=1e-3, bn_momentum=0.99``);
* every block takes ``padding`` ("same", the default, or "symmetric"), the rule of
  :func:`jaxsep.models.layers.conv_padding`;
* convolution kernels start as ``kaiming_normal_(mode="fan_out")``: normal with variance
  ``2 / fan_out``, ``fan_out = prod(K) * O`` read off the HWIO kernel, exactly PyTorch's
  ``fan_out`` for the same layer (also for depthwise and grouped kernels);
* the classifier starts as ``normal(0, 0.01)`` with a zero bias.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxsep import _validation as v
from jaxsep import nn
from jaxsep import ops
from jaxsep.models.layers import (
    CONV_INIT,
    LINEAR_INIT,
    DropPath,
    SqueezeExcite,
    conv_padding,
)

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "ConvNormAct",
    "DepthwiseSeparableBlock",
    "InvertedResidual",
    "ShuffleUnit",
    "batch_norm",
    "classifier",
    "conv_norm_act",
    "depthwise_norm_act",
    "global_average_pool",
    "make_divisible",
]

Dtype = Any
Activation = Callable[[jax.Array], jax.Array]

BN_MOMENTUM = 0.9  # Flax convention (weight of the old running value); PyTorch's momentum=0.1
BN_EPSILON = 1e-5


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Rounds a channel count to the nearest multiple of ``divisor``, never more than 10% down.

    The rounding of the TensorFlow MobileNet reference (``_make_divisible``), as in timm and
    torchvision: at least ``min_value`` (default ``divisor``).
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def batch_norm(
    features: int,
    *,
    epsilon: float = BN_EPSILON,
    momentum: float = BN_MOMENTUM,
    dtype: Dtype | None,
    param_dtype: Dtype,
    rngs: nnx.Rngs,
) -> nnx.BatchNorm:
    """``nnx.BatchNorm``, by default with PyTorch's settings (see the module docstring;
    ``momentum`` is Flax's, ``1 -`` PyTorch's)."""
    return nnx.BatchNorm(
        features,
        momentum=momentum,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def classifier(
    features: int,
    num_classes: int,
    *,
    kernel_init: nnx.Initializer = LINEAR_INIT,
    dtype: Dtype | None,
    param_dtype: Dtype,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """The final fully connected layer: ``normal(0, 0.01)`` weights (unless ``kernel_init``),
    zero bias."""
    return nnx.Linear(
        features,
        num_classes,
        kernel_init=kernel_init,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def global_average_pool(x: jax.Array) -> jax.Array:
    """``(N, H, W, C) -> (N, C)``."""
    return jnp.mean(x, axis=(1, 2))


def _pointwise(
    in_features: int,
    out_features: int,
    groups: int,
    *,
    dtype: Dtype | None,
    param_dtype: Dtype,
    impl: ops.GroupedImpl,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """A 1x1 convolution: the matrix-product ``PointwiseConv`` unless it is grouped."""
    common = dict(use_bias=False, kernel_init=CONV_INIT, dtype=dtype, param_dtype=param_dtype)
    if groups == 1:
        return nn.PointwiseConv(in_features, out_features, spatial_dims=2, rngs=rngs, **common)
    return nn.GroupedConv(
        in_features, out_features, (1, 1), groups=groups, impl=impl, rngs=rngs, **common
    )


def grouped_impl(impl: ops.Impl) -> ops.GroupedImpl:
    """The grouped convolutions' lowering for a model's depthwise ``impl``.

    "xla" stays "xla" (everything through ``conv_general_dilated``, e.g. to compare against
    it); "taps" and "auto" give "auto", which picks between "split" and "taps" per group
    width: forcing grouped "taps" on wide groups would unroll one call per channel of a group.
    """
    return "xla" if impl == "xla" else "auto"


class ConvNormAct(nnx.Module):
    """``conv`` -> BatchNorm -> ``activation`` (none when ``activation`` is None).

    Args:
      conv: a :mod:`jaxsep.nn` convolution (its ``out_features`` sizes the BatchNorm).
      activation: a function, or None for a linear (norm-only) layer.
      bn_epsilon, bn_momentum: of the BatchNorm (Flax's momentum; see the module docstring).
      dtype, param_dtype: of the BatchNorm.
      rngs: for the BatchNorm.
    """

    def __init__(
        self,
        conv: nnx.Module,
        *,
        activation: Activation | None,
        bn_epsilon: float = BN_EPSILON,
        bn_momentum: float = BN_MOMENTUM,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.conv = conv
        self.in_features = conv.in_features
        self.out_features = conv.out_features
        self.norm = batch_norm(
            conv.out_features, epsilon=bn_epsilon, momentum=bn_momentum, dtype=dtype,
            param_dtype=param_dtype, rngs=rngs,
        )
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.norm(self.conv(x))
        return x if self.activation is None else self.activation(x)


def conv_norm_act(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    strides: int = 1,
    groups: int = 1,
    activation: Activation | None = jax.nn.relu,
    padding: str = "same",
    bn_epsilon: float = BN_EPSILON,
    bn_momentum: float = BN_MOMENTUM,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    impl: ops.GroupedImpl = "auto",
    rngs: nnx.Rngs,
) -> ConvNormAct:
    """A square ``kernel_size`` convolution (dense or grouped) + BatchNorm + activation.

    A 1x1 convolution is a :class:`jaxsep.nn.PointwiseConv` when ``groups == 1``; with
    ``groups > 1`` the convolution is a :class:`jaxsep.nn.GroupedConv` lowered per ``impl``
    (see :func:`jaxsep.ops.grouped_conv`; unused when ``groups == 1``). ``padding`` is the
    rule of :func:`jaxsep.models.layers.conv_padding`.
    """
    if kernel_size == 1 and strides == 1:
        conv = _pointwise(
            in_features, out_features, groups, dtype=dtype, param_dtype=param_dtype, impl=impl,
            rngs=rngs,
        )
    else:
        conv_class = functools.partial(nn.GroupedConv, impl=impl) if groups > 1 else nn.Conv
        conv = conv_class(
            in_features,
            out_features,
            (kernel_size, kernel_size),
            groups=groups,
            strides=strides,
            padding=conv_padding(padding, kernel_size),
            use_bias=False,
            kernel_init=CONV_INIT,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
    return ConvNormAct(
        conv, activation=activation, bn_epsilon=bn_epsilon, bn_momentum=bn_momentum,
        dtype=dtype, param_dtype=param_dtype, rngs=rngs,
    )


def depthwise_norm_act(
    features: int,
    *,
    kernel_size: int = 3,
    strides: int = 1,
    activation: Activation | None = jax.nn.relu,
    padding: str = "same",
    bn_epsilon: float = BN_EPSILON,
    bn_momentum: float = BN_MOMENTUM,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    impl: ops.Impl = "auto",
    rngs: nnx.Rngs,
) -> ConvNormAct:
    """A square ``kernel_size`` (3x3 by default) :class:`jaxsep.nn.DepthwiseConv` + BatchNorm
    + activation."""
    conv = nn.DepthwiseConv(
        features,
        (kernel_size, kernel_size),
        strides=strides,
        padding=conv_padding(padding, kernel_size),
        use_bias=False,
        kernel_init=CONV_INIT,
        dtype=dtype,
        param_dtype=param_dtype,
        impl=impl,
        rngs=rngs,
    )
    return ConvNormAct(
        conv, activation=activation, bn_epsilon=bn_epsilon, bn_momentum=bn_momentum,
        dtype=dtype, param_dtype=param_dtype, rngs=rngs,
    )


class DepthwiseSeparableBlock(nnx.Module):
    """MobileNetV1's block: 3x3 depthwise - BN - ReLU, then 1x1 pointwise - BN - ReLU.

    With ``groups`` the 3x3 step is a grouped convolution ``C -> C`` with ``groups`` groups
    instead of the depthwise one (``groups == C`` is the depthwise layer computed as a grouped
    convolution; ``groups == 1`` a full 3x3 convolution ``C -> C``).

    Args:
      in_features: ``C``.
      out_features: ``O``.
      strides: of the 3x3 step.
      groups: None for depthwise, else the groups of the 3x3 step (must divide ``C``).
      activation: after both steps (ReLU; timm's MobileNetV1 uses ReLU6).
      padding, bn_epsilon, bn_momentum: see the module docstring.
      dtype, param_dtype, rngs: as in :mod:`jaxsep.nn`.
      impl: of the depthwise 3x3 step (:func:`jaxsep.ops.depthwise_conv`); a grouped one
        gets :func:`grouped_impl` of it.

    ``(N, H, W, C) -> (N, H / s, W / s, O)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        strides: int = 1,
        groups: int | None = None,
        activation: Activation = jax.nn.relu,
        padding: str = "same",
        bn_epsilon: float = BN_EPSILON,
        bn_momentum: float = BN_MOMENTUM,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        impl: ops.Impl = "auto",
        rngs: nnx.Rngs,
    ):
        common = dict(
            activation=activation, padding=padding, bn_epsilon=bn_epsilon,
            bn_momentum=bn_momentum, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        )
        self.in_features, self.out_features = in_features, out_features
        if groups is None:
            self.spatial = depthwise_norm_act(in_features, strides=strides, impl=impl, **common)
        else:
            self.spatial = conv_norm_act(
                in_features, in_features, 3, strides=strides, groups=groups,
                impl=grouped_impl(impl), **common
            )
        self.pointwise = conv_norm_act(in_features, out_features, 1, **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.pointwise(self.spatial(x))


class InvertedResidual(nnx.Module):
    """MobileNetV2's inverted residual with a linear bottleneck, and its MobileNetV3 and
    EfficientNet (MBConv) forms.

    1x1 expansion to ``hidden`` channels - BN - activation (skipped when ``hidden == C``),
    ``kernel_size`` depthwise - BN - activation, optional squeeze-and-excite
    (:class:`jaxsep.models.layers.SqueezeExcite` with ``se_features`` channels), 1x1 linear
    projection to ``O`` - BN; plus the input when the shapes allow (stride 1 and ``C == O``),
    the branch then passing through :class:`jaxsep.models.layers.DropPath` (stochastic depth,
    train mode only) when ``drop_path_rate > 0``.

    Args:
      in_features: ``C``.
      out_features: ``O``.
      strides: of the depthwise step.
      expand_ratio: ``hidden = round(C * expand_ratio)`` (MobileNetV2's rule) unless
        ``hidden_features`` is given.
      kernel_size: of the depthwise step (3; MobileNetV3 and EfficientNet also use 5).
      hidden_features: the expanded width, when the family rounds it itself.
      activation: after the expansion and the depthwise step.
      se_features: ``S`` of the squeeze-and-excite step; None for none.
      se_activation, se_gate: its functions.
      drop_path_rate: of the residual branch (0: none).
      padding, bn_epsilon, bn_momentum: see the module docstring.
      dtype, param_dtype, impl, rngs: as in :class:`DepthwiseSeparableBlock` (``rngs`` also
        draws the stochastic-depth masks).

    ``(N, H, W, C) -> (N, H / s, W / s, O)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        strides: int = 1,
        expand_ratio: float = 6,
        kernel_size: int = 3,
        hidden_features: int | None = None,
        activation: Activation = jax.nn.relu6,
        se_features: int | None = None,
        se_activation: Activation = jax.nn.relu,
        se_gate: Activation = jax.nn.sigmoid,
        drop_path_rate: float = 0.0,
        padding: str = "same",
        bn_epsilon: float = BN_EPSILON,
        bn_momentum: float = BN_MOMENTUM,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        impl: ops.Impl = "auto",
        rngs: nnx.Rngs,
    ):
        name = type(self).__name__
        if hidden_features is None:
            expand_ratio = v.check_number(name, "expand_ratio", expand_ratio, low=1.0, high=None)
            hidden_features = int(round(in_features * expand_ratio))
        hidden = v.check_int(name, "hidden_features", hidden_features)
        common = dict(
            bn_epsilon=bn_epsilon, bn_momentum=bn_momentum, dtype=dtype, param_dtype=param_dtype,
            rngs=rngs,
        )
        self.in_features, self.out_features = in_features, out_features
        self.hidden_features = hidden
        self.expand = (
            conv_norm_act(in_features, hidden, 1, activation=activation, **common)
            if hidden != in_features
            else nnx.data(None)
        )
        self.depthwise = depthwise_norm_act(
            hidden, kernel_size=kernel_size, strides=strides, activation=activation,
            padding=padding, impl=impl, **common
        )
        self.se = (
            SqueezeExcite(
                hidden, se_features, activation=se_activation, gate=se_gate, dtype=dtype,
                param_dtype=param_dtype, rngs=rngs,
            )
            if se_features is not None
            else nnx.data(None)
        )
        self.project = conv_norm_act(hidden, out_features, 1, activation=None, **common)
        self.use_residual = strides == 1 and in_features == out_features
        self.drop_path = (
            DropPath(drop_path_rate, rngs=rngs)
            if self.use_residual and drop_path_rate > 0
            else nnx.data(None)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x if self.expand is None else self.expand(x)
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        if not self.use_residual:
            return y
        return x + (y if self.drop_path is None else self.drop_path(y))


class ShuffleUnit(nnx.Module):
    """ShuffleNet's unit: grouped 1x1 - BN - ReLU, channel shuffle, 3x3 depthwise - BN,
    grouped 1x1 - BN, then the shortcut and a ReLU.

    At stride 1 (``C == O``) the shortcut is the identity, added. At stride 2 it is a 3x3
    average pool (stride 2, padding 1) of the input, concatenated, so the branch produces
    ``O - C`` channels. The bottleneck has ``O // 4`` channels, as in the paper and Megvii's
    reference; the first 1x1 is dense when ``first_grouped=False`` (the paper's first unit of
    stage 2, whose input has few channels). ``impl`` is the lowering of the depthwise convolution
    (:func:`jaxsep.ops.depthwise_conv`); the grouped ones get :func:`grouped_impl` of it.
    ``padding`` (of the depthwise convolution; the pool always pads 1), ``bn_epsilon``,
    ``bn_momentum``: see the module docstring.

    ``(N, H, W, C) -> (N, H / s, W / s, O)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        groups: int,
        strides: int = 1,
        first_grouped: bool = True,
        padding: str = "same",
        bn_epsilon: float = BN_EPSILON,
        bn_momentum: float = BN_MOMENTUM,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        impl: ops.Impl = "auto",
        rngs: nnx.Rngs,
    ):
        name = type(self).__name__
        groups = v.check_int(name, "groups", groups)
        if strides not in (1, 2):
            raise ValueError(f"{name}: strides must be 1 or 2, but got {strides!r}")
        if strides == 1 and in_features != out_features:
            raise ValueError(
                f"{name}: a stride-1 unit adds its input, so in_features must equal "
                f"out_features, but got {in_features} and {out_features}"
            )
        branch = out_features - in_features if strides == 2 else out_features
        if branch <= 0:
            raise ValueError(
                f"{name}: a stride-2 unit concatenates its input, so out_features must exceed "
                f"in_features, but got {out_features} <= {in_features}"
            )
        bottleneck = out_features // 4
        common = dict(
            bn_epsilon=bn_epsilon, bn_momentum=bn_momentum, dtype=dtype, param_dtype=param_dtype,
            rngs=rngs,
        )
        self.in_features, self.out_features = in_features, out_features
        self.strides = strides
        self.gconv1 = conv_norm_act(
            in_features, bottleneck, 1, groups=groups if first_grouped else 1,
            impl=grouped_impl(impl), **common
        )
        self.shuffle = nn.ChannelShuffle(groups, in_features=bottleneck)
        self.depthwise = depthwise_norm_act(
            bottleneck, strides=strides, activation=None, padding=padding, impl=impl, **common
        )
        self.gconv2 = conv_norm_act(
            bottleneck, branch, 1, groups=groups, activation=None, impl=grouped_impl(impl), **common
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.gconv2(self.depthwise(self.shuffle(self.gconv1(x))))
        if self.strides == 1:
            return jax.nn.relu(x + y)
        shortcut = nnx.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return jax.nn.relu(jnp.concatenate([y, shortcut.astype(y.dtype)], axis=-1))
