"""The package's choice tuples, each defined once here and imported by every user.

JAX-free on purpose: the command line builds its ``--help`` (and ``TrainConfig`` checks its
fields) from these without starting JAX.
"""

from __future__ import annotations

# Lowerings of depthwise_conv / separable_conv (and the modules and models that use them).
IMPLS = ("auto", "xla", "taps")
# Lowerings of conv (dense or grouped): lax's convolution, or im2col patches times the kernel.
CONV_IMPLS = ("auto", "xla", "patches")
# Lowerings of grouped_conv: IMPLS plus "split" (G dense convolutions on channel slices).
GROUPED_IMPLS = ("auto", "xla", "split", "taps")
# Stems and default input sizes of every model: 32x32 CIFAR or 224x224 ImageNet.
VARIANTS = ("cifar", "imagenet")
# Default number of classes of each variant's dataset (CIFAR-10, ImageNet-1k).
VARIANT_NUM_CLASSES = {"cifar": 10, "imagenet": 1000}
# MobileNetV1's 3x3 layers: depthwise + pointwise, dense, grouped, or the SVD factorization of
# a trained dense model (built separable, loaded from a factorized checkpoint).
CONV_KINDS = ("separable", "standard", "grouped", "factorized")
# Padding of the models' convolutions: TF/Keras "SAME" (stride 2 on an even input pads (0, 1))
# or PyTorch's symmetric k // 2 on both sides (timm's and torchvision's models).
MODEL_PADDINGS = ("same", "symmetric")
