"""The "xla" lowering: ``lax.conv_general_dilated``, for every windowed op."""

from __future__ import annotations

from typing import Any

import jax
from jax import lax

from jaxsep._geometry import Geometry, accumulation_dtype


def conv(
    x: jax.Array, kernel: jax.Array, geometry: Geometry, groups: int, precision: Any
) -> jax.Array:
    """``lax.conv_general_dilated`` with ``feature_group_count=groups`` on an ``x`` already
    padded per ``padding_mode`` (``geometry.padding`` is the zero padding left); the kernel is
    cast to ``x.dtype``, low-precision sums accumulate in float32, the result is ``x.dtype``."""
    out = lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        window_strides=geometry.strides,
        padding=geometry.padding,
        rhs_dilation=geometry.dilation,
        dimension_numbers=geometry.dimension_numbers,
        feature_group_count=groups,
        precision=precision,
        preferred_element_type=accumulation_dtype(x.dtype),
    )
    return out.astype(x.dtype)
