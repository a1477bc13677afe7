"""The "patches" lowering of the dense convolution: the window's shifted slices of ``x`` laid
side by side on the channel axis (im2col), then one matrix product with the flattened kernel.

XLA:CPU runs a convolution with few input channels slowly: the 3x3 RGB stems of the CIFAR
models (3 -> 16, 24 or 32) took 1.9-5x as long forward+backward (forward: from a tie to 5.4x)
as this matrix product over their ``prod(K) * C = 27`` patch channels. The patches cost
``prod(K)`` times the input's memory, so ``impl="auto"`` measures this lowering only up to
:data:`jaxsep._lowering.PATCHES_MAX_DEPTH` patch channels. Measurements:
``docs/design/lowerings.md`` ("patches").
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxsep._geometry import Geometry
from jaxsep._lowering.pointwise import pointwise

__all__ = ["conv", "patches"]


def patches(x: jax.Array, window: tuple[int, ...], geometry: Geometry) -> jax.Array:
    """The im2col of ``x``: ``(N, *S', prod(K) * C)`` (channels-first ``(N, prod(K) * C, *S')``),
    channel ``k * C + c`` holding input channel ``c`` at window offset ``k`` (row-major over
    ``K``), which matches a ``(*K, C, O)`` kernel reshaped to ``(prod(K) * C, O)``.

    ``x`` is already padded per ``padding_mode``; ``geometry.padding`` is zero-padded here.
    """
    spatial = geometry.spatial_axes
    out_spatial = geometry.out_spatial(x.shape, window)
    config = [(0, 0, 0)] * x.ndim
    for axis, (lo, hi) in zip(spatial, geometry.padding):
        config[axis] = (lo, hi, 0)
    x = lax.pad(x, jnp.zeros((), x.dtype), config)
    pieces = []
    for offsets in itertools.product(*(range(k) for k in window)):
        start, limit, strides = [0] * x.ndim, list(x.shape), [1] * x.ndim
        for axis, k, d, s, n in zip(
            spatial, offsets, geometry.dilation, geometry.strides, out_spatial
        ):
            start[axis] = k * d
            limit[axis] = k * d + (n - 1) * s + 1
            strides[axis] = s
        pieces.append(lax.slice(x, start, limit, strides))
    return lax.concatenate(pieces, geometry.channel_axis(x.ndim))


def conv(x: jax.Array, kernel: jax.Array, geometry: Geometry, precision: Any) -> jax.Array:
    """The dense (``groups == 1``) convolution of an ``x`` already padded per ``padding_mode``
    as ``patches(x) @ kernel.reshape(prod(K) * C, O)``, in ``x.dtype`` (float32 accumulation
    for low-precision dtypes, as :func:`jaxsep._lowering.pointwise.pointwise`)."""
    window = kernel.shape[:-2]
    columns = patches(x, window, geometry)
    return pointwise(columns, kernel.reshape(-1, kernel.shape[-1]), geometry.channels_last,
                     precision)
