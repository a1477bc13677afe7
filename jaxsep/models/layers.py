"""Small layers and rules shared by the model families: activations by name, the padding rule,
initializers, squeeze-and-excite and stochastic depth.

The models take their activation and padding by name (so a model's keyword arguments stay
plain data that a run's config can store); this module turns the names into functions and
:mod:`jaxsep.nn` paddings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxsep import _validation as v
from jaxsep import nn
from jaxsep._choices import MODEL_PADDINGS

__all__ = [
    "ACTIVATIONS",
    "CONV_INIT",
    "DropPath",
    "LINEAR_INIT",
    "MODEL_PADDINGS",
    "SqueezeExcite",
    "activation_fn",
    "conv_padding",
]

Dtype = Any

Activation = Callable[[jax.Array], jax.Array]

# name -> function. hard_swish is x * relu6(x + 3) / 6 and hard_sigmoid relu6(x + 3) / 6, as
# PyTorch's nn.Hardswish / nn.Hardsigmoid (MobileNetV3); silu is x * sigmoid(x) (EfficientNet's
# "swish").
ACTIVATIONS: dict[str, Activation] = {
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "silu": jax.nn.silu,
    "hard_swish": jax.nn.hard_swish,
    "sigmoid": jax.nn.sigmoid,
    "hard_sigmoid": jax.nn.hard_sigmoid,
}

# Convolution kernels: PyTorch's kaiming_normal_(mode="fan_out"), i.e. normal with variance
# 2 / fan_out where fan_out = prod(K) * O read off the HWIO kernel (also right for depthwise
# and grouped kernels). Fully connected layers: normal(0, 0.01), zero bias.
CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
LINEAR_INIT = nnx.initializers.normal(0.01)


def activation_fn(where: str, name: str, value: str) -> Activation:
    """The function of the activation called ``value`` (a key of :data:`ACTIVATIONS`)."""
    return ACTIVATIONS[v.check_choice(where, name, value, tuple(ACTIVATIONS))]


def conv_padding(padding: str, kernel_size: int) -> str | int:
    """The :mod:`jaxsep.nn` padding of a square ``kernel_size`` convolution under a model's
    ``padding`` rule.

    "same" is TF/Keras "SAME": output size ``ceil(size / stride)``, the odd pixel of padding
    at the end (a stride-2 3x3 on an even input pads ``(0, 1)``). "symmetric" is PyTorch's
    ``padding=k // 2`` on both sides (``(1, 1)`` there). Both agree at stride 1 (odd kernels)
    and on odd inputs at stride 2; see ``docs/models.md``.
    """
    if padding not in MODEL_PADDINGS:
        v.fail("conv_padding", "padding", f"one of {MODEL_PADDINGS}", padding)
    if padding == "same":
        return "SAME"
    if kernel_size % 2 == 0:
        v.fail("conv_padding", "kernel_size", "odd for symmetric padding", kernel_size)
    return kernel_size // 2


class SqueezeExcite(nnx.Module):
    """Squeeze-and-excitation (Hu et al., 2018): channel weights from the global average.

    ``x * gate(expand(activation(reduce(mean_HW(x)))))``, where ``reduce`` (``C -> S``) and
    ``expand`` (``S -> C``) are 1x1 convolutions with bias (:class:`jaxsep.nn.PointwiseConv`,
    applied to the ``(N, 1, 1, C)`` mean). The families choose ``S`` and the functions:
    MobileNetV3 ReLU and hard-sigmoid, EfficientNet SiLU and sigmoid. Multiply-adds: the two
    1x1 layers, ``2 * C * S`` per image (the mean and the product are not counted, as
    :func:`jaxsep.cost.count_macs` counts no elementwise work).

    Args:
      features: ``C``.
      squeeze_features: ``S``.
      activation, gate: functions (e.g. ``jax.nn.relu``, ``jax.nn.hard_sigmoid``).
      dtype, param_dtype, rngs: as in :mod:`jaxsep.nn`. The kernels start as the
        convolutions' (:data:`CONV_INIT`), the biases at zero, as in torchvision.

    ``(N, H, W, C) -> (N, H, W, C)``.
    """

    def __init__(
        self,
        features: int,
        squeeze_features: int,
        *,
        activation: Activation = jax.nn.relu,
        gate: Activation = jax.nn.sigmoid,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        common = dict(
            spatial_dims=2, use_bias=True, kernel_init=CONV_INIT, dtype=dtype,
            param_dtype=param_dtype, rngs=rngs,
        )
        self.in_features = self.out_features = features
        self.squeeze_features = squeeze_features
        self.reduce = nn.PointwiseConv(features, squeeze_features, **common)
        self.expand = nn.PointwiseConv(squeeze_features, features, **common)
        self.activation = activation
        self.gate = gate

    def __call__(self, x: jax.Array) -> jax.Array:
        scale = jnp.mean(x, axis=(1, 2), keepdims=True)
        scale = self.gate(self.expand(self.activation(self.reduce(scale))))
        return x * scale.astype(x.dtype)


class DropPath(nnx.Dropout):
    """Stochastic depth (Huang et al., 2016) on a residual branch: in train mode each example's
    branch is zeroed with probability ``rate`` and otherwise scaled by ``1 / (1 - rate)``; in
    eval mode (``model.eval()``) the identity.

    torchvision's ``StochasticDepth(p, "row")`` and timm's ``DropPath`` (``scale_by_keep``):
    an ``nnx.Dropout`` whose mask is shared by every non-batch axis of a channels-last
    ``(N, *S, C)`` input with ``spatial_dims`` spatial axes. Draws from the "dropout" stream of
    ``rngs``, as ``nnx.Dropout``.
    """

    def __init__(self, rate: float, *, spatial_dims: int = 2, rngs: nnx.Rngs | None = None):
        rate = v.check_number("DropPath", "rate", rate, low=0.0, high=1.0)
        spatial_dims = v.check_int("DropPath", "spatial_dims", spatial_dims)
        super().__init__(rate, broadcast_dims=tuple(range(1, spatial_dims + 2)), rngs=rngs)
