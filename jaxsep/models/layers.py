"""Small layers and rules shared by the model families: activations by name, the padding rule,
initializers, squeeze-and-excite and stochastic depth.

The models take their activation and padding by name (so a model's keyword arguments stay
plain data that a run's config can store); this module turns the names into functions and
:mod:`jaxsep.nn` paddings.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from jaxsep import _validation as v
from jaxsep._choices import MODEL_PADDINGS

__all__ = [
    "ACTIVATIONS",
    "CONV_INIT",
    "LINEAR_INIT",
    "MODEL_PADDINGS",
    "activation_fn",
    "conv_padding",
]

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
