"""The 1x1 convolution as one matrix product over the channel axis (no conv primitive)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxsep._geometry import accumulation_dtype
from jaxsep._lowering.channel_matmul import channel_matmul


def pointwise(x: jax.Array, kernel: jax.Array, channels_last: bool, precision: Any) -> jax.Array:
    """``x (N, *S, C)`` (or ``(N, C, *S)``) times a ``(C, O)`` or ``(1, ..., 1, C, O)`` kernel,
    in ``x.dtype``; low-precision sums accumulate in float32."""
    kernel = kernel.reshape(kernel.shape[-2:]).astype(x.dtype)
    accumulate = accumulation_dtype(x.dtype)
    if channels_last:
        # channel_matmul is this dot_general with a kernel gradient (x.T @ g) that XLA:CPU
        # runs much faster than autodiff's (see jaxsep._lowering.channel_matmul).
        out = channel_matmul(x, kernel, precision=precision, preferred_element_type=accumulate)
        return out.astype(x.dtype)
    out = lax.dot_general(
        x, kernel, (((1,), (0,)), ((), ())), precision=precision,
        preferred_element_type=accumulate,
    )
    return jnp.moveaxis(out, -1, 1).astype(x.dtype)
