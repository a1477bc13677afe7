"""The "split" and "taps" lowerings of the grouped convolution (``jaxsep.ops.grouped_conv``).

XLA:CPU runs ``conv_general_dilated(feature_group_count=G)`` far slower than its dense
convolutions and matrix products; both lowerings avoid it and are plain jax ops, so ``jit``,
``vmap`` and derivatives of any order work. "split" suits wide groups, "taps" narrow ones
(``docs/design/lowerings.md``). Every function takes an ``x`` already padded per
``padding_mode``; ``geometry.padding`` is the zero padding left.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxsep._geometry import Geometry, compute_dtype
from jaxsep._lowering import taps, xla
from jaxsep._lowering.pointwise import pointwise


def dense(x: jax.Array, kernel: jax.Array, geometry: Geometry, precision: Any) -> jax.Array:
    """One dense convolution: a matrix product for a 1x1 window with no padding left (a 1x1
    ``conv_general_dilated`` is slower on XLA:CPU), else :func:`jaxsep._lowering.xla.conv`."""
    if all(k == 1 for k in kernel.shape[:-2]) and not any(lo or hi for lo, hi in geometry.padding):
        if any(s > 1 for s in geometry.strides):  # a 1x1 window reads every s-th pixel
            step = [1] * x.ndim
            for axis, s in zip(geometry.spatial_axes, geometry.strides):
                step[axis] = s
            x = lax.slice(x, (0,) * x.ndim, x.shape, step)
        return pointwise(x, kernel, geometry.channels_last, precision)
    return xla.conv(x, kernel, geometry, 1, precision)


def grouped_split(
    x: jax.Array, kernel: jax.Array, geometry: Geometry, groups: int, precision: Any
) -> jax.Array:
    """``impl="split"``: ``G`` dense convolutions (``C // G -> O // G``), one per channel slice
    of ``x`` and of the kernel's last dim, concatenated on the channel axis.

    ``jnp.split`` (not ``G`` slices): its transpose is one concatenate, so the input and
    kernel gradients are assembled in one pass instead of a sum of ``G`` zero-padded copies.
    """
    if groups == 1:
        return dense(x, kernel, geometry, precision)
    axis = geometry.channel_axis(x.ndim)
    outs = [
        dense(x_g, k_g, geometry, precision)
        for x_g, k_g in zip(jnp.split(x, groups, axis=axis), jnp.split(kernel, groups, axis=-1))
    ]
    return jnp.concatenate(outs, axis=axis)


def grouped_taps(
    x: jax.Array, kernel: jax.Array, geometry: Geometry, groups: int, precision: Any
) -> jax.Array:
    """``impl="taps"``: the sum over the ``C // G`` input channels of a group of depthwise taps
    calls.

    Channel axis ``C`` viewed as ``(G, C // G)`` and split on the ``C // G`` axis; each piece
    ``(..., G, ...)`` meets one input row of the kernel, ``(*K, 1, O)``, in one depthwise taps
    call (a named jit, so :func:`jaxsep.cost.count_macs` counts ``prod(K)`` multiply-adds per
    output element of each: the grouped convolution's own total).
    """
    axis = geometry.channel_axis(x.ndim)
    width = x.shape[axis] // groups
    if width == 1:  # G = C: the depthwise convolution itself
        return taps.apply(x, kernel, geometry, precision)
    # Low-precision terms are summed in float32 and rounded once, as a conv accumulates.
    dtype = compute_dtype(x.dtype)
    split = x.reshape(x.shape[:axis] + (groups, width) + x.shape[axis + 1 :])
    piece_shape = x.shape[:axis] + (groups,) + x.shape[axis + 1 :]
    out = None
    for x_j, k_j in zip(jnp.split(split, width, axis=axis + 1), jnp.split(kernel, width, axis=-2)):
        term = taps.apply(x_j.reshape(piece_shape).astype(dtype), k_j, geometry, precision)
        out = term if out is None else out + term
    return out.astype(x.dtype)
