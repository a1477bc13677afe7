"""Layouts and window geometry shared by the ops, their lowerings and the modules.

The bottom floor: one table of data formats (and the ``lax`` dimension numbers derived from
it), where the channel and spatial axes are, the output-size rule, the dtype that sums are
accumulated in, how non-zero padding modes are applied, and :class:`Geometry`, the resolved
static facts of one windowed op. Shape letters are those of :mod:`jaxsep.ops`.

Importing this module does not import JAX (:mod:`jaxsep._validation`, which the command line
uses before JAX starts, reads the tables).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

# data_format -> (spatial rank, channels_last)
DATA_FORMATS: dict[str, tuple[int, bool]] = {
    "NWC": (1, True),
    "NCW": (1, False),
    "NHWC": (2, True),
    "NCHW": (2, False),
    "NDHWC": (3, True),
    "NCDHW": (3, False),
}
CHANNELS_LAST_FORMAT = {rank: f for f, (rank, last) in DATA_FORMATS.items() if last}
# (spatial rank, channels_last) -> data_format
FORMAT_OF = {layout: f for f, layout in DATA_FORMATS.items()}
# (spatial rank, channels_last) -> lax dimension numbers (x, kernel, out); kernels are always
# (*K, I, O), e.g. "HWIO".
DIMENSION_NUMBERS: dict[tuple[int, bool], tuple[str, str, str]] = {
    layout: (f, f.replace("N", "").replace("C", "") + "IO", f) for f, layout in DATA_FORMATS.items()
}
# padding_mode -> the mode of jnp.pad / np.pad ("zeros" stays inside the convolution)
NUMPY_PAD_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def channel_axis(ndim: int, channels_last: bool) -> int:
    return ndim - 1 if channels_last else 1


def spatial_axes(rank: int, channels_last: bool) -> tuple[int, ...]:
    return tuple(range(1, rank + 1)) if channels_last else tuple(range(2, rank + 2))


def effective_window(window: int, dilation: int) -> int:
    """The span of a dilated window: ``d * (k - 1) + 1``."""
    return dilation * (window - 1) + 1


def out_size(size: int, window: int, stride: int, dilation: int, low: int, high: int) -> int:
    """Output size along one spatial dim: ``(size + lo + hi - d * (k - 1) - 1) // s + 1``."""
    return (size + low + high - effective_window(window, dilation)) // stride + 1


def accumulation_dtype(dtype: Any) -> np.dtype | None:
    """float16/bfloat16 sum in float32; float32/float64 in their own type (None here, the
    ``preferred_element_type`` that means "the input's")."""
    return np.dtype(np.float32) if np.dtype(dtype).itemsize < 4 else None


def compute_dtype(dtype: Any) -> Any:
    """The dtype that products of ``dtype`` inputs are summed in: float32 for float16 and
    bfloat16, else ``dtype`` itself."""
    return accumulation_dtype(dtype) or dtype


@dataclasses.dataclass(frozen=True)
class Geometry:
    """The resolved, validated static facts of one windowed op (hashable: it keys jit caches).

    Attributes:
      channels_last: ``x`` is ``(N, *S, C)`` (else ``(N, C, *S)``).
      strides, dilation: one int per spatial dim.
      padding: one ``(low, high)`` pair of zero padding per spatial dim.
    """

    channels_last: bool
    strides: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]

    @property
    def rank(self) -> int:
        return len(self.strides)

    @property
    def data_format(self) -> str:
        return FORMAT_OF[(self.rank, self.channels_last)]

    @property
    def dimension_numbers(self) -> tuple[str, str, str]:
        return DIMENSION_NUMBERS[(self.rank, self.channels_last)]

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        return spatial_axes(self.rank, self.channels_last)

    def channel_axis(self, ndim: int) -> int:
        return channel_axis(ndim, self.channels_last)

    def out_spatial(self, x_shape: Sequence[int], window: Sequence[int]) -> tuple[int, ...]:
        """The output's spatial sizes for an input of shape ``x_shape`` and window ``K``."""
        return tuple(
            out_size(x_shape[axis], k, s, d, lo, hi)
            for axis, k, s, d, (lo, hi) in zip(
                self.spatial_axes, window, self.strides, self.dilation, self.padding
            )
        )

    def with_padding(self, padding: Sequence[tuple[int, int]]) -> Geometry:
        return dataclasses.replace(self, padding=tuple(tuple(p) for p in padding))


def pad_input(x: Any, geometry: Geometry, padding_mode: str) -> tuple[Any, Geometry]:
    """Applies a non-zero ``padding_mode`` to ``x`` itself; returns ``x`` and the geometry of
    the zero padding left to the convolution (all of it for "zeros", none otherwise)."""
    if padding_mode == "zeros" or not any(lo or hi for lo, hi in geometry.padding):
        return x, geometry
    import jax.numpy as jnp  # here, not at the top: see the module docstring

    widths = [(0, 0)] * x.ndim
    for axis, pair in zip(geometry.spatial_axes, geometry.padding):
        widths[axis] = pair
    x = jnp.pad(x, widths, mode=NUMPY_PAD_MODE[padding_mode])
    return x, geometry.with_padding(((0, 0),) * geometry.rank)
